"""Teachers: whatever produces soft targets (as logits) for a batch.

A teacher is one of:

* any `keras.Model` that outputs logits (normal KD, Re-KD, De-KD,
  Tf-KD_self). The `Distiller` freezes it, runs it in inference mode
  (BatchNorm statistics untouched, dropout off) and stops its gradient.
* a `Teacher` layer defined here: `VirtualTeacher` (Tf-KD_reg),
  `UniformTeacher` (label smoothing as a virtual teacher) or `CachedTeacher`
  (logits computed once ahead of time and fed with the batches).

Every teacher returns *logits* ``z_t``; a soft-target loss turns them into a
distribution with ``softmax(z_t / T)``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_tfkd import _backend, distribution

# The packed-batch format lives below both the data pipelines and the
# teachers (so `keras_tfkd.data` need not import this module); its names are
# part of this module's API.
from keras_tfkd._batches import (  # noqa: F401
    EXAMPLE_INDEX_KEY,
    INPUTS_KEY,
    PACKED_KEYS,
    PAIR_INPUTS_KEY,
    TEACHER_LOGITS_KEY,
    is_packed,
)
from keras_tfkd.data.dataset import Dataset
from keras_tfkd.losses import integer_labels

__all__ = [
    "Teacher",
    "VirtualTeacher",
    "UniformTeacher",
    "CachedTeacher",
    "EnsembleTeacher",
    "TruncatedVocabulary",
    "ENSEMBLE_COMBINES",
    "TEACHER_LOGITS_KEY",
    "EXAMPLE_INDEX_KEY",
    "attach_example_index",
    "teacher_logits",
    "teacher_num_classes",
    "check_logits_teacher",
    "check_logits_values",
]


def _check_num_classes(num_classes):
    if (
        not isinstance(num_classes, (int, np.integer))
        or isinstance(num_classes, bool)
        or num_classes < 2
    ):
        raise ValueError(
            f"`num_classes` must be an integer >= 2, got num_classes={num_classes!r}."
        )
    return int(num_classes)


class Teacher(keras.layers.Layer):
    """Base class of teachers that are not plain models.

    Subclasses implement ``call(inputs, labels)`` returning float32 targets of
    shape ``(N, num_classes)``: logits (``targets = "logits"``, softened by
    the soft loss) or a distribution (``targets = "probabilities"``, taken as
    it is by ``SoftTargetCrossEntropy(targets="probabilities")``).
    `requires_inputs` is False for teachers that look only at the labels (no
    forward pass at all).

    Teachers that learn from the student during training (PS-KD, Online
    Label Smoothing, CS-KD) use the hooks the `Distiller` calls, all no-ops
    here:

    * ``update(inputs, labels, student_logits)``: after the loss of every
      training step, with the gradient-stopped logits of that forward pass;
      state lives in non-trainable variables, so it is updated inside the
      compiled step, saved with the model and restored by `BackupAndRestore`;
    * ``on_epoch_begin(epoch, epochs)`` and ``on_epoch_end(epoch)`` (set
      `has_epoch_hooks` to True to have `Distiller.fit` call them);
    * ``bind_student(student)``: at construction, for a teacher that runs the
      student itself (CS-KD);
    * `requires_example_index`: `Distiller.fit` then packs NumPy inputs as
      ``{"inputs": x, "example_index": arange(N)}`` (see
      `attach_example_index`), through ``prepare_fit_data(x, y,
      fit_kwargs)``, which a teacher may override to build its own batches.
    """

    requires_inputs = True
    requires_example_index = False
    has_epoch_hooks = False
    targets = "logits"
    #: The leading axes of the student's logits, set by the `Distiller`: 1
    #: for ``(N, K)``, 2 for a language model's ``(N, L, V)`` (the teacher
    #: then returns one row per token). None: labels read as a classifier's.
    token_axes = None
    #: True for the online teachers (`keras_tfkd.online`), whose targets are
    #: made from the student as it trains.
    learns_from_student = False

    def __init__(self, num_classes, **kwargs):
        # Teachers compute in float32 whatever the global policy: under a mixed
        # policy, autocasting would round cached logits to float16/bfloat16.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = _check_num_classes(num_classes)
        self.built = True

    def student_inputs(self, inputs):
        """The part of a batch's inputs the student sees (all of a plain batch)."""
        if is_packed(inputs):
            return inputs[INPUTS_KEY]
        return inputs

    def prepare_fit_data(self, x, y, fit_kwargs):
        """``(x, y, fit_kwargs)`` as `Distiller.fit` should pass them on.

        The default packs example indices for a teacher with
        `requires_example_index` (`attach_example_index`); a teacher that
        needs structured batches (CS-KD's class pairs) builds them here from
        arrays. `fit_kwargs` is a dict of `fit`'s other keyword arguments
        (``batch_size``, ``shuffle``, ...) and may be changed.
        """
        return attach_example_index(self, x), y, fit_kwargs

    def bind_student(self, student):
        """Called by the `Distiller` with its student (no-op)."""

    def check_logits_shape(self, shape):
        """Raise if this teacher cannot serve logits of `shape` (``(None, K)``,
        ``(None, L, V)``); called by the `Distiller` at construction."""

    def update(self, inputs, labels, student_logits):
        """Called after every training step's loss (no-op)."""

    def on_epoch_begin(self, epoch, epochs):
        """Called at the begin of each epoch of `Distiller.fit` (no-op)."""

    def on_epoch_end(self, epoch):
        """Called at the end of each epoch of `Distiller.fit` (no-op)."""

    def get_config(self):
        config = super().get_config()
        config["num_classes"] = self.num_classes
        return config


def attach_example_index(teacher, x):
    """Pack array inputs as ``{"inputs": x, "example_index": arange(N)}`` if needed.

    Only for a teacher with `requires_example_index` and inputs that are
    arrays (or a dict/list of arrays) not packed already; anything else is
    returned unchanged. For a `tf.data.Dataset`, a `keras.utils.PyDataset` or
    a generator, attach the indices yourself (``{"inputs": x,
    "example_index": i}`` with ``i`` each example's row in the training set,
    before shuffling), or use ``keras_tfkd.data.pipeline(...,
    example_index=True)``.

    Example:

    >>> from keras_tfkd.online import PastPredictions
    >>> packed = attach_example_index(PastPredictions(5, 3), np.zeros((5, 2)))
    >>> packed["example_index"].tolist()
    [0, 1, 2, 3, 4]
    """
    if not getattr(teacher, "requires_example_index", False) or is_packed(x):
        return x
    n = array_rows(x)
    if n is None:
        return x
    return {INPUTS_KEY: x, EXAMPLE_INDEX_KEY: np.arange(n, dtype="int32")}


def array_rows(x):
    """The number of examples of array inputs, packed or not; None for others.

    Arrays, or a dict/list of them (its first leaf is counted), possibly
    packed as ``{"inputs": x, ...}``; a dataset or generator gives None.
    """
    if is_packed(x):
        x = x[INPUTS_KEY]
    if not _is_array_input(x):
        return None
    while isinstance(x, (dict, list, tuple)):
        x = next(iter(x.values())) if isinstance(x, dict) else x[0]
    return int(x.shape[0])


@keras.saving.register_keras_serializable(package="keras_tfkd")
class VirtualTeacher(Teacher):
    """The hand-designed teacher of Tf-KD_reg, built from the labels alone.

    For label ``y``::

        p_d[k] = a                  if k == y
        p_d[k] = (1 - a) / (K - 1)  otherwise        (a = correct_prob)

    As in the reference code, the teacher's *logits* are ``p_d`` itself, so a
    loss that softens them with ``softmax(p_d / T)`` reproduces the reference
    target (``logits="probabilities"``, the default). With
    ``logits="log_probabilities"`` the logits are ``log p_d``, so that
    ``softmax(logits) == p_d`` exactly at ``T = 1``.

    Built as a closed form of the one-hot labels: no model, no per-sample
    loop, nothing but an ``(N, K)`` tensor per step.

    Args:
        num_classes: K, the number of classes (>= 2).
        correct_prob: ``a``, the probability on the true class, in (1/K, 1].
            The code uses 0.99; the paper asks for ``a >= 0.9``.
        logits: ``"probabilities"`` (reference) or ``"log_probabilities"``.

    Example:

    >>> teacher = VirtualTeacher(num_classes=4, correct_prob=0.97)
    >>> teacher(None, labels=np.array([2])).numpy().round(2).tolist()  # doctest: +SKIP
    [[0.01, 0.01, 0.97, 0.01]]
    """

    requires_inputs = False

    def __init__(
        self, num_classes, correct_prob=0.99, logits="probabilities", **kwargs
    ):
        super().__init__(num_classes, **kwargs)
        if (
            not isinstance(correct_prob, (int, float))
            or not math.isfinite(correct_prob)
            or not (1.0 / self.num_classes) < correct_prob <= 1.0
        ):
            raise ValueError(
                f"`correct_prob` must be in (1/num_classes, 1] = "
                f"({1.0 / self.num_classes:.4g}, 1], got correct_prob={correct_prob!r}."
            )
        if logits not in ("probabilities", "log_probabilities"):
            raise ValueError(
                "`logits` must be 'probabilities' or 'log_probabilities', "
                f"got logits={logits!r}."
            )
        self.correct_prob = float(correct_prob)
        self.logits_form = logits

    def distribution(self):
        """``(on, off)``: the probabilities on the true and on every other class."""
        return self.correct_prob, (1.0 - self.correct_prob) / (self.num_classes - 1)

    def call(self, inputs, labels=None):
        if labels is None:
            raise ValueError("VirtualTeacher needs the labels of the batch.")
        on, off = self.distribution()
        if self.logits_form == "log_probabilities":
            on, off = math.log(on), math.log(off) if off > 0 else -1e4
        labels = integer_labels(labels, self.num_classes, self.token_axes)
        one_hot = ops.one_hot(labels, self.num_classes, dtype="float32")
        return one_hot * (on - off) + off

    def get_config(self):
        config = super().get_config()
        config.update(correct_prob=self.correct_prob, logits=self.logits_form)
        return config


@keras.saving.register_keras_serializable(package="keras_tfkd")
class UniformTeacher(Teacher):
    """Label smoothing as a virtual teacher: the uniform distribution ``1/K``.

    Its logits are all zero, so ``softmax(z_t / T)`` is uniform at any ``T``.
    Mixed as ``(1 - a) * CE + a * KL(u || softmax(z_s))`` it has the same
    gradient as cross-entropy on labels smoothed to ``(1 - a) * one_hot + a / K``
    (the two differ by the constant entropy of ``u``).

    Example:

    >>> teacher = UniformTeacher(num_classes=10)
    """

    requires_inputs = False

    def call(self, inputs, labels=None):
        if labels is None:
            raise ValueError("UniformTeacher needs the labels of the batch.")
        labels = integer_labels(labels, self.num_classes, self.token_axes)
        return ops.zeros((*ops.shape(labels), self.num_classes), dtype="float32")


@keras.saving.register_keras_serializable(package="keras_tfkd")
class CachedTeacher(Teacher):
    """Teacher logits computed once, ahead of training, and fed with the batches.

    For data that is *not* randomly augmented the teacher's output for a
    sample never changes, so running it at every step wastes a forward pass.
    `precompute` runs the teacher once over the data; `attach` packs the
    inputs with their logits as ``{"inputs": x, "teacher_logits": z_t}``, which
    `Distiller.fit` takes like any input. The student sees ``x`` only, and
    `predict`/`evaluate` also accept plain ``x`` (the soft term is then 0).

    Example:

    >>> cached = CachedTeacher.from_model(teacher_model, x_train)  # doctest: +SKIP
    >>> distiller = Distiller(student=student, teacher=cached,
    ...                       soft_loss=SoftTargetKL(4.0))  # doctest: +SKIP
    >>> distiller.fit(cached.attach(x_train), y_train)  # doctest: +SKIP
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(num_classes, **kwargs)
        self._logits = None

    @classmethod
    def from_model(
        cls, model, x, batch_size=256, verbose=0, *, split="train", augment=None
    ):
        """Run `model` once (inference mode) over the training inputs; keep its logits.

        `x` is what the student will be trained on, in training order:

        * arrays (or a dict of arrays): then train on ``attach(x)``;
        * a `keras_tfkd.data.Dataset`: its `split`, read in order through
          ``keras_tfkd.data.pipeline(x, split, batch_size, augment=augment,
          shuffle=False)``; then train on ``keras_tfkd.data.pipeline(x, split,
          ..., augment=augment, teacher_logits=cached)``.

        Cached logits describe fixed inputs. With a random augmentation the
        student would see another image than the teacher did, so a data set
        whose `augment` is random (`keras_tfkd.data.augmentation_is_random`;
        ``augment=None`` means the reference augmentation on the train split)
        raises a ValueError, and a `tf.data.Dataset`, generator or
        `keras.utils.PyDataset`, whose order and augmentation cannot be
        checked, raises a TypeError.
        """
        check_logits_teacher(model)
        if _is_tfkd_dataset(x):
            from keras_tfkd import data

            if data.augmentation_is_random(x, split, augment):
                raise ValueError(
                    f"Cannot cache teacher logits for the {split!r} split of "
                    f"{x.name!r} with augment={augment!r}: its augmentation is "
                    "random, so every epoch shows the student other images than "
                    "the ones the teacher saw once. Pass augment=False, or "
                    "distil from the live teacher model instead."
                )
            with distribution.whole_batches():  # each process predicts all
                x = data.pipeline(x, split, batch_size, augment=augment, shuffle=False)
        elif not _is_array_input(x):
            raise TypeError(
                "CachedTeacher.from_model needs the training inputs as arrays "
                f"(or a keras_tfkd.data.Dataset), got x of type {type(x).__name__}"
                ": the order and augmentation of a dataset or generator cannot be "
                "checked, and logits cached from a shuffled or randomly augmented "
                "stream would not describe the batches the student sees."
            )
        logits = distribution.predict(model, x, batch_size=batch_size, verbose=verbose)
        teacher = cls(num_classes=logits.shape[-1])
        teacher._logits = logits.astype("float32")
        return teacher

    @property
    def logits(self):
        """The precomputed logits (a NumPy array), or None."""
        return self._logits

    def attach(self, x, logits=None):
        """Pack inputs with their teacher logits for `fit`."""
        logits = self._logits if logits is None else np.asarray(logits, "float32")
        if logits is None:
            raise ValueError("No logits: build with `CachedTeacher.from_model` first.")
        n = len(x) if not isinstance(x, dict) else len(next(iter(x.values())))
        if len(logits) != n:
            raise ValueError(
                f"`logits` has {len(logits)} rows but `x` has {n} samples: cached "
                "logits must be computed on exactly the training inputs."
            )
        return {INPUTS_KEY: x, TEACHER_LOGITS_KEY: logits}

    def call(self, inputs, labels=None):
        if isinstance(inputs, dict) and TEACHER_LOGITS_KEY in inputs:
            return ops.cast(inputs[TEACHER_LOGITS_KEY], "float32")
        return None


#: How `EnsembleTeacher` combines its models.
ENSEMBLE_COMBINES = ("logits", "probabilities")


@keras.saving.register_keras_serializable(package="keras_tfkd")
class EnsembleTeacher(Teacher):
    """Several frozen teachers as one: the mean of their logits or probabilities.

    * ``combine="logits"``: ``z = mean_m z_m``;
    * ``combine="probabilities"``: ``z = log(mean_m softmax(z_m))``, the
      logits of the mean distribution, so ``softmax(z) = mean_m softmax(z_m)``
      exactly. A soft loss with temperature ``T`` then softens that mixture
      (``softmax(z / T)``), which is not the mean of the softened members
      unless ``T = 1``.

    Each member runs once per step, frozen and in inference mode. For one
    term per teacher with its own weight, give `keras_tfkd.Term` objects to
    the Distiller instead.

    Args:
        teachers: a list of `keras.Model` teachers that output logits, all
            with the same number of classes.
        combine: ``"logits"`` (default) or ``"probabilities"``.

    Example:

    ```python
    teacher = EnsembleTeacher([teacher_a, teacher_b], combine="probabilities")
    distiller = Distiller(student=student, teacher=teacher)
    ```
    """

    def __init__(self, teachers, combine="logits", num_classes=None, **kwargs):
        models = list(teachers) if isinstance(teachers, (list, tuple)) else []
        if not models:
            raise ValueError(
                "EnsembleTeacher needs a non-empty list of teacher models, got "
                f"teachers={teachers!r}."
            )
        models = [
            keras.saving.deserialize_keras_object(m) if isinstance(m, dict) else m
            for m in models
        ]
        for index, model in enumerate(models):
            if not isinstance(model, keras.Model):
                raise TypeError(
                    f"EnsembleTeacher: teachers[{index}] must be a keras.Model that "
                    f"outputs logits, got {model!r}."
                )
            check_logits_teacher(model, argument=f"teachers[{index}]")
            model.trainable = False
        counts = {teacher_num_classes(model) for model in models} - {None}
        if len(counts) > 1:
            raise ValueError(
                "EnsembleTeacher: the teachers predict different numbers of classes "
                f"({sorted(counts)}); they must agree."
            )
        if combine not in ENSEMBLE_COMBINES:
            raise ValueError(
                f"`combine` must be one of {list(ENSEMBLE_COMBINES)}, got "
                f"combine={combine!r}."
            )
        if num_classes is None:
            if not counts:
                raise ValueError(
                    "EnsembleTeacher cannot read the number of classes from unbuilt "
                    "teachers: give num_classes=."
                )
            num_classes = counts.pop()
        super().__init__(num_classes=num_classes, **kwargs)
        self.teachers = models
        self.combine = combine

    def call(self, inputs, labels=None):
        if is_packed(inputs):
            inputs = inputs[INPUTS_KEY]
        logits = [
            ops.cast(_backend.frozen_forward(model, inputs), "float32")
            for model in self.teachers
        ]
        stacked = ops.stack(logits, axis=0)
        if self.combine == "logits":
            return ops.mean(stacked, axis=0)
        log_probs = ops.log_softmax(stacked, axis=-1)
        return ops.logsumexp(log_probs, axis=0) - math.log(len(self.teachers))

    def get_config(self):
        config = super().get_config()
        config["teachers"] = [
            keras.saving.serialize_keras_object(model) for model in self.teachers
        ]
        config["combine"] = self.combine
        return config


@keras.saving.register_keras_serializable(package="keras_tfkd")
class TruncatedVocabulary(Teacher):
    """A frozen model teacher whose logits are cut to the first `vocabulary_size`.

    ``z_t[..., :V]``: for a language-model teacher whose output layer is
    padded beyond its tokenizer's vocabulary (Qwen2.5 outputs 152,064 logits
    for 151,936 tokens), distilling into a student of the same tokenizer with
    ``V = vocabulary_size`` logits. The softmax is then taken over the first
    ``V`` logits only (the padding rows, never the answer, are dropped). It is
    right only when the first ``V`` token ids mean the same tokens for both
    models; a teacher with another tokenizer cannot be cut into the student's.

    The model runs frozen, in inference mode, once per step.

    Example:

    ```python
    teacher = teachers.TruncatedVocabulary(big_lm, vocabulary_size=151_936)
    distiller = recipes.kd(student_lm, teacher, alpha=0.5, temperature=1.0)
    ```
    """

    def __init__(self, teacher, vocabulary_size, **kwargs):
        if isinstance(teacher, dict):
            teacher = keras.saving.deserialize_keras_object(teacher)
        if not isinstance(teacher, keras.Model):
            raise TypeError(
                "TruncatedVocabulary wraps a keras.Model that outputs logits, got "
                f"teacher={teacher!r}."
            )
        check_logits_teacher(teacher)
        full = teacher_num_classes(teacher)
        super().__init__(num_classes=vocabulary_size, **kwargs)
        if full is not None and full < self.num_classes:
            raise ValueError(
                f"TruncatedVocabulary: the teacher has {full:,} logits, fewer than "
                f"vocabulary_size={self.num_classes:,}; it can only be cut down."
            )
        teacher.trainable = False
        self.teacher = teacher

    def call(self, inputs, labels=None):
        if is_packed(inputs):
            inputs = inputs[INPUTS_KEY]
        logits = _backend.frozen_forward(self.teacher, inputs)
        return ops.cast(logits[..., : self.num_classes], "float32")

    def get_config(self):
        config = super().get_config()
        config["teacher"] = keras.saving.serialize_keras_object(self.teacher)
        config["vocabulary_size"] = config.pop("num_classes")
        return config


def _is_tfkd_dataset(x):
    """A `keras_tfkd.data.Dataset`."""
    return isinstance(x, Dataset)


def _is_array_input(x):
    if isinstance(x, dict):
        return bool(x) and all(_is_array_input(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return bool(x) and all(_is_array_input(v) for v in x)
    return isinstance(x, np.ndarray) or (
        hasattr(x, "shape") and hasattr(x, "dtype") and not hasattr(x, "element_spec")
    )


def teacher_num_classes(teacher):
    """The number of classes a teacher (model or `Teacher`) predicts."""
    if isinstance(teacher, Teacher):
        return teacher.num_classes
    shape = teacher.output_shape if hasattr(teacher, "output_shape") else None
    return None if shape is None else shape[-1]


def teacher_logits(teacher, inputs, labels, training=False, capture=None):
    """Float32, gradient-stopped teacher outputs for a batch (None if unavailable).

    `training` reaches a `Teacher` that runs the student (CS-KD runs the
    partners' forward pass in the student's training mode); a frozen model
    teacher always runs in inference mode, its outputs a tensor or, for a
    model with several outputs, their structure. `capture` (an active
    `keras_tfkd.features.FeatureCapture`) records layers of a model teacher
    on the way.
    """
    if isinstance(teacher, Teacher):
        logits = teacher(inputs, labels=labels, training=training)
    else:
        if is_packed(inputs):
            inputs = inputs[INPUTS_KEY]
        logits = _backend.frozen_forward(teacher, inputs, capture)
    if logits is None:
        return None
    return keras.tree.map_structure(
        lambda t: ops.stop_gradient(ops.cast(t, "float32")), logits
    )


def _is_softmax(activation):
    name = getattr(activation, "__name__", "") or ""
    return name in ("softmax", "log_softmax")


def check_logits_teacher(model, argument="teacher"):
    """Raise if a model's last layer visibly ends in a softmax (probabilities)."""
    layers = getattr(model, "layers", None)
    if not layers:
        return
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax) or _is_softmax(
        getattr(last, "activation", None)
    ):
        raise ValueError(
            f"{argument}={model.name!r} ends in a softmax (layer {last.name!r}): it "
            f"outputs probabilities, but the {argument} must output logits. Remove "
            "the softmax from its last layer (e.g. `activation=None`)."
        )


def check_logits_values(logits, argument="teacher"):
    """Raise if a batch of outputs looks like probabilities rather than logits."""
    values = np.asarray(ops.convert_to_numpy(logits), dtype="float64")
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] < 2:
        return
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"The {argument} produced NaN or Inf logits on the first batch: check "
            "its weights and the inputs."
        )
    rows_sum_to_one = np.allclose(values.sum(axis=1), 1.0, atol=1e-4)
    if rows_sum_to_one and values.min() >= 0.0 and values.max() <= 1.0:
        raise ValueError(
            f"The {argument}'s outputs are non-negative and every row sums to 1: "
            "they look like probabilities (a softmax output), but logits are "
            "expected. Remove the final softmax, or wrap the model to return "
            "`log(probabilities)`."
        )
