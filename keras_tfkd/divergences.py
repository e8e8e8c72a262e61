"""Token-level divergences used to distil language models, as Keras losses.

Each loss is called like `keras_tfkd.losses.SoftTargetKL`::

    loss(teacher_logits, student_logits, sample_weight)

on logits of any rank with the classes (the vocabulary) on the last axis:
``(N, K)`` for a classifier, ``(N, L, V)`` for a language model. `call`
returns one value per example or token, shape ``logits.shape[:-1]``, and
Keras's ``reduction`` (default ``"sum_over_batch_size"``) reduces it with the
`sample_weight` (a padding mask ``(N, L)`` for tokens). With
``p_T = softmax(z_T / T)`` and ``p_S = softmax(z_S / T)`` over the last axis:

* `ReverseKL`: ``KL(p_S || p_T)`` (MiniLLM's token-level form).
* `GeneralizedJSD`: ``beta KL(p_T || M) + (1 - beta) KL(p_S || M)`` with
  ``M = beta p_T + (1 - beta) p_S`` (GKD; TRL's ``generalized_jsd_loss``).
* `SkewKL`: ``KL(p_T || a p_T + (1 - a) p_S)``, or reversed
  ``KL(p_S || (1 - a) p_T + a p_S)`` (DistiLLM).
* `TotalVariation`: ``1/2 sum_k |p_T[k] - p_S[k]|`` (DistiLLM's ``tv_distance``).

"Forward" KL is ``KL(p_T || p_S)`` (the teacher's distribution first: normal
KD, `SoftTargetKL`); "reverse" KL is ``KL(p_S || p_T)``.

Everything is computed in float32 from ``log_softmax`` whatever the input
type, and each mixture ``M`` in log space (``logaddexp`` of the two
log-probabilities plus the log weights), so the values stay finite and close
to float64 for float16/bfloat16 logits of magnitude 1e4. The values are sums
of non-negative terms (never negative, exactly 0 for identical logits); the
gradients are those of the textbook formulas.

Every loss takes ``chunk_size`` (None, ``"auto"``, the default, or rows per
chunk): with a chunk size the value and its gradient with respect to the
student's logits are computed that many rows (tokens) at a time, so the
loss's peak extra memory is one chunk's intermediates plus the gradient, not
several tensors of the logits' size; ``"auto"`` chunks only at 8192 classes
or more (see `keras_tfkd.losses.SoftTargetKL`'s "Chunked soft losses"; the
teacher's logits get no gradient on the chunked path).

The temperature is one non-trainable float32 variable shared by both sides,
so `keras_tfkd.callbacks.TemperatureScheduler` can change it during `fit`
(it is also the loss's ``teacher_temperature``). TRL and DistiLLM multiply
by no ``T^2``, and neither do these losses by default; the three KL-based
ones take ``temperature_squared=True`` for Hinton's ``T^2`` factor (their
gradients shrink as ``1/T^2`` at high ``T``, as normal KD's do).
`TotalVariation` has no such option: its gradient shrinks only as ``1/T``.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_tfkd._chunked import check_chunk_size, chunked_rows, resolve_chunk_size
from keras_tfkd._soft_targets import (
    _float32,
    _kl_value,
    _temperature_variable,
    kl_divergence_with_logits,
)

__all__ = ["ReverseKL", "GeneralizedJSD", "SkewKL", "TotalVariation"]

#: Below this |u| the terms ``u - log1p(u)`` of a mixture KL come from their
#: series (to u^6: truncation under 4e-6 relative at the bound); above it the
#: direct difference loses at most a factor ~20 of float32's precision.
_SERIES_BOUND = 0.1

#: Above this log-ratio the series is never used (keeps ``expm1`` finite).
_LOG_RATIO_CAP = 20.0

#: Rows whose scaled logits' difference spans less than this take their
#: log-ratios from the centred difference (see `_log_ratio`).
_CLOSE_SPAN = 1.0


def _check_fraction(name, value, upper_open=False):
    """`value` as a float in [0, 1] ([0, 1) with `upper_open`), else an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {name}={value!r}.")
    upper_ok = value < 1 if upper_open else value <= 1
    if not (math.isfinite(value) and value >= 0 and upper_ok):
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"`{name}` must be in {interval}, got {name}={value!r}.")
    return float(value)


def _log_ratio(z_t, z_s, temperature, log_p_t, log_p_s):
    """``log p_S - log p_T`` per class, accurate where the two agree (no gradient).

    Subtracting two ``log_softmax`` outputs leaves an error of float32's
    precision times the size of the scaled logits, which swamps the
    difference of two close distributions. In a row where the logits'
    difference ``d = (z_S - z_T) / T`` spans less than `_CLOSE_SPAN` (a
    constant shift does not count), the ratio is taken instead as
    ``x - KL(p_T || p_S)``, ``x`` being ``d`` centred (twice) under ``p_T`` and
    the KL in the cancellation-free form of
    `keras_tfkd.losses.kl_divergence_with_logits` (its ``_kl_value``, which
    centres the same way): every part is then as small as the ratio itself.
    Other rows keep the plain difference: there it is the more accurate (a
    large ``d`` carries float32's error of the scaled logits into ``x``).
    """
    p_t = ops.exp(log_p_t)
    d = (z_s - z_t) / temperature
    x = d - ops.sum(p_t * d, axis=-1, keepdims=True)
    x = x - ops.sum(p_t * x, axis=-1, keepdims=True)
    kl = ops.expand_dims(
        _kl_value(z_t, z_s, temperature, temperature, log_p_t, p_t), -1
    )
    span = ops.max(d, axis=-1, keepdims=True) - ops.min(d, axis=-1, keepdims=True)
    return ops.where(span < _CLOSE_SPAN, x - kl, log_p_s - log_p_t)


def _sides(z_t, z_s, temperature):
    """``log p_T``, ``log p_S`` and the accurate `_log_ratio` (a constant)."""
    log_p_t = ops.log_softmax(z_t / temperature, axis=-1)
    log_p_s = ops.log_softmax(z_s / temperature, axis=-1)
    sg = ops.stop_gradient
    ratio = _log_ratio(sg(z_t), sg(z_s), sg(temperature), sg(log_p_t), sg(log_p_s))
    return log_p_t, log_p_s, sg(ratio)


def _mixture_kl_value(p, log_q, d, w, rest):
    """The value of ``KL(P || w P + (1 - w) Q)``, free of cancellation (no gradient).

    With ``d = log q - log p`` and ``u = (1 - w) expm1(d)`` (so
    ``M / P = 1 + u`` and ``sum_k p[k] u[k] = (1 - w) (sum q - sum p) = 0``),
    the KL is ``sum_k p[k] (u[k] - log1p(u[k]))``: a sum of non-negative
    terms, exactly 0 for identical rows, where the textbook form subtracts
    numbers of size ``log K``. Each term is ``p u^2 (1/2 - u/3 + ...)`` for
    small ``|u|`` and ``(1 - w) (q - p) - p log(w + (1 - w) exp(d))``
    otherwise (finite even where ``p`` underflows).
    """
    q = ops.exp(log_q)
    # log(M / P) = log(w + (1 - w) e^d), in log space.
    log_ratio = ops.logaddexp(math.log(w), math.log(rest) + d)
    direct = ops.maximum(rest * (q - p) - p * log_ratio, 0.0)
    u = rest * ops.expm1(ops.minimum(d, _LOG_RATIO_CAP))
    small = ops.logical_and(ops.abs(u) < _SERIES_BOUND, d < _LOG_RATIO_CAP)
    us = ops.where(small, u, 0.0)
    # u - log1p(u) = u^2 (1/2 - u/3 + u^2/4 - u^3/5 + u^4/6 - ...).
    series = ops.square(us) * (
        0.5 + us * (-1.0 / 3.0 + us * (0.25 + us * (-0.2 + us * (1.0 / 6.0))))
    )
    return ops.sum(ops.where(small, p * series, direct), axis=-1)


def _mixture_kl(log_p, log_q, d, w, rest):
    """Per-row ``KL(P || w P + (1 - w) Q)`` over the last axis, for 0 < w < 1.

    `log_p`, `log_q`: float32 log-probabilities; `d`: ``log q - log p`` from
    `_log_ratio` (a constant); `rest`: ``1 - w``, passed as the caller knows
    it exactly (``1 - (1 - beta)`` is not ``beta`` for a tiny ``beta``). The
    mixture is taken in log space,
    ``log M = logaddexp(log p + log w, log q + log(1 - w))``; the value is
    `_mixture_kl_value` and the gradient that of
    ``sum_k p[k] (log p[k] - log M[k])``.
    """
    p = ops.exp(log_p)
    log_m = ops.logaddexp(log_p + math.log(w), log_q + math.log(rest))
    formula = ops.sum(p * (log_p - log_m), axis=-1)
    sg = ops.stop_gradient
    value = sg(_mixture_kl_value(sg(p), sg(log_q), d, w, rest))
    # Forward: exactly `value`; backward: the gradient of `formula`.
    return value + (formula - sg(formula))


class _Divergence(keras.losses.Loss):
    """Shared machinery: logits checks, the temperature variable, the config.

    Subclasses implement ``divergence(z_t, z_s, temperature)`` on float32
    logits and return the per-row value (shape ``z.shape[:-1]``); every row
    is independent, so `call` may compute it `chunk_size` rows at a time.
    """

    #: What `y_true` holds: teacher logits (see `keras_tfkd.losses.TARGET_KINDS`).
    targets = "logits"
    #: Whether ``temperature_squared`` is an option of the loss.
    _has_t2 = True

    def __init__(
        self, temperature, temperature_squared, reduction, name, dtype, chunk_size
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.chunk_size = check_chunk_size(chunk_size)
        self.temperature = _temperature_variable(f"{name}_temperature", temperature)
        self.temperature_squared = bool(temperature_squared)

    @property
    def teacher_temperature(self):
        """The temperature variable (both sides share it), for the schedulers."""
        return self.temperature

    @property
    def variables(self):
        """The temperature variable, tracked by a `Distiller` using the loss."""
        return [self.temperature]

    def call(self, y_true, y_pred):
        z_t, z_s = _float32(y_true), _float32(y_pred)
        t_shape, s_shape = tuple(z_t.shape), tuple(z_s.shape)
        if len(t_shape) != len(s_shape) or any(
            a is not None and b is not None and a != b for a, b in zip(t_shape, s_shape)
        ):
            raise ValueError(
                f"{type(self).__name__} needs teacher and student logits of the "
                f"same shape (classes on the last axis), got teacher logits "
                f"(y_true) of shape {t_shape} and student logits (y_pred) of "
                f"shape {s_shape}."
            )
        temperature = _float32(self.temperature)
        chunk = resolve_chunk_size(self.chunk_size, s_shape)
        if chunk is None:
            value = self.divergence(z_t, z_s, temperature)
        else:
            value = chunked_rows(self._rows, z_t, z_s, chunk, constants=(temperature,))
        if self.temperature_squared:
            value = ops.square(temperature) * value
        return value

    def divergence(self, z_t, z_s, temperature):  # pragma: no cover - abstract
        raise NotImplementedError

    def _rows(self, z_t, z_s, temperature):
        return self.divergence(_float32(z_t), _float32(z_s), temperature)

    def get_config(self):
        config = {"temperature": float(self.temperature.numpy())}
        if self._has_t2:
            config["temperature_squared"] = self.temperature_squared
        config.update(
            reduction=self.reduction, name=self.name, chunk_size=self.chunk_size
        )
        return config


@keras.saving.register_keras_serializable(package="keras_tfkd")
class ReverseKL(_Divergence):
    """Reverse KL ``KL(p_S || p_T)`` per example or token.

    ::

        loss = KL(p_S || p_T) = sum_k p_S[k] (log p_S[k] - log p_T[k])
        p_T = softmax(z_T / T),  p_S = softmax(z_S / T)    (last axis)

    times ``T**2`` with ``temperature_squared=True`` (default off). The
    student's distribution comes first: it is *mode-seeking* (the student is
    pushed onto the teacher's largest modes rather than spread over all of
    them). This is the token-level form of MiniLLM (Gu et al., ICLR 2024;
    MiniLLM itself optimises the sequence-level reverse KL by policy
    gradient) and DistiLLM's ``reverse_kl`` (jongwooko/distillm), which uses
    no temperature. The value is computed as `SoftTargetKL`'s
    (`keras_tfkd.losses.kl_divergence_with_logits` with the sides swapped):
    never negative, accurate when the two distributions nearly agree.

    Args:
        temperature: ``T`` (> 0) of both sides, held in a float32 variable.
        temperature_squared: multiply by ``T**2`` (default False).
        reduction, name, dtype: as for any `keras.losses.Loss`.
        chunk_size: rows per chunk (None: unchunked; ``"auto"``: chunked at
            8192 classes or more), see the module's docstring.

    Example:

    >>> import numpy as np
    >>> z_t = np.array([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]], "float32")  # (1, 2, 3)
    >>> z_s = np.zeros((1, 2, 3), "float32")
    >>> loss = ReverseKL()
    >>> np.round(np.asarray(loss.call(z_t, z_s)), 4)  # one value per token
    array([[0.7379, 0.    ]], dtype=float32)
    >>> mask = np.array([[1.0, 0.0]])  # Keras's reduction: weighted sum / (N * L)
    >>> round(float(loss(z_t, z_s, sample_weight=mask)), 4)
    0.369
    """

    def __init__(
        self,
        temperature=1.0,
        temperature_squared=False,
        reduction="sum_over_batch_size",
        name="reverse_kl",
        dtype=None,
        chunk_size="auto",
    ):
        super().__init__(
            temperature, temperature_squared, reduction, name, dtype, chunk_size
        )

    def divergence(self, z_t, z_s, temperature):
        """``KL(p_S || p_T)`` per row of the last axis."""
        return kl_divergence_with_logits(z_s, z_t, temperature, temperature)


@keras.saving.register_keras_serializable(package="keras_tfkd")
class GeneralizedJSD(_Divergence):
    """Generalized Jensen-Shannon divergence of GKD, per example or token.

    ::

        loss = beta KL(p_T || M) + (1 - beta) KL(p_S || M)    0 < beta < 1
        M = beta p_T + (1 - beta) p_S
        loss = KL(p_T || p_S)    beta = 0   (forward KL)
        loss = KL(p_S || p_T)    beta = 1   (reverse KL)
        p_T = softmax(z_T / T),  p_S = softmax(z_S / T)    (last axis)

    As TRL's ``generalized_jsd_loss`` (``GKDTrainer``; Agarwal et al.,
    *On-Policy Distillation of Language Models*, ICLR 2024, Eq. 1), including
    its two ends: the formula itself goes to 0 as ``beta`` reaches 0 or 1, so
    TRL (and this loss) use the forward KL at ``beta = 0`` and the reverse KL
    at ``beta = 1`` instead; the loss is discontinuous there. TRL divides
    both sides' logits by the temperature and multiplies by no ``T**2``
    (``GKDTrainer`` calls it with ``T = 1``; its ``GKDConfig.temperature``
    is the sampling temperature); ``temperature_squared=True`` adds the
    factor. ``M`` is taken in log space, so the value stays finite where a
    probability underflows.

    Args:
        beta: the interpolation ``beta`` in [0, 1] (TRL's default 0.5).
        temperature: ``T`` (> 0) of both sides, held in a float32 variable.
        temperature_squared: multiply by ``T**2`` (default False).
        reduction, name, dtype: as for any `keras.losses.Loss`.
        chunk_size: rows per chunk (None: unchunked; ``"auto"``: chunked at
            8192 classes or more), see the module's docstring.

    Example:

    >>> import numpy as np
    >>> z_t = np.array([[4.0, 0.0, 0.0]], "float32")
    >>> z_s = np.array([[0.0, 4.0, 0.0]], "float32")
    >>> round(float(GeneralizedJSD(beta=0.5)(z_t, z_s)), 4)
    0.5924
    >>> from keras_tfkd.losses import SoftTargetKL
    >>> forward = float(SoftTargetKL()(z_t, z_s))  # KL(p_T || p_S)
    >>> abs(float(GeneralizedJSD(beta=0.0)(z_t, z_s)) - forward) < 1e-6
    True
    """

    def __init__(
        self,
        beta=0.5,
        temperature=1.0,
        temperature_squared=False,
        reduction="sum_over_batch_size",
        name="generalized_jsd",
        dtype=None,
        chunk_size="auto",
    ):
        super().__init__(
            temperature, temperature_squared, reduction, name, dtype, chunk_size
        )
        self.beta = _check_fraction("beta", beta)

    def divergence(self, z_t, z_s, temperature):
        """The generalized JSD per row of the last axis (KLs at the ends)."""
        beta = self.beta
        if beta == 0.0:
            return kl_divergence_with_logits(z_t, z_s, temperature, temperature)
        if beta == 1.0:
            return kl_divergence_with_logits(z_s, z_t, temperature, temperature)
        log_p_t, log_p_s, ratio = _sides(z_t, z_s, temperature)
        # KL(p_T || M): M = beta p_T + (1 - beta) p_S; KL(p_S || M) likewise.
        teacher_side = _mixture_kl(log_p_t, log_p_s, ratio, beta, 1.0 - beta)
        student_side = _mixture_kl(log_p_s, log_p_t, -ratio, 1.0 - beta, beta)
        return beta * teacher_side + (1.0 - beta) * student_side

    def get_config(self):
        return {"beta": self.beta, **super().get_config()}


@keras.saving.register_keras_serializable(package="keras_tfkd")
class SkewKL(_Divergence):
    """DistiLLM's skew KL (or skew reverse KL), per example or token.

    ::

        loss = KL(p_T || a p_T + (1 - a) p_S)      reverse=False  (SKL)
        loss = KL(p_S || (1 - a) p_T + a p_S)      reverse=True   (SRKL)
        p_T = softmax(z_T / T),  p_S = softmax(z_S / T)    (last axis)

    with ``a = skew``. Ko et al., *DistiLLM: Towards Streamlined Distillation
    for Large Language Models*, ICML 2024; the placement of ``a`` follows the
    official code (jongwooko/distillm, ``distillm/losses.py``:
    ``skewed_forward_kl`` mixes ``lam * teacher + (1 - lam) * student``,
    ``skewed_reverse_kl`` mixes ``(1 - lam) * teacher + lam * student``,
    ``lam = 0.1`` by default). The mixture keeps a share ``a`` of the
    distribution the KL is taken from, so the ratio inside the log never
    exceeds ``1 / a``: both losses are at most ``-log a`` and their
    gradients stay bounded. ``skew = 0`` is the plain forward (or reverse) KL.

    The official ``skewed_forward_kl`` returns the cross-entropy
    ``-sum_k p_T log M``, which is this KL plus the teacher's entropy (a
    constant for the student: same gradient, a value larger by ``H(p_T)``);
    this loss is the KL itself, 0 when the two agree. The official code uses
    no temperature and no ``T**2``; here ``T`` divides both sides' logits and
    ``temperature_squared=True`` adds the factor.

    Args:
        skew: ``a`` in [0, 1) (0.1 in DistiLLM).
        reverse: the skew reverse KL (SRKL) instead of the skew KL.
        temperature: ``T`` (> 0) of both sides, held in a float32 variable.
        temperature_squared: multiply by ``T**2`` (default False).
        reduction, name, dtype: as for any `keras.losses.Loss`.
        chunk_size: rows per chunk (None: unchunked; ``"auto"``: chunked at
            8192 classes or more), see the module's docstring.

    Example:

    >>> import numpy as np
    >>> z_t = np.array([[6.0, 0.0, 0.0]], "float32")
    >>> z_s = np.zeros((1, 3), "float32")
    >>> round(float(SkewKL(skew=0.1)(z_t, z_s)), 4)  # KL(p_T || p_S) = 1.0641
    0.8844
    >>> round(float(SkewKL(skew=0.1, reverse=True)(z_t, z_s)), 4)  # not 2.9063
    1.1505
    """

    def __init__(
        self,
        skew=0.1,
        reverse=False,
        temperature=1.0,
        temperature_squared=False,
        reduction="sum_over_batch_size",
        name="skew_kl",
        dtype=None,
        chunk_size="auto",
    ):
        super().__init__(
            temperature, temperature_squared, reduction, name, dtype, chunk_size
        )
        self.skew = _check_fraction("skew", skew, upper_open=True)
        if not isinstance(reverse, bool):
            raise TypeError(
                f"`reverse` must be True or False, got reverse={reverse!r}."
            )
        self.reverse = reverse

    def divergence(self, z_t, z_s, temperature):
        """The skew (reverse) KL per row of the last axis."""
        if self.skew == 0.0:
            # The distribution the KL is taken from comes first.
            first, second = (z_s, z_t) if self.reverse else (z_t, z_s)
            return kl_divergence_with_logits(first, second, temperature, temperature)
        log_p_t, log_p_s, ratio = _sides(z_t, z_s, temperature)
        # KL(P || a P + (1 - a) Q): a on the distribution the KL is taken from.
        a = self.skew
        if self.reverse:
            return _mixture_kl(log_p_s, log_p_t, -ratio, a, 1.0 - a)
        return _mixture_kl(log_p_t, log_p_s, ratio, a, 1.0 - a)

    def get_config(self):
        return {"skew": self.skew, "reverse": self.reverse, **super().get_config()}


@keras.saving.register_keras_serializable(package="keras_tfkd")
class TotalVariation(_Divergence):
    """Total variation distance ``1/2 sum_k |p_T[k] - p_S[k]|`` per example or token.

    ::

        loss = 1/2 sum_k |p_T[k] - p_S[k]|      in [0, 1]
        p_T = softmax(z_T / T),  p_S = softmax(z_S / T)    (last axis)

    DistiLLM's ``tv_distance`` (jongwooko/distillm, ``distillm/losses.py``;
    also Liger-Kernel's ``LigerTVDLoss``). Symmetric and bounded, 1 for
    distributions with disjoint supports. Each ``|p_T - p_S|`` is taken as
    ``max(p_T, p_S) (1 - exp(-|log p_T - log p_S|))``, exactly 0 for equal
    probabilities, with the log-ratio computed from the difference of the
    logits: accurate when the two nearly agree, also on a class holding
    nearly all the probability (where ``p_T - p_S`` itself rounds to 0).
    No ``T**2`` option: the gradient of this distance shrinks as ``1/T``,
    not ``1/T**2``.

    Args:
        temperature: ``T`` (> 0) of both sides, held in a float32 variable.
        reduction, name, dtype: as for any `keras.losses.Loss`.
        chunk_size: rows per chunk (None: unchunked; ``"auto"``: chunked at
            8192 classes or more), see the module's docstring.

    Example:

    >>> import numpy as np
    >>> z_t = np.array([[0.0, 0.0], [50.0, -50.0]], "float32")
    >>> z_s = np.array([[0.0, 0.0], [-50.0, 50.0]], "float32")
    >>> np.round(np.asarray(TotalVariation().call(z_t, z_s)), 4)
    array([0., 1.], dtype=float32)
    """

    _has_t2 = False

    def __init__(
        self,
        temperature=1.0,
        reduction="sum_over_batch_size",
        name="total_variation",
        dtype=None,
        chunk_size="auto",
    ):
        super().__init__(temperature, False, reduction, name, dtype, chunk_size)

    def divergence(self, z_t, z_s, temperature):
        """Half the L1 distance between the two distributions, per row."""
        log_p_t, log_p_s, ratio = _sides(z_t, z_s, temperature)
        larger = ops.exp(ops.maximum(log_p_t, log_p_s))

        def distance(log_ratio):
            return 0.5 * ops.sum(larger * -ops.expm1(-ops.abs(log_ratio)), axis=-1)

        formula = distance(log_p_s - log_p_t)
        sg = ops.stop_gradient
        # Forward: the accurate ratio; backward: the gradient of `formula`.
        return sg(distance(ratio)) + (formula - sg(formula))
