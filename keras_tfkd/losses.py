"""Soft-target losses of the Tf-KD paper, as standalone `keras.losses.Loss` objects.

Every loss here takes *logits* and computes in float32 (whatever the mixed
precision policy), through `log_softmax`, so it stays finite for logits of
magnitude 1e4 and temperatures up to 100.

Two forms of the KL term exist (see docs/paper.md), chosen with one setting,
``kl``, everywhere in keras-tfkd (losses, recipes, experiments, the command):

* ``kl="batchmean"`` (the default): sum over classes, mean over the batch,
  as `keras.losses.KLDivergence` and `keras.distillation`; a `multiplier`
  means the same at any number of classes K.
* ``kl="reference"``: the reference code's ``nn.KLDivLoss()``, which averages
  over all N*K elements (``KLm = batch-mean KL / K``); its published
  multipliers were tuned with it at K = 100.

The factor in front of either is `multiplier`.

The token-level divergences used to distil language models (`ReverseKL`,
`GeneralizedJSD`, `SkewKL`, `TotalVariation`, from `keras_tfkd.divergences`)
are importable from here as well; they take logits of any rank with the
classes on the last axis, ``(N, K)`` or ``(N, L, V)``.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_tfkd._chunked import (
    check_chunk_size,
    chunked_rows,
    resolve_chunk_size,
)
from keras_tfkd._soft_targets import (
    _check_temperature,
    _float32,
    _kl_value,
    _temperature_variable,
    kl_divergence_with_logits,
)
from keras_tfkd.divergences import GeneralizedJSD, ReverseKL, SkewKL, TotalVariation
from keras_tfkd.features import FeatureDistillation

__all__ = [
    "LabelAwareLoss",
    "SoftTargetKL",
    "SoftTargetCrossEntropy",
    "LabelSmoothingCrossEntropy",
    "kl_divergence_with_logits",
    "label_smoothing_targets",
    "KL_FORMS",
    "TARGET_KINDS",
    "targets_with_labels",
    "DecoupledKD",
    "FeatureDistillation",
    "ReverseKL",
    "GeneralizedJSD",
    "SkewKL",
    "TotalVariation",
]

#: What a teacher hands the soft losses: logits (softened by the loss with
#: ``softmax(z / T)``) or a distribution itself (the stored predictions of
#: PS-KD, the soft-label matrix of Online Label Smoothing).
TARGET_KINDS = ("logits", "probabilities")

#: The keys of ``y_true`` for a `LabelAwareLoss`.
TARGETS_KEY = "targets"
LABELS_KEY = "labels"

#: The values of the ``kl`` setting: the batch-mean KL and the reference code's
#: element-wise mean (``batch-mean / K``).
KL_FORMS = ("batchmean", "reference")


def check_kl(kl):
    """`kl` if it is one of `KL_FORMS`, else a ValueError naming the value."""
    if kl not in KL_FORMS:
        raise ValueError(
            f"`kl` must be one of {', '.join(map(repr, KL_FORMS))}, got kl={kl!r}."
        )
    return kl


def check_nonnegative(name, value):
    """`value` as a float if it is a finite number >= 0, else an error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {name}={value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a finite number >= 0, got {name}={value!r}."
        )
    return float(value)


def check_multiplier(multiplier):
    """`multiplier` as a float if it is a finite number >= 0, else an error."""
    return check_nonnegative("multiplier", multiplier)


def label_smoothing_targets(labels, num_classes, epsilon):
    """Smoothed targets ``q``: ``1 - eps`` on the label, ``eps / (K - 1)`` elsewhere.

    `labels` are integer class ids (``(N,)``, or ``(N, L)`` tokens). This is
    the paper's LSR (and the reference code's), not Keras's ``eps / K``
    smoothing.
    """
    one_hot = ops.one_hot(ops.cast(labels, "int32"), num_classes, dtype="float32")
    off = epsilon / (num_classes - 1)
    return one_hot * (1.0 - epsilon - off) + off


def targets_with_labels(targets, labels):
    """The ``y_true`` a `LabelAwareLoss` receives: ``{"targets": ..., "labels": ...}``.

    `targets` are what the teacher produced for the batch (logits, or
    probabilities for a teacher whose ``outputs == "probabilities"``) and
    `labels` the batch's labels (integer ``(N,)``/``(N, 1)`` or one-hot).
    """
    return {TARGETS_KEY: targets, LABELS_KEY: labels}


class LabelAwareLoss(keras.losses.Loss):
    """Base class of soft losses that also need the labels (DKD, ...).

    A soft loss of a `Distiller` is called as ``loss(y_true, z_s,
    sample_weight)``. For a plain loss ``y_true`` is the teacher's output; for
    a subclass of this class the `Distiller` passes
    ``targets_with_labels(teacher_output, labels)`` instead, and `call` hands
    the two to `compute`. Subclasses implement::

        compute(targets, labels, y_pred) -> per-sample loss, shape (N,)

    where `labels` are integer class ids ``(N,)`` (one-hot and ``(N, 1)``
    labels are converted). Everything else (reduction, `sample_weight`,
    serialisation) is `keras.losses.Loss`'s. Called by hand::

        loss(targets_with_labels(z_t, y), z_s)
    """

    uses_labels = True

    def call(self, y_true, y_pred):
        if not isinstance(y_true, dict) or set(y_true) != {TARGETS_KEY, LABELS_KEY}:
            raise TypeError(
                f"{type(self).__name__} needs the labels: call it as "
                "loss(keras_tfkd.losses.targets_with_labels(teacher_logits, labels), "
                "student_logits), not loss(teacher_logits, student_logits)."
            )
        y_pred = _float32(y_pred)
        labels = integer_labels(
            y_true[LABELS_KEY], y_pred.shape[-1], len(y_pred.shape) - 1
        )
        return self.compute(_float32(y_true[TARGETS_KEY]), labels, y_pred)

    def compute(self, targets, labels, y_pred):  # pragma: no cover - abstract
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="keras_tfkd")
class SoftTargetKL(keras.losses.Loss):
    """KL divergence between a teacher's soft targets and the student's logits.

    For teacher logits ``z_t`` (passed as ``y_true``) and student logits
    ``z_s`` (``y_pred``), per sample::

        loss = m * T_s**2 * KL(p_t || p_s)        kl="batchmean" (default)
        loss = m * T_s**2 * KL(p_t || p_s) / K    kl="reference"
        KL(p_t || p_s) = sum_k p_t[k] * (log p_t[k] - log p_s[k])
        p_t = softmax(z_t / T_t)    T_t = teacher_temperature
        p_s = softmax(z_s / T_s)    T_s = temperature,  m = multiplier

    reduced like every Keras loss: weighted sum over the batch divided by the
    batch size (``"sum_over_batch_size"``). With the default
    ``kl="batchmean"`` that is the batch-mean KL of `keras.losses.KLDivergence`;
    ``kl="reference"`` divides it by the number of classes K, as the reference
    code's ``nn.KLDivLoss()`` does (a mean over all N*K elements). The
    ``T_s**2`` factor (Hinton et al.; drop it with ``temperature_squared=False``)
    keeps the gradient magnitude independent of the temperature, and follows
    the temperature when a schedule changes it.

    Written with it:

    * normal KD / Tf-KD_self: ``SoftTargetKL(temperature=T)``.
    * the same term exactly as the reference code computes it:
      ``SoftTargetKL(temperature=T, multiplier=m, kl="reference")``.
    * Tf-KD_reg as the reference code computes it (teacher softened, student
      not, no ``T^2``): ``SoftTargetKL(temperature=1, teacher_temperature=T,
      multiplier=m, kl="reference", temperature_squared=False)``, with a
      `VirtualTeacher` producing ``z_t``.
    * the paper's Eq. 9 (both sides softened): ``SoftTargetKL(temperature=T)``
      with a `VirtualTeacher`.

    Both temperatures are held in non-trainable variables, so a schedule
    (`keras_tfkd.callbacks.TemperatureScheduler`) can change them during
    `fit` without retracing.

    Args:
        temperature: student temperature ``T_s`` (> 0).
        teacher_temperature: teacher temperature ``T_t``; defaults to
            `temperature` (one shared variable).
        multiplier: constant factor ``m`` in front of the KL (>= 0), default 1.
        kl: ``"batchmean"`` (default) or ``"reference"`` (divided by K).
        temperature_squared: also multiply by ``T_s ** 2`` (default True).
        reduction, name: as for any `keras.losses.Loss`.
        chunk_size: rows per chunk (over all leading axes, ``(N, K)`` and
            ``(N, L, V)`` alike) of a chunked value and gradient, ``None``
            for the unchunked form, ``"auto"`` (default) to chunk only at
            ``V >= 8192`` classes, ``2**21 // V`` rows per chunk. See
            "Chunked soft losses" below.

    Chunked soft losses: with a chunk size the value and its gradient with
    respect to the student's logits are computed ``chunk_size`` rows at a
    time in the forward pass (`keras_tfkd._chunked`), so the loss needs the
    gradient (the size of the student's logits) plus one chunk's
    intermediates, instead of several tensors of the logits' size. Value and
    gradient equal the unchunked ones to float32 rounding, `sample_weight`
    (token masks) included. The teacher's logits get no gradient on that
    path (teachers are frozen; every `Distiller` teacher hands over
    gradient-stopped logits): differentiate with respect to them only with
    ``chunk_size=None``. Below 8192 classes ``"auto"`` is exactly the
    unchunked form.

    Example:

    >>> import numpy as np
    >>> loss = SoftTargetKL(temperature=4.0)
    >>> z_t = np.array([[2.0, 0.0, -1.0]], "float32")
    >>> float(loss(z_t, z_t))  # identical distributions
    0.0
    >>> z_s = np.zeros((1, 3), "float32")
    >>> batchmean = float(SoftTargetKL(multiplier=2.0)(z_t, z_s))
    >>> reference = float(SoftTargetKL(multiplier=2.0, kl="reference")(z_t, z_s))
    >>> round(batchmean / reference, 4)  # K = 3
    3.0
    """

    #: What `y_true` holds (see `TARGET_KINDS`); a teacher must hand over the same.
    targets = "logits"

    def __init__(
        self,
        temperature=1.0,
        teacher_temperature=None,
        multiplier=1.0,
        kl="batchmean",
        temperature_squared=True,
        reduction="sum_over_batch_size",
        name="soft_target_kl",
        dtype=None,
        chunk_size="auto",
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.chunk_size = check_chunk_size(chunk_size)
        tied = teacher_temperature is None
        self._tied = tied
        self.temperature = _temperature_variable(f"{name}_temperature", temperature)
        self.teacher_temperature = (
            self.temperature
            if tied
            else _temperature_variable(
                f"{name}_teacher_temperature", teacher_temperature
            )
        )
        self.multiplier = check_multiplier(multiplier)
        self.kl = check_kl(kl)
        self.temperature_squared = bool(temperature_squared)

    @property
    def variables(self):
        """The temperature variables (one when both sides share a temperature)."""
        if self._tied:
            return [self.temperature]
        return [self.temperature, self.teacher_temperature]

    def factor(self, num_classes=None):
        """The weight in front of the per-sample KL summed over classes.

        ``m * T_s**2`` (``T_s**2`` only with `temperature_squared`), divided by
        `num_classes` K when ``kl="reference"``.
        """
        weight = self.multiplier
        if self.kl == "reference":
            if num_classes is None:
                raise ValueError('kl="reference" needs `num_classes`.')
            weight = weight / num_classes
        if self.temperature_squared:
            return weight * ops.square(_float32(self.temperature))
        return weight

    def call(self, y_true, y_pred):
        kl = _rows_of(
            kl_divergence_with_logits,
            self.chunk_size,
            y_true,
            y_pred,
            constants=(
                _float32(self.teacher_temperature),
                _float32(self.temperature),
            ),
        )
        return self.factor(y_pred.shape[-1]) * kl

    def get_config(self):
        return {
            "temperature": float(self.temperature.numpy()),
            "teacher_temperature": None
            if self._tied
            else float(self.teacher_temperature.numpy()),
            "multiplier": self.multiplier,
            "kl": self.kl,
            "temperature_squared": self.temperature_squared,
            "reduction": self.reduction,
            "name": self.name,
            "chunk_size": self.chunk_size,
        }


@keras.saving.register_keras_serializable(package="keras_tfkd")
class SoftTargetCrossEntropy(SoftTargetKL):
    """Cross-entropy ``-sum_k p_t[k] log p_s[k]`` against the teacher's soft targets.

    Equal to `SoftTargetKL` plus the (constant) entropy of the teacher, so the
    two have the same gradient with respect to the student. Same arguments as
    `SoftTargetKL`, plus `targets`:

    * ``targets="logits"`` (default): ``y_true`` holds teacher logits and
      ``p_t = softmax(z_t / T_t)``;
    * ``targets="probabilities"``: ``y_true`` *is* ``p_t`` (rows of a
      distribution, or all zero for "no target yet", which gives a loss of 0),
      as the stored predictions of PS-KD and the soft-label matrix of Online
      Label Smoothing hand it over; there is no teacher temperature.

    Example:

    >>> import numpy as np
    >>> loss = SoftTargetCrossEntropy()
    >>> z = np.zeros((1, 4), "float32")
    >>> round(float(loss(z, z)), 4)  # log(4)
    1.3863
    >>> p = np.array([[1.0, 0.0, 0.0, 0.0]], "float32")
    >>> round(float(SoftTargetCrossEntropy(targets="probabilities")(p, z)), 4)
    1.3863
    """

    def __init__(
        self, *args, targets="logits", name="soft_target_cross_entropy", **kwargs
    ):
        if targets not in TARGET_KINDS:
            raise ValueError(
                f"`targets` must be one of {', '.join(map(repr, TARGET_KINDS))}, "
                f"got targets={targets!r}."
            )
        if targets == "probabilities" and kwargs.get("teacher_temperature") is not None:
            raise ValueError(
                'targets="probabilities" takes the distribution as it is: '
                "leave `teacher_temperature` unset (got teacher_temperature="
                f"{kwargs['teacher_temperature']!r})."
            )
        super().__init__(*args, name=name, **kwargs)
        self.targets = targets

    def call(self, y_true, y_pred):
        probabilities = self.targets == "probabilities"

        def cross_entropy(y_true, y_pred, teacher_temperature, temperature):
            if probabilities:
                p_t = _float32(y_true)
            else:
                p_t = ops.softmax(_float32(y_true) / teacher_temperature, axis=-1)
            log_p_s = ops.log_softmax(_float32(y_pred) / temperature, axis=-1)
            return -ops.sum(p_t * log_p_s, axis=-1)

        temperatures = (
            _float32(self.teacher_temperature),
            _float32(self.temperature),
        )
        rows = _rows_of(
            cross_entropy, self.chunk_size, y_true, y_pred, constants=temperatures
        )
        return self.factor(y_pred.shape[-1]) * rows

    def get_config(self):
        config = super().get_config()
        config["targets"] = self.targets
        return config


@keras.saving.register_keras_serializable(package="keras_tfkd")
class LabelSmoothingCrossEntropy(keras.losses.Loss):
    """Cross-entropy on labels smoothed as in the paper's LSR.

    ``loss = -sum_k q[k] * log softmax(z_s)[k]`` with ``q = 1 - epsilon`` on the
    true class and ``epsilon / (K - 1)`` on each of the other ``K - 1`` classes
    (Keras's `CategoricalCrossentropy(label_smoothing=...)` uses ``epsilon / K``
    instead, and its sparse version has no smoothing at all).

    `y_true` holds integer labels, shape ``(N,)`` or ``(N, 1)``, or one-hot rows
    ``(N, K)``; `y_pred` holds logits ``(N, K)``.

    Args:
        epsilon: smoothing mass in [0, 1), 0.1 in the paper.

    Example:

    >>> import numpy as np
    >>> loss = LabelSmoothingCrossEntropy(epsilon=0.1)
    >>> logits = np.zeros((2, 10), "float32")
    >>> round(float(loss(np.array([3, 7]), logits)), 4)  # log(10)
    2.3026
    """

    def __init__(
        self,
        epsilon=0.1,
        reduction="sum_over_batch_size",
        name="lsr_cross_entropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if (
            not isinstance(epsilon, (int, float))
            or not math.isfinite(epsilon)
            or not 0 <= epsilon < 1
        ):
            raise ValueError(f"`epsilon` must be in [0, 1), got epsilon={epsilon!r}.")
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        y_pred = _float32(y_pred)
        num_classes = y_pred.shape[-1]
        if num_classes < 2:
            raise ValueError(f"Label smoothing needs >= 2 classes, got {num_classes}.")
        labels = integer_labels(y_true, num_classes, len(y_pred.shape) - 1)
        q = label_smoothing_targets(labels, num_classes, self.epsilon)
        return -ops.sum(q * ops.log_softmax(y_pred, axis=-1), axis=-1)

    def get_config(self):
        return {"epsilon": self.epsilon, "reduction": self.reduction, "name": self.name}


def _rows_of(fn, chunk_size, y_true, y_pred, row_args=(), constants=()):
    """``fn(y_true, y_pred, *row_args, *constants)``, chunked as `chunk_size` says.

    The one switch of the losses between the unchunked form and
    `keras_tfkd._chunked.chunked_rows` (see `SoftTargetKL`'s "Chunked soft
    losses").
    """
    y_pred = ops.convert_to_tensor(y_pred)
    chunk = resolve_chunk_size(chunk_size, y_pred.shape)
    if chunk is None:
        return fn(y_true, y_pred, *row_args, *constants)
    return chunked_rows(fn, y_true, y_pred, chunk, row_args, constants)


def integer_labels(y_true, num_classes, token_axes=None):
    """Integer labels from integer labels, labels with a trailing 1, or one-hot.

    The one label normaliser of the losses and the virtual teachers.
    `token_axes` is the number of leading axes of the logits: 1 for
    ``(N, K)`` (labels ``(N,)``, ``(N, 1)`` or one-hot ``(N, K)``), 2 for a
    language model's ``(N, L, V)`` (``(N, L)``, ``(N, L, 1)`` or one-hot
    ``(N, L, V)``). None reads labels of rank 1 or 2 as a classifier's and of
    rank 3 or more as one-hot tokens.
    """
    y_true = ops.convert_to_tensor(y_true)
    rank = len(y_true.shape)
    if token_axes is None:
        token_axes = 1 if rank <= 2 else rank - 1
    if rank == token_axes + 1 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    elif rank == token_axes + 1 and y_true.shape[-1] == num_classes > 1:
        return ops.argmax(y_true, axis=-1)
    return ops.cast(y_true, "int32")


@keras.saving.register_keras_serializable(package="keras_tfkd")
class DecoupledKD(LabelAwareLoss):
    """Decoupled Knowledge Distillation (DKD, Zhao et al., CVPR 2022).

    The KL of normal KD split into a *target-class* part (TCKD) and a
    *non-target-class* part (NCKD), weighted separately. For teacher logits
    ``z_t``, student logits ``z_s`` and label ``y``, per sample::

        loss = T**2 * (a * TCKD + b * NCKD)    a = tckd_weight, b = nckd_weight
        TCKD = KL(b_t || b_s)     b = [p[y], 1 - p[y]],  p = softmax(z / T)
        NCKD = KL(q_t || q_s)     q = softmax of z / T over the classes != y

    (``q`` is the distribution of the official code's
    ``softmax(z / T - 1000 * one_hot(y))``; the target class is removed
    exactly here, so it stays right for logits of any size), reduced like
    every Keras loss: weighted sum over the batch divided by the batch size,
    which is the official ``size_average=False`` sums divided by the batch
    size. With K = 2 classes ``q`` is one class of probability 1, so NCKD is
    0 and DKD is ``tckd_weight`` times normal KD.

    The published objective is ``CE + min(epoch / warmup, 1) * DKD`` (warmup
    of 20 epochs on CIFAR-100, 1 on ImageNet): the warmup factor is the
    `Distiller`'s weight of its soft loss (a schedule on it), not part of
    this loss.

    Called with the labels (a `LabelAwareLoss`)::

        loss(targets_with_labels(z_t, y), z_s, sample_weight)

    Everything is computed in float32 from ``log_softmax``: ``log(1 - p[y])``
    is a ``logsumexp`` over the non-target classes (never ``log(1 - p)``),
    and each KL value is taken in the cancellation-free form of
    `kl_divergence_with_logits` (never negative, exactly 0 for identical
    logits); the gradient is that of the formula above, finite for logits of
    magnitude 1e4.

    Args:
        tckd_weight: weight of TCKD (>= 0): DKD's alpha, 1 in the paper
            (named apart from keras-tfkd's `alpha`, the soft term's weight).
        nckd_weight: weight of NCKD (>= 0): DKD's beta. The official
            CIFAR-100 default is 8;
            its configs use 6 for the VGG13 and WRN-40-2 teacher pairs and 2
            for ResNet56/ResNet20 and ResNet110/ResNet32; on ImageNet 0.5
            (ResNet34/ResNet18) or 2 (ResNet50/MobileNetV1).
        temperature: ``T`` of both sides (> 0, a number or a float32
            `keras.Variable`), 4 on CIFAR-100, 1 on ImageNet.
        reduction, name, dtype: as for any `keras.losses.Loss`.
        chunk_size: rows (examples or tokens) per chunk of a chunked value
            and gradient, None for the unchunked form, ``"auto"`` (default)
            to chunk at 8192 classes or more (see `SoftTargetKL`).

    Example:

    >>> import numpy as np
    >>> loss = DecoupledKD(tckd_weight=1.0, nckd_weight=8.0, temperature=4.0)
    >>> z_t = np.array([[3.0, 1.0, 0.0, -2.0]], "float32")
    >>> y = np.array([0])
    >>> float(loss(targets_with_labels(z_t, y), z_t))  # identical logits
    0.0
    >>> z_s = np.zeros((1, 4), "float32")
    >>> round(float(loss(targets_with_labels(z_t, y), z_s)), 3)
    6.678
    >>> # K = 2: no non-target distribution, DKD is tckd_weight * normal KD
    >>> z2_t, z2_s = z_t[:, :2], z_s[:, :2]
    >>> dkd = float(DecoupledKD(tckd_weight=0.5)(targets_with_labels(z2_t, y), z2_s))
    >>> kd = float(SoftTargetKL(temperature=4.0)(z2_t, z2_s))
    >>> round(dkd / kd, 4)
    0.5
    """

    def __init__(
        self,
        tckd_weight=1.0,
        nckd_weight=8.0,
        temperature=4.0,
        reduction="sum_over_batch_size",
        name="decoupled_kd",
        dtype=None,
        chunk_size="auto",
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.chunk_size = check_chunk_size(chunk_size)
        self.tckd_weight = check_nonnegative("tckd_weight", tckd_weight)
        self.nckd_weight = check_nonnegative("nckd_weight", nckd_weight)
        _check_temperature("temperature", temperature)
        self.temperature = (
            temperature
            if isinstance(temperature, keras.Variable)
            else float(temperature)
        )

    def compute(self, targets, labels, y_pred):
        num_classes = y_pred.shape[-1]
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"DKD needs >= 2 classes, got {num_classes}.")
        temperature = _float32(self.temperature)
        return _rows_of(
            self._rows,
            self.chunk_size,
            targets,
            y_pred,
            row_args=(labels,),
            constants=(temperature,),
        )

    def _rows(self, targets, y_pred, labels, temperature):
        """The per-row DKD of `compute` (rows independent: chunkable)."""
        x_t = _float32(targets) / temperature
        x_s = _float32(y_pred) / temperature
        classes = ops.arange(ops.shape(y_pred)[-1], dtype="int32")
        mask = ops.equal(ops.expand_dims(labels, -1), ops.expand_dims(classes, 0))

        def parts(x):
            # Both logs of b = [p[y], 1 - p[y]], and log q with the target class
            # at -inf (log q_safe holds 0 there instead, for the arithmetic).
            lse = ops.logsumexp(x, axis=-1)
            x_other = ops.where(mask, -math.inf, x)
            lse_other = ops.logsumexp(x_other, axis=-1, keepdims=True)
            log_p_y = ops.sum(ops.where(mask, x, 0.0), axis=-1) - lse
            log_not_y = ops.squeeze(lse_other, -1) - lse
            log_b = ops.stack([log_p_y, log_not_y], axis=-1)
            log_q = x_other - lse_other
            log_q_safe = ops.where(mask, 0.0, log_q)
            return log_b, log_q, log_q_safe

        log_b_t, log_q_t, log_q_t_safe = parts(x_t)
        log_b_s, _, log_q_s_safe = parts(x_s)

        # TCKD: a two-class KL between already normalised log-probabilities.
        tckd = kl_divergence_with_logits(log_b_t, log_b_s)

        # NCKD: the target class contributes exactly 0 to value and gradient.
        q_t = ops.where(mask, 0.0, ops.exp(log_q_t_safe))
        nckd = ops.sum(q_t * (log_q_t_safe - log_q_s_safe), axis=-1)
        sg = ops.stop_gradient
        value = sg(
            _kl_value(
                sg(ops.where(mask, 0.0, x_t)),
                sg(ops.where(mask, 0.0, x_s)),
                1.0,
                1.0,
                sg(log_q_t),
                sg(q_t),
            )
        )
        nckd = value + (nckd - sg(nckd))
        return ops.square(temperature) * (
            self.tckd_weight * tckd + self.nckd_weight * nckd
        )

    def get_config(self):
        temperature = self.temperature
        if isinstance(temperature, keras.Variable):
            temperature = float(temperature.numpy())
        return {
            "tckd_weight": self.tckd_weight,
            "nckd_weight": self.nckd_weight,
            "temperature": temperature,
            "reduction": self.reduction,
            "name": self.name,
            "chunk_size": self.chunk_size,
        }
