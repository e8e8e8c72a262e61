"""Checks of user data run on the host before `fit` takes a step.

Several backends turn bad labels into silent garbage inside a compiled step
(an out-of-range index gathers zeros or NaN). These checks run on NumPy
arrays before training starts, and on each batch of a `tf.data.Dataset` as it
is produced, and raise a `ValueError` that names the argument and the value.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "check_fit_data",
    "check_labels",
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
    return type(value).__module__.startswith("tensorflow") and hasattr(
        value, "element_spec"
    )


def check_labels(y, num_classes, argument="y"):
    """Raise if `y` is not valid integer labels or one-hot rows for `num_classes`."""
    y = np.asarray(y)
    if y.size == 0 or len(y) == 0:
        raise ValueError(f"`{argument}` is empty: there is nothing to train on.")
    if y.ndim == 2 and y.shape[1] != 1:
        if num_classes is not None and y.shape[1] != num_classes:
            raise ValueError(
                f"`{argument}` has one-hot rows of width {y.shape[1]} but the model "
                f"predicts {num_classes} classes: pass integer labels of shape "
                f"(N,) or one-hot labels of shape (N, {num_classes})."
            )
        if not np.all(np.isfinite(y)) or np.any(y < 0):
            raise ValueError(
                f"`{argument}` one-hot/soft labels must be finite and >= 0; found "
                f"min={np.nanmin(y)!r}, non-finite={int(np.sum(~np.isfinite(y)))}."
            )
        sums = y.sum(axis=1)
        bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
        if bad.size:
            raise ValueError(
                f"`{argument}` rows must sum to 1 (one-hot or soft labels); row "
                f"{int(bad[0])} sums to {float(sums[bad[0]])!r}."
            )
        return
    if y.ndim > 2:
        raise ValueError(
            f"`{argument}` must have shape (N,), (N, 1) or (N, K); got {y.shape}."
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


def _check_teacher_against_inputs(distiller, x):
    from keras_tfkd import teachers as teachers_lib

    if not isinstance(x, np.ndarray):
        return
    for teacher in distiller.teachers:
        if not isinstance(teacher, teachers_lib.Teacher):
            _check_model_teacher(teacher, x)


def _check_model_teacher(teacher, x):
    from keras_tfkd import teachers as teachers_lib

    expected = getattr(teacher, "input_shape", None)
    if isinstance(expected, tuple) and len(expected) == x.ndim:
        for got, want in zip(x.shape[1:], expected[1:]):
            if want is not None and got != want:
                raise ValueError(
                    f"The teacher expects inputs of shape {expected} but `x` has "
                    f"shape {x.shape}: teacher and student must take the same inputs."
                )
    sample = teacher(x[: min(len(x), 16)], training=False)
    if not isinstance(sample, (dict, list, tuple)):  # one output: its logits
        teachers_lib.check_logits_values(sample, argument="teacher")


def check_sample_weight(weights, argument="sample_weight"):
    """Raise unless `weights` are all finite and >= 0; return them as an array."""
    w = np.asarray(weights, dtype="float64")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(
            f"`{argument}` must be finite and >= 0; got values from "
            f"{float(np.nanmin(w))!r} to {float(np.nanmax(w))!r}."
        )
    return w


def check_fit_data(distiller, x, y, kwargs, training=True):
    """Validate `fit`/`evaluate` data; return possibly wrapped ``(x, y, kwargs)``."""
    num_classes = distiller.num_classes
    if is_dataset(x):
        spec = x.element_spec
        if isinstance(spec, tuple) and len(spec) >= 2:
            from keras_tfkd.data import _tfdata

            x = _tfdata.with_label_checks(x, num_classes)
        return x, y, kwargs
    if getattr(x, "shuffles_itself", False):  # keras_tfkd.data.pipeline (NumPy)
        check_labels(x.labels, num_classes, "the pipeline's labels")
        return x, y, kwargs
    if y is not None and _is_array_like(y):
        check_labels(y, num_classes, "y")
        _check_finite_inputs(x, "x")
        if training:
            _check_teacher_against_inputs(distiller, x)
        if kwargs.get("sample_weight") is not None:
            check_sample_weight(kwargs["sample_weight"])
    val = kwargs.get("validation_data")
    if isinstance(val, (tuple, list)) and len(val) >= 2 and _is_array_like(val[1]):
        check_labels(val[1], num_classes, "validation_data[1]")
        _check_finite_inputs(val[0], "validation_data[0]")
    return x, y, kwargs
