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

#: Below this ``|u|`` (``u = S + r``, see `_from_sums`) ``log1p(u) - u`` comes
#: from its series (to u^10: truncation 2e-10 relative at the bound).
_LOG1P_SERIES_BOUND = 0.1

#: PyTorch's eager form (`_kl_value_eager`) takes the direct
#: difference alone when every row's textbook KL is at least this: its
#: float32 error, at most about ``2 eps`` of the sum, is then below ``4e-7``
#: of the KL.
_DIRECT_MIN_KL = 0.5

#: The textbook's centre is kept in a batch whose every row's value is within
#: a few float32 ulps: the two parts the value adds (``S`` and ``log1p(u) -
#: u``, or ``log1p(u)`` and ``-r``) are at most this many times the value
#: (``S`` is about ``KL + r^2/2``, so a residue ``r`` far above ``sqrt(KL)``
#: cancels). Otherwise the batch is centred again at ``E_pt[d]`` itself, one
#: pass more.
_RESIDUE_RATIO = 4.0


def _kl_value(z_t, z_s, t_t, t_s, log_p_t, p_t, centre=None, textbook=None):
    """The value of the per-sample KL, free of cancellation (no gradient).

    With ``d = z_s/T_s - z_t/T_t`` and ``x = d - c`` for any constant ``c``,
    ``KL = log E_pt[exp(x)] - E_pt[x] = log1p(S + r) - r``, ``S = sum_k
    p_t[k] (exp(x_k) - 1 - x_k)`` (a sum of non-negative terms) and ``r =
    E_pt[x]``: exact for any ``c``, and free of cancellation when ``c`` is
    close to ``E_pt[d]`` (``r`` small), where the textbook form subtracts two
    log-partition functions of size ``log K`` and loses every digit when the
    two distributions are close (it even goes negative). Each term is ``p_t *
    series(x)`` for small ``|x|`` and ``exp(log p_t + x) - p_t (1 + x)``
    otherwise (a class whose ``p_t`` underflows still counts through
    ``exp(log p_t + x)``). Where ``u = S + r`` is small the value is taken as
    ``S + (log1p(u) - u)``, the bracket from its series (`_from_sums`), so
    that ``r`` never cancels against itself.

    `centre` (``(..., 1)``) and `textbook` (``(...,)``), when given, are the
    textbook form's ``E_pt[d] = (lse_s - lse_t) - KL_textbook`` and its KL,
    which `kl_divergence_with_logits` computes anyway for the gradient (on
    TensorFlow and JAX, where `keras_tfkd._backend.log_softmax` gives the
    ``logsumexp``): the value then takes one pass over the classes
    (`_kl_value_centred`).
    The textbook's error becomes the residue ``r`` (float32's precision times
    the log-partition functions' size, about 1e-6 for logits of size 10),
    which costs the value float32's precision of ``r^2 / 2``; a batch in
    which that is more than a few ulps of some row's value (a KL far below
    ``r^2``: logits of size 1e4 and a KL near 1e-9) is centred again at
    ``E_pt[d]`` itself, one pass more, as is every call without them
    (`_kl_value_kernel`, two passes).

    Unscaled, a term is at most ``exp(KL + r)`` (``log p_t + x = log p_s +
    KL + r``), so only a KL above about 88 overflows float32. With `textbook`
    given, such a row takes the textbook value (its error, float32's
    precision of the log-partition functions, is then below 1e-5 of the KL
    for logits up to 1e4); without it, the batch is recomputed with every term
    scaled by ``exp(-s)``, ``s`` the row's largest ``log p_t + x``
    (`_kl_value_scaled`, two passes more).

    About 20 elementwise operations and two reductions: a backend that runs
    them one pass over memory each (TensorFlow's graph executor, PyTorch's
    eager mode) pays about twice the textbook form for them, so
    `keras_tfkd._backend.fused` compiles them into fused loops where it can
    (XLA on TensorFlow and JAX; see that function for PyTorch).
    """
    if centre is None:
        kernel = _backend.fused(_kl_value_kernel, eager=_kl_value_eager)
        return kernel(z_t, z_s, t_t, t_s, log_p_t, p_t, textbook)
    kernel = _backend.fused(_kl_value_centred)
    return kernel(z_t, z_s, t_t, t_s, log_p_t, p_t, centre, textbook)


def _series(x):
    """``exp(x) - 1 - x = x^2 (1/2 + x/6 + x^2/24 + x^3/120 + ...)``: no
    cancellation for small ``|x|`` (``x * x``, not ops.square: PyTorch's
    square is its slow general `pow`)."""
    return (x * x) * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0))))


def _log1p_minus(u):
    """``log1p(u) - u = -u^2/2 + u^3/3 - ...`` for ``|u| <`` `_LOG1P_SERIES_BOUND`."""
    series = 0.0
    for k in range(10, 2, -1):
        series = u * (((-1.0) ** (k + 1)) / k + series)
    return (u * u) * (-0.5 + series)


def _difference(z_t, z_s, t_t, t_s):
    """``d = z_s/T_s - z_t/T_t``; ``z_s - z_t`` is exact for close logits
    (with ``T_s == T_t`` the ratio is 1)."""
    return (z_s - z_t * (t_s / t_t)) / t_s


def _sums(x, log_p_t, p_t):
    """``S`` and the residue ``r = E_pt[x]`` of `_kl_value`, per row."""
    direct = ops.maximum(ops.exp(log_p_t + x) - p_t * (1.0 + x), 0.0)
    # (Where |x| is large the series may overflow, where it is small the
    # direct difference cancels; `where` discards either.)
    terms = ops.where(ops.abs(x) < _SERIES_BOUND, p_t * _series(x), direct)
    return _backend.row_sums(terms, p_t * x)


def _from_sums(total, residue, with_size=False):
    """``KL = log1p(S + r) - r``; as ``S + (log1p(u) - u)`` where ``u = S + r``
    is small, so that the residue's float32 error does not cancel into the
    value. `with_size`: also the size of the two parts it adds (their
    cancellation, the value's float32 error, is that size over the value)."""
    u = total + residue
    small = ops.abs(u) < _LOG1P_SERIES_BOUND
    bracket = _log1p_minus(ops.where(small, u, 0.0))
    log1p = ops.log1p(ops.where(small, 0.0, u))
    value = ops.maximum(ops.where(small, total + bracket, log1p - residue), 0.0)
    if not with_size:
        return value
    size = ops.where(small, total + ops.abs(bracket), ops.abs(log1p) + ops.abs(residue))
    return value, size


def _precise(value, size, total):
    """Whether every finite row's value is within a few ulps: the parts it
    adds are at most `_RESIDUE_RATIO` times it."""
    within = ops.logical_or(
        size <= _RESIDUE_RATIO * value, ops.logical_not(ops.isfinite(total))
    )
    return ops.all(within)


def _kl_value_centred(z_t, z_s, t_t, t_s, log_p_t, p_t, centre, textbook):
    """`_kl_value` centred at the textbook's ``E_pt[d]``: one pass."""
    x = _difference(z_t, z_s, t_t, t_s) - centre
    total, residue = _sums(x, log_p_t, p_t)
    value, size = _from_sums(total, residue, with_size=True)
    # The other branch recomputes the teacher's side from the logits: under
    # XLA a branch's operands are materialised (and copied), the logits
    # already are, and a conditional over the (rows, K) intermediates cost
    # more than the pass it saves (measured on JAX inside a training step).
    return ops.cond(
        _precise(value, size, total),
        lambda: ops.where(ops.isfinite(total), value, textbook),
        lambda: _recentred(z_t, z_s, t_t, t_s),
    )


def _recentred(z_t, z_s, t_t, t_s):
    log_p_t, _ = _backend.log_softmax(z_t / t_t)
    return _kl_value_kernel(z_t, z_s, t_t, t_s, log_p_t, ops.exp(log_p_t))


def _kl_value_kernel(z_t, z_s, t_t, t_s, log_p_t, p_t, textbook=None):
    """`_kl_value` centred at ``E_pt[d]`` itself: two passes (the centring,
    then ``S`` and the centring's float32 residue ``r``; `textbook` unused)."""
    d = _difference(z_t, z_s, t_t, t_s)
    x = d - ops.sum(p_t * d, axis=-1, keepdims=True)
    total, residue = _sums(x, log_p_t, p_t)
    return ops.cond(
        ops.all(ops.isfinite(total)),
        lambda: _from_sums(total, residue),
        lambda: _kl_value_scaled(x, log_p_t, p_t),
    )


def _kl_value_eager(z_t, z_s, t_t, t_s, log_p_t, p_t, textbook=None):
    """`_kl_value_kernel` on PyTorch, in about half its passes
    (`keras_tfkd._backend.kl_sums_eager`); the direct difference alone when
    every row's textbook KL is at least `_DIRECT_MIN_KL`."""
    if math.prod(z_s.shape) == 0:
        return ops.zeros(z_s.shape[:-1])
    direct_only = textbook is not None and bool(ops.min(textbook) >= _DIRECT_MIN_KL)
    x, total, residue = _backend.kl_sums_eager(
        z_t, z_s, t_t, t_s, log_p_t, p_t, _SERIES_BOUND, direct_only
    )
    if not bool(ops.all(ops.isfinite(total))):
        return _kl_value_scaled(x, log_p_t, p_t)
    return _from_sums(total, residue)


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
    log_p_t, lse_t = _backend.log_softmax(z_t / t_t)
    log_p_s, lse_s = _backend.log_softmax(z_s / t_s)
    p_t = ops.exp(log_p_t)
    kl = ops.sum(p_t * (log_p_t - log_p_s), axis=-1)
    sg = ops.stop_gradient
    centre = None
    if lse_t is not None:
        # The textbook value's centre: E_pt[d] = (lse_s - lse_t) - KL.
        centre = sg(lse_s - lse_t) - ops.expand_dims(sg(kl), -1)
    inputs = (sg(z_t), sg(z_s), sg(t_t), sg(t_s), sg(log_p_t), sg(p_t))
    value = sg(_kl_value(*inputs, centre=centre, textbook=sg(kl)))
    # Forward: exactly `value`; backward: the gradient of `kl`.
    return value + (kl - sg(kl))
