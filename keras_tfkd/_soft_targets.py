"""Low-level pieces shared by the soft-target losses and the divergences.

`keras_tfkd.losses` and `keras_tfkd.divergences` both build on these; this
module imports neither, so the two never import each other in a circle. The
public names here are re-exported by `keras_tfkd.losses` (their home in the
documentation).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_tfkd import _backend

__all__ = ["kl_divergence_with_logits"]


def _float32(x):
    """`x` as a float32 tensor (cast only when it is another type)."""
    x = ops.convert_to_tensor(x)
    if x.dtype != "float32":
        x = ops.cast(x, "float32")
    return x


def _check_temperature(name, value):
    """Refuse a temperature that is not a finite number > 0 (or a `keras.Variable`)."""
    if isinstance(value, keras.Variable):
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number, got {name}={value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {name}={value!r}.")


def _temperature_variable(name, value):
    """`value` as a non-trainable float32 variable (a variable is kept as it is).

    A schedule assigns the variable during `fit`; the compiled step reads it,
    so the new value takes effect without retracing.
    """
    _check_temperature(name, value)
    if isinstance(value, keras.Variable):
        return value
    return keras.Variable(
        float(value), dtype="float32", trainable=False, name=name, aggregation="none"
    )


#: Below this |x| the terms ``exp(x) - 1 - x`` come from their series (to x^5,
#: truncation 3e-7 relative at the bound); above it the direct difference
#: loses at most 3e-5 relative (at the bound, less beyond).
_SERIES_BOUND = 0.1


def _kl_value(z_t, z_s, t_t, t_s, log_p_t, p_t):
    """The value of the per-sample KL, free of cancellation (no gradient).

    With ``d = z_s/T_s - z_t/T_t`` and ``x = d - E_pt[d]`` (so ``E_pt[x] = 0``),
    ``KL = log E_pt[exp(x)] = log1p(S)``, ``S = sum_k p_t[k] (exp(x_k) - 1 - x_k)``:
    a sum of non-negative terms, accurate when the two distributions are
    close, where the textbook form subtracts two log-partition functions of
    size ``log K`` and loses every digit (it even goes negative). Each term is
    ``p_t * series(x)`` for small ``|x|`` and ``exp(log p_t + x) - p_t (1 + x)``
    otherwise (a class whose ``p_t`` underflows still counts through
    ``exp(log p_t + x)``). One exponential per element besides the softmaxes
    (`p_t` is shared with the gradient's textbook form).

    Two passes over the classes: the centring ``E_pt[d]``, then ``S`` and
    the centring's float32 residue ``r = E_pt[x]`` together, with ``KL =
    log1p(S + r) - r`` (exact for any ``r``: ``E_pt[exp(x)] = 1 + S + r``;
    no digit lost while ``|r|`` is far below 1, and a residue of 1e-4, from
    logits of 1e4, would otherwise cost 1% of a KL of 1e-5). Unscaled, a
    term is at most ``exp(KL)`` (``log p_t + x = log p_s + KL``), so only a
    KL above about 88 overflows float32; such a batch is recomputed with
    every term scaled by ``exp(-s)``, ``s`` the row's largest ``log p_t +
    x`` (`_kl_value_scaled`, two passes more).

    About 20 elementwise operations and three reductions: a backend that runs
    them one pass over memory each (TensorFlow's graph executor, PyTorch's
    eager mode) pays about twice the textbook form for them, so
    `keras_tfkd._backend.fused` compiles them into fused loops where it can
    (XLA on TensorFlow and JAX; see that function for PyTorch).
    """
    kernel = _backend.fused(_kl_value_kernel)
    return kernel(z_t, z_s, t_t, t_s, log_p_t, p_t)


def _series(x):
    """``exp(x) - 1 - x = x^2 (1/2 + x/6 + x^2/24 + x^3/120 + ...)``: no
    cancellation for small ``|x|`` (``x * x``, not ops.square: PyTorch's
    square is its slow general `pow`)."""
    return (x * x) * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0))))


def _kl_value_kernel(z_t, z_s, t_t, t_s, log_p_t, p_t):
    # (z_s - z_t) is exact for close logits; with T_s == T_t the ratio is 1.
    d = (z_s - z_t * (t_s / t_t)) / t_s
    x = d - ops.sum(p_t * d, axis=-1, keepdims=True)
    small = ops.abs(x) < _SERIES_BOUND
    # (Where |x| is large the series may overflow, where it is small the
    # direct difference cancels; `where` discards either.)
    direct = ops.exp(log_p_t + x) - p_t * (1.0 + x)
    terms = ops.where(small, p_t * _series(x), ops.maximum(direct, 0.0))
    total = ops.sum(terms, axis=-1)
    residue = ops.sum(p_t * x, axis=-1)
    value = ops.maximum(ops.log1p(total + residue) - residue, 0.0)
    return ops.cond(
        ops.all(ops.isfinite(total)),
        lambda: value,
        lambda: _kl_value_scaled(x, log_p_t, p_t),
    )


def _kl_value_scaled(x, log_p_t, p_t):
    """`_kl_value_kernel` with every term scaled by ``exp(-s)``: a KL above 88."""
    # Centre again: the residue is then negligible.
    x = x - ops.sum(p_t * x, axis=-1, keepdims=True)
    a = log_p_t + x
    shift = ops.maximum(ops.max(a, axis=-1, keepdims=True), 0.0)
    q = p_t * ops.exp(-shift)
    small = ops.abs(x) < _SERIES_BOUND
    direct = ops.exp(a - shift) - q * (1.0 + x)
    terms = ops.where(small, q * _series(x), ops.maximum(direct, 0.0))
    total = ops.sum(terms, axis=-1)
    # log S = shift + log(total); log1p(S) = softplus(log S); 0 for identical rows.
    positive = total > 0
    log_s = ops.squeeze(shift, -1) + ops.log(ops.where(positive, total, 1.0))
    return ops.where(positive, ops.softplus(log_s), 0.0)


def kl_divergence_with_logits(
    teacher_logits, student_logits, teacher_temperature=1.0, student_temperature=1.0
):
    """Per-sample ``KL(softmax(z_t / T_t) || softmax(z_s / T_s))``, summed over classes.

    ``sum_k p_t[k] * (log p_t[k] - log p_s[k])`` in float32. The gradient is
    that of this formula (``(p_s - p_t) / T_s`` with respect to ``z_s``); the
    value is computed in a cancellation-free form (see `_kl_value`), so it is
    never negative and stays within 1e-3 relative of float64 even when the
    two distributions nearly match at T = 100 and K = 10000. Returns a tensor
    of shape ``(N,)``.
    """
    z_t, t_t = _float32(teacher_logits), _float32(teacher_temperature)
    z_s, t_s = _float32(student_logits), _float32(student_temperature)
    log_p_t = ops.log_softmax(z_t / t_t, axis=-1)
    log_p_s = ops.log_softmax(z_s / t_s, axis=-1)
    p_t = ops.exp(log_p_t)
    kl = ops.sum(p_t * (log_p_t - log_p_s), axis=-1)
    sg = ops.stop_gradient
    value = sg(_kl_value(sg(z_t), sg(z_s), sg(t_t), sg(t_s), sg(log_p_t), sg(p_t)))
    # Forward: exactly `value`; backward: the gradient of `kl`.
    return value + (kl - sg(kl))
