"""PS-KD's teacher: every training example's prediction from its previous visit."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_tfkd import _backend, _sharded
from keras_tfkd.losses import integer_labels
from keras_tfkd.online._checks import (
    check_choice,
    check_integer,
    gigabytes,
    refuse_sequences,
)
from keras_tfkd.teachers import EXAMPLE_INDEX_KEY, Teacher, array_rows, is_packed

__all__ = ["PastPredictions", "STORE_DTYPES", "store_bytes"]

#: The dtypes of the prediction store: float32 is exact; float16 and bfloat16
#: halve the memory (rows are renormalised to sum to 1 when read).
STORE_DTYPES = ("float32", "float16", "bfloat16")


def store_bytes(num_examples, num_classes, store_dtype="float32"):
    """The bytes of a `PastPredictions` store: ``N * K * itemsize``.

    Example:

    >>> store_bytes(50_000, 100)  # CIFAR-100: 20 MB
    20000000
    >>> store_bytes(1_281_167, 1000, "bfloat16") / 1e9  # ImageNet
    2.562334
    """
    itemsize = 4 if store_dtype == "float32" else 2
    return int(num_examples) * int(num_classes) * itemsize


def _num_rows(x):
    """The number of training examples of arrays or a keras-tfkd pipeline, or None."""
    labels = getattr(x, "labels", None)  # keras_tfkd.data.pipeline (NumPy engine)
    if labels is not None and hasattr(labels, "shape"):
        return int(labels.shape[0])
    return array_rows(x)


def _check_indexed(x):
    """Refuse a keras-tfkd pipeline or a tf.data.Dataset without example indices.

    Without ``example_index`` the teacher has no rows to read or write: the
    soft term would be 0 at every step, silently. Arrays get their indices
    from `Distiller.fit`; a generator or another PyDataset is not looked at.
    """
    spec = getattr(x, "element_spec", None)
    if spec is not None:
        inputs = spec[0] if isinstance(spec, tuple) else spec
        indexed = isinstance(inputs, dict) and EXAMPLE_INDEX_KEY in inputs
    elif getattr(x, "example_index", None) is False:  # a data.pipeline
        indexed = False
    else:
        return
    if not indexed:
        raise ValueError(
            "PastPredictions (PS-KD) reads and writes each example's row of its "
            f"store, but the training batches of this {type(x).__name__} carry "
            f"no '{EXAMPLE_INDEX_KEY}': build them with keras_tfkd.data.pipeline"
            "(..., example_index=True), or yield ({'inputs': x, "
            "'example_index': i}, y) with i each example's row in the whole "
            "training set."
        )


@keras.saving.register_keras_serializable(package="keras_tfkd")
class PastPredictions(Teacher):
    """PS-KD's targets: the student's own softmax from its last visit of each example.

    Kim et al., *Self-Knowledge Distillation with Progressive Refinement of
    Targets* (ICCV 2021). A store ``P`` of shape ``(N, K)`` holds, for every
    training example ``i``, the softmax the student gave it at its previous
    visit. At training epoch ``e`` of ``E`` the PS-KD loss is::

        a_e = alpha_T * (e + 1) / E
        q   = (1 - a_e) * onehot(y) + a_e * P[i]
        loss = CE(q, softmax(z)) = (1 - a_e) CE(y, z) + a_e CE(P[i], z)

    so a `Distiller` with this teacher, ``soft_loss=SoftTargetCrossEntropy(
    targets="probabilities")`` and ``alpha=LinearRamp(alpha_T)`` is PS-KD
    exactly (`keras_tfkd.recipes.ps_kd` builds it). ``P[i]`` is ``onehot(y)``
    until the example has been seen (the first epoch, as in the official
    code); after every training step the rows of the batch become that
    step's ``softmax(z)`` -- the same forward pass, before the weight update,
    gradient-stopped. Under `MirroredStrategy` the rows of every replica are
    written (each replica's store stays complete); under JAX's
    `DataParallel` the compiled step sees the whole batch anyway, also in a
    job of several processes, whose inputs carry the indices of the whole
    training set (`keras_tfkd.data.pipeline` and `Distiller.fit` on the
    same arrays in every process); per-process arrays, whose positions are
    local, are refused before training.

    The store is a non-trainable variable of the Distiller: it is saved with
    it and restored by `BackupAndRestore` and ``keras-tfkd run`` resume, so
    a resumed run continues from the same predictions. Its size is
    ``N * K * itemsize`` bytes (`store_bytes`): 20 MB for CIFAR-100 in
    float32, 5.1 GB for ImageNet-1k; ``store_dtype="bfloat16"`` or
    ``"float16"`` halves it (rows are renormalised when read; the effect on
    the loss is measured in ``benchmarks/``).

    The batches must carry each example's row number: `Distiller.fit` adds
    it to NumPy inputs itself (``{"inputs": x, "example_index": i}``); see
    `keras_tfkd.teachers.attach_example_index` for other inputs. A batch
    without indices (`evaluate`, `predict`) gets no soft term.

    Args:
        num_examples: N, the size of the training set; None: taken from the
            first `fit` on arrays or a `keras_tfkd.data.pipeline` (give it
            to load weights into a fresh Distiller, or for a `tf.data` input
            or a distribution scope, where the store must exist up front).
        num_classes: K.
        store_dtype: one of `STORE_DTYPES`.
        shard_rows: False (the default): the store is one variable like any
            other, replicated on every device of a distribution. True: on
            the JAX backend under a `keras.distribution` (``DataParallel``,
            ``ModelParallel``) of ``D`` devices along its data axis, the
            store is laid out by rows over them (a `TensorLayout`): each
            device holds ``ceil(N / D)`` rows instead of ``N``, rows read and
            written by index never gather the table, and it is saved and
            loaded whole (gathered on every process when it spans several);
            the results are those of a replicated store. It must then be
            built inside the distribution's scope (give `num_examples`, or
            `fit` inside it). Where one device holds the store (no
            distribution, PyTorch, TensorFlow without a strategy) True
            changes nothing; under a TensorFlow strategy of several replicas
            it is refused (each replica keeps a whole copy there).
            ``"auto"``: split where True would split, replicated everywhere
            else (never refused); ``keras-tfkd run`` uses it. See
            `keras_tfkd._sharded`.

    Example:

    >>> teacher = PastPredictions(num_examples=60_000, num_classes=10)
    >>> teacher.store_bytes
    2400000
    """

    learns_from_student = True

    requires_example_index = True
    targets = "probabilities"

    def __init__(
        self,
        num_examples,
        num_classes,
        store_dtype="float32",
        shard_rows=False,
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.store_dtype = check_choice("store_dtype", store_dtype, STORE_DTYPES)
        if not (isinstance(shard_rows, bool) or shard_rows == "auto"):
            raise ValueError(
                "`shard_rows` must be True, False or 'auto', got "
                f"shard_rows={shard_rows!r}."
            )
        self.shard_rows = shard_rows
        self.num_examples = None
        self.predictions = None
        if num_examples is not None:
            self.build_store(num_examples)

    def build_store(self, num_examples):
        """Create the ``(num_examples, K)`` store once (the same N again: no-op)."""
        num_examples = check_integer("num_examples", num_examples, 1)
        if self.predictions is not None:
            if num_examples != self.num_examples:
                raise ValueError(
                    f"This PastPredictions store holds {self.num_examples} "
                    f"examples, but the training data has {num_examples}: a "
                    "PS-KD Distiller trains on one training set (build a new "
                    "one for another)."
                )
            return
        layout, rows = None, num_examples
        if self.shard_rows:
            layout, rows = _sharded.row_layout(
                num_examples, refuse=self.shard_rows is True
            )
        self.num_examples = num_examples
        if layout is None:
            self.predictions = self.add_weight(
                shape=(num_examples, self.num_classes),
                initializer="zeros",
                dtype=self.store_dtype,
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
                name="predictions",
            )
            return
        # add_weight takes no layout: the variable is made as it would make
        # it (in the layer's name scope; tracked when set as an attribute),
        # with its rows split over the devices, padded to a multiple of them.
        with keras.name_scope(self.name, caller=self):
            self.predictions = keras.Variable(
                initializer="zeros",
                shape=(rows, self.num_classes),
                dtype=self.store_dtype,
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
                name="predictions",
                layout=layout,
            )

    @property
    def stored_rows(self):
        """The rows of the store variable: `num_examples`, padded to a multiple
        of the devices when `shard_rows` splits it (None before it is built)."""
        return None if self.predictions is None else int(self.predictions.shape[0])

    def save_own_variables(self, store):
        """Save the store's `num_examples` rows, fetched whole (gathered on every
        process when it spans several): the file is the same as a replicated
        store's, so either kind of store loads it."""
        if self.predictions is None or not _sharded.is_split(self.predictions):
            super().save_own_variables(store)
            return
        store["0"] = _sharded.fetch_rows(self.predictions)[: self.num_examples]

    def load_own_variables(self, store):
        """Load a saved store into a replicated or a split store (each device
        then receives only its rows)."""
        if self.predictions is None or not _sharded.is_split(self.predictions):
            super().load_own_variables(store)
            return
        if len(store.keys()) != 1:
            raise ValueError(
                f"{type(self).__name__} holds one variable (its store) but the "
                f"saved entry holds {len(store.keys())}."
            )
        saved = store["0"]
        shape = (self.num_examples, self.num_classes)
        if tuple(saved.shape) != shape:
            raise ValueError(
                f"The saved PS-KD store has shape {tuple(saved.shape)}, but this "
                f"PastPredictions store holds {shape}."
            )
        padding = self.stored_rows - self.num_examples
        if padding:  # rows past num_examples: never read or written
            saved = np.concatenate(
                [saved, np.zeros((padding, self.num_classes), dtype=saved.dtype)]
            )
        _sharded.assign_rows_from_host(self.predictions, saved)

    def prepare_fit_data(self, x, y, fit_kwargs):
        _check_indexed(x)
        n = _num_rows(x)
        if n is not None:
            self.build_store(n)
        elif self.predictions is None:
            raise ValueError(
                "PastPredictions does not know the size of the training set: "
                "pass num_examples= (recipes.ps_kd(..., num_examples=N) or "
                "PastPredictions(num_examples=N, ...)) when training from a "
                f"{type(x).__name__}."
            )
        return super().prepare_fit_data(x, y, fit_kwargs)

    @property
    def store_bytes(self):
        """The bytes of the store (``N * K * itemsize``; None before it is built)."""
        if self.num_examples is None:
            return None
        return store_bytes(self.num_examples, self.num_classes, self.store_dtype)

    def _indices(self, inputs):
        if not is_packed(inputs) or EXAMPLE_INDEX_KEY not in inputs:
            return None
        return ops.reshape(ops.cast(inputs[EXAMPLE_INDEX_KEY], "int32"), (-1,))

    def call(self, inputs, labels=None):
        indices = self._indices(inputs)
        if indices is None or self.predictions is None:
            return None
        if labels is None:
            raise ValueError("PastPredictions needs the labels of the batch.")
        stored = ops.cast(ops.take(self.predictions, indices, axis=0), "float32")
        total = ops.sum(stored, axis=-1, keepdims=True)
        if self.store_dtype != "float32":
            stored = stored / ops.where(total > 0, total, 1.0)
        one_hot = ops.one_hot(
            integer_labels(labels, self.num_classes), self.num_classes, dtype="float32"
        )
        return ops.where(total > 0, stored, one_hot)

    def update(self, inputs, labels, student_logits):
        indices = self._indices(inputs)
        if indices is None or self.predictions is None:
            return
        probabilities = ops.softmax(ops.cast(student_logits, "float32"), axis=-1)
        indices, probabilities = _backend.all_replicas(indices, probabilities)
        _backend.assign_rows(self.predictions, indices, probabilities)

    def check_logits_shape(self, shape):
        """Refused for sequence logits: the store would hold ``N x L x V`` values."""
        if shape is None or len(shape) < 3:
            return
        length, vocabulary = shape[1], shape[-1]
        rows = "N" if self.num_examples is None else f"{self.num_examples:,}"
        per_token = store_bytes(1, vocabulary, self.store_dtype)
        need = (
            f"PS-KD stores the last prediction of every token of every example, "
            f"{rows} x {length or 'L'} x {vocabulary:,} values ({per_token:,} "
            "bytes per token"
        )
        if self.num_examples is not None and length is not None:
            total = store_bytes(
                self.num_examples * length, vocabulary, self.store_dtype
            )
            need += f", {gigabytes(total)} in all"
        refuse_sequences("PS-KD (PastPredictions)", shape, need + ").")

    def get_config(self):
        config = super().get_config()
        config.update(num_examples=self.num_examples, store_dtype=self.store_dtype)
        if self.shard_rows:
            config["shard_rows"] = self.shard_rows
        return config
