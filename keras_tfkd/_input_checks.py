"""Host-side checks of user data: labels, sample weights, finite inputs, bins.

They read NumPy arrays only and import nothing of the package, so the modules
that need them never import each other for them: the data pipelines
(`keras_tfkd.data`) and `keras_tfkd.validation` (the checks of a whole `fit`
call, which knows the teachers); `keras_tfkd.metrics` and
`keras_tfkd.calibration` (`check_num_bins`). Each raises a `ValueError` that
names the argument and the value; the public names are re-exported where they
were first defined (`keras_tfkd.validation`, `keras_tfkd.metrics`).
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "check_labels",
    "check_num_bins",
    "check_sample_weight",
    "is_dataset",
    "leaves",
]


def _is_array_like(value):
    return isinstance(value, np.ndarray) or (
        hasattr(value, "shape")
        and hasattr(value, "dtype")
        and hasattr(value, "__len__")
        and not is_dataset(value)
    )


def is_dataset(value):
    """True for a ``tf.data.Dataset`` (read without importing TensorFlow)."""
    return type(value).__module__.startswith("tensorflow") and hasattr(
        value, "element_spec"
    )


def _label_shapes(token_axes, num_classes):
    k = "K" if num_classes is None else num_classes
    if token_axes == 1:
        return f"integer labels of shape (N,) or one-hot labels of shape (N, {k})"
    lead = ", ".join(["N", "L", "M", "P"][:token_axes])
    return (
        f"integer token ids of shape ({lead}) or one-hot rows of shape "
        f"({lead}, {k}) for a model whose logits are ({lead}, {k})"
    )


def check_labels(y, num_classes, argument="y", token_axes=1):
    """Raise if `y` is not valid integer labels or one-hot rows for `num_classes`.

    `token_axes` is the number of leading axes of the model's logits: 1 for
    a classifier's ``(N, K)`` (labels ``(N,)``, ``(N, 1)`` or ``(N, K)``), 2
    for a language model's ``(N, L, V)`` (token ids ``(N, L)`` or one-hot
    ``(N, L, V)``).
    """
    y = np.asarray(y)
    token_axes = token_axes or 1
    if y.size == 0 or len(y) == 0:
        raise ValueError(f"`{argument}` is empty: there is nothing to train on.")
    if y.ndim == token_axes + 1 and y.shape[-1] != 1:
        if num_classes is not None and y.shape[-1] != num_classes:
            raise ValueError(
                f"`{argument}` has one-hot rows of width {y.shape[-1]} but the model "
                f"predicts {num_classes} classes: pass "
                f"{_label_shapes(token_axes, num_classes)}."
            )
        if not np.all(np.isfinite(y)) or np.any(y < 0):
            raise ValueError(
                f"`{argument}` one-hot/soft labels must be finite and >= 0; found "
                f"min={np.nanmin(y)!r}, non-finite={int(np.sum(~np.isfinite(y)))}."
            )
        sums = y.sum(axis=-1)
        bad = np.argwhere(np.abs(sums - 1.0) > 1e-3)
        if bad.size:
            where = tuple(int(i) for i in bad[0])
            row = where[0] if token_axes == 1 else where
            raise ValueError(
                f"`{argument}` rows must sum to 1 (one-hot or soft labels); row "
                f"{row} sums to {float(sums[where])!r}."
            )
        return
    if y.ndim not in (token_axes, token_axes + 1):
        raise ValueError(
            f"`{argument}` has shape {y.shape}: pass "
            f"{_label_shapes(token_axes, num_classes)}."
            if token_axes > 1
            else f"`{argument}` must have shape (N,), (N, 1) or (N, K); got {y.shape}."
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"`{argument}` holds labels of dtype {y.dtype}; class labels must be "
            f"integers (e.g. `{argument}.astype('int32')`) or one-hot rows."
        )
    if num_classes is not None:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"`{argument}` has label {bad}, outside [0, {num_classes}) for a "
                f"model with {num_classes} classes."
            )


def _check_finite_inputs(x, argument="x"):
    for i, leaf in enumerate(leaves(x)):
        arr = np.asarray(leaf)
        if arr.size == 0:
            raise ValueError(f"`{argument}` is empty: there is nothing to train on.")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            where = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(
                f"`{argument}` contains NaN or Inf (input {i}, first at index "
                f"{tuple(int(k) for k in where)}): clean or impute the data first."
            )


def leaves(x):
    """The arrays of a (possibly nested dict/list/tuple) input, None skipped."""
    if isinstance(x, dict):
        for value in x.values():
            yield from leaves(value)
    elif isinstance(x, (list, tuple)):
        for value in x:
            yield from leaves(value)
    elif x is not None:
        yield x


def check_sample_weight(weights, argument="sample_weight"):
    """Raise unless `weights` are all finite and >= 0; return them as an array."""
    w = np.asarray(weights, dtype="float64")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(
            f"`{argument}` must be finite and >= 0; got values from "
            f"{float(np.nanmin(w))!r} to {float(np.nanmax(w))!r}."
        )
    return w


def check_num_bins(num_bins):
    """`num_bins` as an int if it is an integer >= 1, else a ValueError naming it."""
    if (
        isinstance(num_bins, bool)
        or not isinstance(num_bins, numbers.Integral)
        or num_bins < 1
    ):
        raise ValueError(
            f"`num_bins` must be an integer >= 1, got num_bins={num_bins!r}."
        )
    return int(num_bins)
