"""CS-KD's teacher: the student's own predictions on other examples of the same class.

Yun et al., *Regularizing Class-wise Predictions via Self-knowledge
Distillation* (CVPR 2020). Every training example ``x`` (label ``y``) is
paired with a partner ``x'``, another training example of class ``y``, and
the student is trained on::

    loss = CE(y, z(x)) + lambda * T^2 * KL( softmax(z(x') / T) || softmax(z(x) / T) )

batch-mean, with the partner's logits ``z(x')`` gradient-stopped (T = 4 and
lambda = 1 in the paper and the official code). Two pieces:

* `ClassPairBatches`, a ``keras.utils.PyDataset`` that yields
  ``({"inputs": x, "pair_inputs": x'}, y)``: each epoch a permutation of the
  training set cut into batches, every example with a partner drawn anew;
* `ClassPairTeacher`, the `keras_tfkd.teachers.Teacher` that runs the
  student on the partners. `Distiller.fit` builds the batches itself from
  arrays, so ``fit(x, y, batch_size=...)`` is all it takes.
"""

from __future__ import annotations

import inspect
import math
import threading
import weakref

import keras
import numpy as np

from keras_tfkd import distribution
from keras_tfkd.online._checks import check_integer, refuse_sequences
from keras_tfkd.teachers import INPUTS_KEY, PAIR_INPUTS_KEY, Teacher, is_packed
from keras_tfkd.validation import check_sample_weight, is_dataset

__all__ = ["ClassPairBatches", "ClassPairTeacher"]

# Spawn keys of the random streams of a pass (epoch) and of a batch.
_ORDER, _PARTNERS, _AUGMENT_ORIGINALS, _AUGMENT_PARTNERS = 0, 1, 2, 3


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {name}={value!r}.")
    return bool(value)


def _entropy(seed):
    """The entropy of the random streams: `seed`, or one drawn from NumPy's global RNG.

    ``seed=None`` draws from ``np.random`` (which `keras.utils.set_random_seed`
    seeds), so a seeded script still draws the same pairs.
    """
    if seed is None:
        return int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
    return int(seed)


def _class_labels(y, num_classes):
    """``(int32 class of each example, the labels to yield)``, checked."""
    try:
        labels = np.asarray(y)
    except Exception as error:  # pragma: no cover - exotic containers
        raise ValueError(f"`y` must be an array of labels, got y={y!r}.") from error
    if labels.ndim == 2 and labels.shape[1] != 1:  # one-hot rows
        if num_classes is not None and labels.shape[1] != num_classes:
            raise ValueError(
                f"`y` has one-hot rows of width {labels.shape[1]} but "
                f"num_classes={num_classes}: pass integer labels (N,) or one-hot "
                f"rows (N, {num_classes})."
            )
        rows = labels.astype("float64")
        hot = np.isclose(rows, 1.0)
        valid = (hot.sum(axis=1) == 1) & np.all(hot | np.isclose(rows, 0), axis=1)
        if not valid.all():
            bad = int(np.flatnonzero(~valid)[0])
            raise ValueError(
                "`y` must be integer labels or one-hot rows (a class per example "
                f"defines its partners); row {bad} is {labels[bad].tolist()!r}."
            )
        return np.argmax(rows, axis=1).astype("int32"), labels.astype("float32")
    if labels.ndim not in (1, 2):
        raise ValueError(
            f"`y` must have shape (N,), (N, 1) or (N, K), got shape {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`y` holds labels of dtype {labels.dtype}; class labels must be "
            "integers (e.g. `y.astype('int32')`) or one-hot rows."
        )
    classes = labels.reshape(-1)
    if classes.size and classes.min() < 0:
        raise ValueError(f"`y` has label {int(classes.min())}; labels must be >= 0.")
    if num_classes is not None and classes.size and classes.max() >= num_classes:
        raise ValueError(
            f"`y` has label {int(classes.max())}, outside [0, {num_classes}) for "
            f"num_classes={num_classes}."
        )
    return classes.astype("int32"), labels.astype("int32")


def _takes_rng(augment):
    """Whether `augment` accepts a second positional argument (the generator)."""
    try:
        parameters = list(inspect.signature(augment).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return True
    positional = [
        p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 2


class ClassPairBatches(keras.utils.PyDataset):
    """Batches of examples with a partner of the same class each, for CS-KD.

    Every pass (epoch) is a permutation of all N examples (each is an
    original exactly once; ``shuffle=False`` keeps their order) cut into
    batches of `batch_size` (the last one may be smaller). Each example gets
    a partner drawn uniformly among the *other* examples of its class; an
    example alone in its class is its own partner. With ``allow_self=True``
    the draw includes the example itself, as the official code's
    ``random.choice(classwise_indices[y])`` does. Batch ``b`` is::

        ({"inputs": x[i], "pair_inputs": x[partner(i)]}, y[i])       # i: its rows

    followed by ``sample_weight[i]`` if weights were given. The partners
    are redrawn every pass. Everything is a function of ``(seed, pass)``
    (and the batch, for the augmentation): the same seed gives the same
    batches, and pass ``k`` is the same whether a run got there or resumed
    there (`ClassPairTeacher` tells the batches the epoch `fit` starts at).

    Keras reads every batch of a pass once, so the pass of a read is counted
    per batch: the ``k``-th read of batch ``b`` (since construction or the
    last `set_epoch`) belongs to pass ``epoch + k``. (The pass is not
    advanced in `on_epoch_end`: the TensorFlow backend may prefetch the
    first batches of the next epoch before it calls `on_epoch_end`.) Keras
    also peeks at a batch or two before the first epoch (for the shapes on
    TensorFlow, to build the model on JAX and PyTorch); `ClassPairTeacher`
    calls `set_epoch` when `fit` begins its first epoch, which forgets them.
    Used without it, call `set_epoch` in a callback's ``on_train_begin``.
    `batch` gives any batch of any pass directly.

    Args:
        x: the inputs, one array ``(N, ...)``.
        y: integer labels ``(N,)`` (or ``(N, 1)``) or one-hot rows ``(N, K)``.
        batch_size: originals per batch (the step runs the student on
            ``2 * batch_size`` examples, in two passes).
        seed: an integer >= 0 that fixes the order, the partners and the
            augmentation; None draws one from ``np.random`` (seeded by
            `keras.utils.set_random_seed`).
        shuffle: shuffle the originals each pass.
        allow_self: let an example be its own partner (the official draw).
        augment: None, or a function ``images -> images`` of a NumPy batch,
            applied to the originals and, independently, to the partners
            (each image its own augmentation, as in the official code). If it
            takes a second argument it gets a ``numpy.random.Generator`` seeded
            from ``(seed, pass, batch)``, one for each side, which makes the
            augmentation reproducible too.
        sample_weight: optional ``(N,)`` weights of the originals.
        num_classes: optional K, to check the labels against.
        epoch: the pass of the first epoch (`ClassPairTeacher` sets it to the
            epoch `fit` starts at).
        drop_remainder: drop a last, smaller batch (when N >= batch_size).
        workers: threads that read batches ahead (see `keras.utils.PyDataset`).
        shard: ``(index, count)``, this process's share of every batch (the
            contiguous slice ``index * B / count : (index + 1) * B / count``);
            default: `keras_tfkd.distribution.process_shard`, the whole batch
            in one process. Several processes draw the order and partners
            from one seed (a `seed` of None is drawn once and shared), so
            their shares make up the batches of one process; an `augment`
            draws per process.

    Example:

    >>> x = np.arange(12, dtype="float32").reshape(6, 2)
    >>> y = np.array([0, 0, 0, 1, 1, 2])
    >>> pairs = ClassPairBatches(x, y, batch_size=4, seed=0)
    >>> len(pairs)
    2
    >>> inputs, labels = pairs.batch(0, 1)
    >>> labels.shape, inputs["pair_inputs"].shape
    ((2,), (2, 2))
    >>> order, partners = pairs.draw(0)
    >>> bool(np.all(y[partners] == y)), int(partners[5])  # class 2 has one example
    (True, 5)
    """

    #: Read by `keras_tfkd.Distiller.fit`, which then leaves the batch order
    #: alone (``shuffle=False``): the order is already shuffled, seeded.
    shuffles_itself = True

    def __init__(
        self,
        x,
        y,
        batch_size=32,
        *,
        seed=None,
        shuffle=True,
        allow_self=False,
        augment=None,
        sample_weight=None,
        num_classes=None,
        epoch=0,
        drop_remainder=False,
        workers=1,
        shard=None,
    ):
        super().__init__(
            workers=check_integer("workers", workers, 1), use_multiprocessing=False
        )
        #: ``(index, count)``: the slice of every global batch this process
        #: yields (default: `keras_tfkd.distribution.process_shard`).
        self.shard = distribution.process_shard() if shard is None else shard
        self.shard = (int(self.shard[0]), int(self.shard[1]))
        if isinstance(x, (dict, list, tuple)):
            raise ValueError(
                "`x` must be one array (N, ...) of inputs; a dict, list or tuple "
                f"of inputs (got a {type(x).__name__}) is not supported: build the "
                "batches yourself as ({'inputs': x, 'pair_inputs': x_partner}, y)."
            )
        self._x = np.asarray(x)
        if self._x.ndim == 0:
            raise ValueError(f"`x` must be an array (N, ...), got x={x!r}.")
        self.batch_size = check_integer("batch_size", batch_size, 1)
        self.seed = check_integer("seed", seed, 0, allow_none=True)
        self.shuffle = _check_bool("shuffle", shuffle)
        self.allow_self = _check_bool("allow_self", allow_self)
        if num_classes is not None:
            num_classes = check_integer("num_classes", num_classes, 2)
        self.num_classes = num_classes
        if augment is not None and not callable(augment):
            raise ValueError(
                "`augment` must be None or a function images -> images, got "
                f"augment={augment!r}."
            )
        self.augment = augment
        self._augment_takes_rng = augment is not None and _takes_rng(augment)
        self._classes, self._y = _class_labels(y, num_classes)
        n = len(self._x)
        if len(self._classes) != n:
            raise ValueError(
                f"`x` has {n} examples but `y` has {len(self._classes)} labels: "
                "they must have the same length."
            )
        if n == 0:
            raise ValueError("`x` is empty: there is nothing to train on.")
        self._weights = None
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype="float32")
            if weights.shape != (n,):
                raise ValueError(
                    f"`sample_weight` must have shape ({n},), one weight per "
                    f"example, got shape {weights.shape}."
                )
            check_sample_weight(weights)
            self._weights = weights
        self._n = n
        # Several processes draw the same order and partners: one seed.
        seed = self.seed
        if self.shard[1] > 1:
            seed = distribution.agreed_seed(self.seed)
        self._entropy = _entropy(seed)
        # Members of every class, contiguous: class c is
        # _by_class[_starts[c] : _starts[c] + _counts[c]]; _rank[i] is i's place.
        self._by_class = np.argsort(self._classes, kind="stable")
        self._counts = np.bincount(self._classes)
        self._starts = np.cumsum(self._counts) - self._counts
        self._rank = np.empty(n, dtype=np.int64)
        self._rank[self._by_class] = np.arange(n) - np.repeat(
            self._starts, self._counts
        )
        self.drop_remainder = _check_bool("drop_remainder", drop_remainder)
        if self.drop_remainder and n >= self.batch_size:
            self._batches = n // self.batch_size
        else:
            self._batches = math.ceil(n / self.batch_size)
        distribution.check_batch_share(
            self.shard[1], self.batch_size, n, self.drop_remainder
        )
        self._lock = threading.Lock()
        self._draws = {}
        self._start = check_integer("epoch", epoch, 0)
        self._reads = np.zeros(self._batches, dtype=np.int64)

    # ------------------------------------------------------------ properties
    @property
    def labels(self):
        """The int32 class of every example, in the order of `x`."""
        return self._classes

    @property
    def num_examples(self):
        return self._n

    @property
    def num_batches(self):
        return self._batches

    @property
    def epoch(self):
        """The pass of the batches read next (of the first one, within a pass)."""
        return self._start + int(self._reads.min())

    def set_epoch(self, epoch):
        """Make `epoch` the pass of the next read of every batch (reads recount)."""
        with self._lock:
            self._start = check_integer("epoch", epoch, 0)
            self._reads[:] = 0

    # --------------------------------------------------------- PyDataset API
    def __len__(self):
        return self._batches

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < self._batches:
            raise IndexError(
                f"batch {index} out of range: {self._batches} batches per pass"
            )
        with self._lock:
            epoch = self._start + int(self._reads[index])
            self._reads[index] += 1
        return self.batch(epoch, index)

    # --------------------------------------------------------------- batches
    def _rng(self, *key):
        seq = np.random.SeedSequence(self._entropy, spawn_key=key)
        return np.random.default_rng(seq)

    def draw(self, epoch):
        """``(order, partners)`` of pass `epoch`: int64 arrays of N example indices.

        ``order`` is the permutation of the originals (batch ``b`` is
        ``order[b * batch_size : (b + 1) * batch_size]``); ``partners[i]`` is
        the partner of example ``i`` in that pass.
        """
        epoch = check_integer("epoch", epoch, 0)
        with self._lock:
            cached = self._draws.get(epoch)
        if cached is not None:
            return cached
        if self.shuffle:
            order = self._rng(epoch, _ORDER).permutation(self._n)
        else:
            order = np.arange(self._n)
        size = self._counts[self._classes]
        uniform = self._rng(epoch, _PARTNERS).random(self._n)
        if self.allow_self:
            rank = np.floor(uniform * size).astype(np.int64)
        else:
            # A draw among the other size - 1 members: skip the example's own place.
            rank = np.floor(uniform * np.maximum(size - 1, 1)).astype(np.int64)
            rank += (size > 1) & (rank >= self._rank)
        rank = np.minimum(rank, size - 1)  # float rounding at u -> 1
        partners = self._by_class[self._starts[self._classes] + rank]
        cached = (order, partners)
        with self._lock:
            # Keep this pass and the one before (a prefetching reader may
            # still read the last batches of the previous pass).
            self._draws = {e: d for e, d in self._draws.items() if e == epoch - 1}
            self._draws[epoch] = cached
        return cached

    def batch(self, epoch, index):
        """Batch `index` of pass `epoch` (both from 0), whatever was read before."""
        order, partners = self.draw(epoch)
        index = int(index)
        if not 0 <= index < self._batches:
            raise IndexError(
                f"batch {index} out of range: {self._batches} batches per pass"
            )
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        rows = rows[distribution.share_rows(len(rows), self.shard)]
        originals = self._x[rows]
        pairs = self._x[partners[rows]]
        if self.augment is not None:
            originals = self._augmented(originals, epoch, index, _AUGMENT_ORIGINALS)
            pairs = self._augmented(pairs, epoch, index, _AUGMENT_PARTNERS)
        inputs = {INPUTS_KEY: originals, PAIR_INPUTS_KEY: pairs}
        if self._weights is not None:
            return inputs, self._y[rows], self._weights[rows]
        return inputs, self._y[rows]

    def _augmented(self, images, epoch, index, side):
        if self._augment_takes_rng:
            return np.asarray(self.augment(images, self._rng(epoch, index, side)))
        return np.asarray(self.augment(images))

    # ------------------------------------------------------------- builders
    @classmethod
    def from_dataset(
        cls,
        dataset,
        split="train",
        batch_size=128,
        *,
        augment=None,
        seed=None,
        shuffle=True,
        allow_self=False,
        sample_weight=None,
        drop_remainder=False,
        workers=1,
    ):
        """Class pairs of a `keras_tfkd.data.Dataset` split (an in-memory one).

        The images are augmented and normalised as `keras_tfkd.data.pipeline`
        does: `augment` is its argument (None: the data set's reference
        augmentation on the train split, none on the test split; True, False
        or a policy name of `keras_tfkd.data.AUGMENTATIONS`), drawn for
        originals and partners independently and seeded from `seed`; then
        ``(image / 255 - mean) / std`` with the data set's statistics.
        Image-folder sets (Tiny-ImageNet, ImageNet) are not supported.

        Example:

        >>> pairs = ClassPairBatches.from_dataset("digits", "train", 64, seed=0)
        >>> inputs, labels = pairs[0]
        >>> inputs["inputs"].shape, inputs["pair_inputs"].dtype.name
        ((64, 8, 8, 1), 'float32')
        """
        from keras_tfkd.data import augment as augment_lib
        from keras_tfkd.data import batching, loaders
        from keras_tfkd.data.dataset import _split

        if isinstance(dataset, str):
            dataset = loaders.load(dataset)
        split = _split(split)
        if not dataset.in_memory:
            raise ValueError(
                f"ClassPairBatches.from_dataset needs an in-memory data set; "
                f"{dataset.name!r} is a folder of image files. Decode the images "
                "to an array and use ClassPairBatches(x, y, ...)."
            )
        policy = batching._resolve_augmentation(dataset, split, augment)
        mean = np.asarray(dataset.mean, np.float32)
        std = np.asarray(dataset.std, np.float32)

        def transform(images, rng):
            if policy != "none":
                params = augment_lib.sample(policy, rng, len(images), images.shape[1:3])
                images = augment_lib.apply(policy, images, params)
            return (images.astype(np.float32) / 255.0 - mean) / std

        return cls(
            dataset.images(split),
            dataset.labels(split),
            batch_size,
            seed=seed,
            shuffle=shuffle,
            allow_self=allow_self,
            augment=transform,
            sample_weight=sample_weight,
            num_classes=dataset.num_classes,
            drop_remainder=drop_remainder,
            workers=workers,
        )


def _is_array(x):
    return isinstance(x, np.ndarray) or (
        hasattr(x, "shape")
        and hasattr(x, "dtype")
        and hasattr(x, "__len__")
        and not is_dataset(x)
    )


def _needs_pairs_message(what):
    return (
        "ClassPairTeacher (CS-KD) trains on batches of class pairs, "
        '({"inputs": x, "pair_inputs": x_partner}, y), but got ' + what + ". Pass "
        "the training set as arrays, `fit(x, y, batch_size=...)` (the teacher "
        "then draws the pairs), or a keras_tfkd.online.ClassPairBatches: "
        "`ClassPairBatches(x, y, batch_size)` or "
        '`ClassPairBatches.from_dataset(dataset, "train", batch_size)`.'
    )


@keras.saving.register_keras_serializable(package="keras_tfkd")
class ClassPairTeacher(Teacher):
    """CS-KD's teacher: the student's logits on a partner of the same class.

    For a batch ``({"inputs": x, "pair_inputs": x'}, y)`` (a `ClassPairBatches`
    batch) it returns ``z(x') = student(x', training=training)``; the
    `Distiller` stops its gradient and hands it to the soft loss. With
    ``soft_loss=SoftTargetKL(temperature=4.0)``, ``hard_weight=1.0`` and
    ``soft_weight=lambda`` the Distiller minimises CS-KD's loss::

        CE(y, z(x)) + lambda * T^2 * KL( softmax(z(x') / T) || softmax(z(x) / T) )

    batch-mean (KL summed over classes, averaged over the batch, as the
    official ``KLDivLoss(reduction="sum") / B``); T = 4 and lambda = 1 are the
    paper's and the official code's defaults (`keras_tfkd.recipes.cs_kd`).

    The partners run through the student in a second forward pass, in
    training mode during `fit` (as the official code's ``net(x_pairs)``
    under ``no_grad``, with ``net.train()``): BatchNorm normalises them with
    their own batch statistics, and its moving statistics are updated by
    both passes, first by the originals, then by the partners. The partners'
    logits carry no gradient.

    `Distiller.fit` given arrays, ``fit(x, y, batch_size=B)``, replaces them by
    ``ClassPairBatches(x, y, B, seed=seed, allow_self=allow_self)`` (with
    ``shuffle``, ``sample_weight`` and ``validation_split`` taken over from
    `fit`'s arguments) and starts its passes at the epoch `fit` starts at, so
    a resumed run draws the partners of a fresh one. Partners are *other*
    examples of the class (an example alone in its class is its own
    partner); ``allow_self=True`` draws among all of them, the example
    included, as the official sampler does. Batches with pairs can also be
    passed directly (a `ClassPairBatches`, or any dataset of such batches).
    `evaluate` and `predict` need no pairs: without them the soft term is 0.
    Each `fit` starts at pass ``initial_epoch`` (0 by default): with a fixed
    `seed`, a loop of ``fit(..., epochs=1)`` calls redraws the same pairs
    unless it passes ``initial_epoch=e, epochs=e + 1``.

    The teacher keeps the student without tracking it as a sub-layer (the
    Distiller does): its weights are saved once, with the student.

    Args:
        num_classes: K.
        seed: an integer >= 0 for the batches `fit` builds (order, partners);
            None draws one from ``np.random`` at each `fit`.
        allow_self: let an example be its own partner (the official draw).

    Example:

    ```python
    from keras_tfkd import Distiller, losses
    from keras_tfkd.online import ClassPairTeacher
    distiller = Distiller(student=student, teacher=ClassPairTeacher(10),
                          soft_loss=losses.SoftTargetKL(temperature=4.0),
                          hard_weight=1.0, soft_weight=1.0)
    distiller.compile(optimizer="sgd")
    distiller.fit(x, y, epochs=3, batch_size=64)   # pairs built by the teacher
    ```
    """

    learns_from_student = True

    has_epoch_hooks = True
    #: Partners are drawn among the whole training set: arrays that differ
    #: between processes (each its own rows) are refused.
    needs_whole_training_set = True

    def __init__(self, num_classes, seed=None, allow_self=False, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.seed = check_integer("seed", seed, 0, allow_none=True)
        self.allow_self = _check_bool("allow_self", allow_self)
        # Neither is tracked by Keras: a function returning the student, and a
        # weak reference to the batches of the current fit.
        self._student_fn = None
        self._pairs_ref = None
        self._first_epoch_pending = False

    # ------------------------------------------------------------- student
    def check_logits_shape(self, shape):
        """Refused for sequence logits: a sequence has no one class to pair by."""
        refuse_sequences(
            "CS-KD (ClassPairTeacher)",
            shape,
            "it pairs each example with another of its class, but a sequence "
            "has a label per token, not one class.",
        )

    def bind_student(self, student):
        """Keep `student` in a closure, untracked by Keras (the Distiller tracks it)."""
        self._student_fn = lambda: student

    def _student(self):
        if self._student_fn is None:
            raise ValueError(
                "ClassPairTeacher runs the student on the partners: give it to a "
                "Distiller (Distiller(student=..., teacher=ClassPairTeacher(K)))."
            )
        return self._student_fn()

    def call(self, inputs, labels=None, training=None):
        if not (is_packed(inputs) and PAIR_INPUTS_KEY in inputs):
            if training:
                raise ValueError(
                    _needs_pairs_message("a training batch without 'pair_inputs'")
                )
            return None  # evaluate/predict on plain inputs: no soft term
        return self._student()(inputs[PAIR_INPUTS_KEY], training=training)

    # ----------------------------------------------------------- fit data
    def prepare_fit_data(self, x, y, fit_kwargs):
        """Arrays become `ClassPairBatches`; batches with pairs pass unchanged."""
        if isinstance(x, ClassPairBatches):
            self._follow(x, fit_kwargs)
            return x, y, fit_kwargs
        if is_packed(x):
            if PAIR_INPUTS_KEY not in x:
                raise ValueError(
                    _needs_pairs_message(f"a packed dict with keys {sorted(x)}")
                )
            return x, y, fit_kwargs
        if isinstance(x, keras.utils.PyDataset):
            return x, y, fit_kwargs  # pairs or not: checked at the first step
        if is_dataset(x):
            spec = x.element_spec
            inputs = spec[0] if isinstance(spec, tuple) else spec
            if not (isinstance(inputs, dict) and PAIR_INPUTS_KEY in inputs):
                raise ValueError(
                    _needs_pairs_message(f"a tf.data.Dataset of elements {spec}")
                )
            return x, y, fit_kwargs
        if isinstance(x, dict) or not _is_array(x):
            raise ValueError(_needs_pairs_message(f"x of type {type(x).__name__}"))
        if y is None:
            raise ValueError(
                "ClassPairTeacher draws partners of the same class: `fit` needs "
                "the labels, fit(x, y, batch_size=...)."
            )
        x, y, fit_kwargs = _take_validation_split(x, y, fit_kwargs)
        batch_size = fit_kwargs.pop("batch_size", None) or 32
        pairs = ClassPairBatches(
            x,
            y,
            batch_size,
            seed=self.seed,
            shuffle=fit_kwargs.pop("shuffle", True),
            allow_self=self.allow_self,
            sample_weight=fit_kwargs.pop("sample_weight", None),
            num_classes=self.num_classes,
        )
        validation = fit_kwargs.get("validation_data")
        if isinstance(validation, (tuple, list)) and all(map(_is_array, validation)):
            fit_kwargs.setdefault("validation_batch_size", batch_size)
        self._follow(pairs, fit_kwargs)
        return pairs, None, fit_kwargs

    def _follow(self, pairs, fit_kwargs):
        """Have the passes of `pairs` start at the first epoch of this `fit`."""
        self._pairs_ref = weakref.ref(pairs)
        self._first_epoch_pending = True
        initial_epoch = fit_kwargs.get("initial_epoch") or 0
        if isinstance(initial_epoch, (int, np.integer)):
            # So that Keras's first peeks read the right pass (they are
            # forgotten in on_epoch_begin anyway).
            pairs.set_epoch(int(initial_epoch))

    def on_epoch_begin(self, epoch, epochs):
        # The first epoch of a fit (`initial_epoch`, or the one that
        # BackupAndRestore resumes at) is the first pass of its batches; the
        # reads before it were Keras's peeks at the data (shapes, build).
        pairs = None if self._pairs_ref is None else self._pairs_ref()
        if pairs is not None and self._first_epoch_pending:
            pairs.set_epoch(epoch)
        self._first_epoch_pending = False

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed, allow_self=self.allow_self)
        return config


def _take_validation_split(x, y, fit_kwargs):
    """Keras's `validation_split` (the last fraction of the arrays), done here.

    Keras refuses it with a `keras.utils.PyDataset`; as Keras, the split is
    taken before shuffling and `validation_data` wins over it.
    """
    split = fit_kwargs.pop("validation_split", None)
    if not split:
        return x, y, fit_kwargs
    if not (isinstance(split, (int, float)) and 0.0 < split < 1.0):
        raise ValueError(
            f"`validation_split` must be a number in (0, 1), got {split!r}."
        )
    if fit_kwargs.get("validation_data") is not None:
        return x, y, fit_kwargs
    n = len(x)
    cut = int(math.floor(n * (1.0 - split)))
    if cut < 1 or cut >= n:
        raise ValueError(
            f"validation_split={split!r} leaves {cut} of {n} examples for training."
        )
    weights = fit_kwargs.get("sample_weight")
    validation = (x[cut:], y[cut:])
    if weights is not None:
        weights = np.asarray(weights)
        validation = (*validation, weights[cut:])
        fit_kwargs["sample_weight"] = weights[:cut]
    fit_kwargs["validation_data"] = validation
    return x[:cut], y[:cut], fit_kwargs
