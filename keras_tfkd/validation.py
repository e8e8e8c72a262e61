"""Checks of user data run on the host before `fit` takes a step.

Several backends turn bad labels into silent garbage inside a compiled step
(an out-of-range index gathers zeros or NaN). These checks run on NumPy
arrays before training starts, and on each batch of a `tf.data.Dataset` as it
is produced, and raise a `ValueError` that names the argument and the value.
"""

from __future__ import annotations

import numpy as np

# The checks of arrays alone live below the data pipelines (which use them)
# and are part of this module's API.
from keras_tfkd._input_checks import (  # noqa: F401
    _check_finite_inputs,
    _is_array_like,
    check_labels,
    check_sample_weight,
    is_dataset,
    leaves,
)

__all__ = [
    "check_fit_data",
    "check_labels",
    "check_sample_weight",
    "is_dataset",
    "leaves",
]


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


def _check_token_weights(weights, label_shape, axes):
    """Sequence labels (N, L): `sample_weight` is (N,) or (N, L) (a mask)."""
    tokens = tuple(label_shape[:axes])
    if axes == 1 or weights.shape in (tokens, tokens[:1]):
        return
    raise ValueError(
        f"`sample_weight` has shape {weights.shape}, but the labels are tokens of "
        f"shape {tokens}: pass one weight per token {tokens} (e.g. the padding "
        f"mask) or one per sequence {tokens[:1]}."
    )


def check_fit_data(distiller, x, y, kwargs, training=True):
    """Validate `fit`/`evaluate` data; return possibly wrapped ``(x, y, kwargs)``."""
    num_classes = distiller.num_classes
    axes = distiller.token_axes or 1
    if is_dataset(x):
        spec = x.element_spec
        if isinstance(spec, tuple) and len(spec) >= 2:
            from keras_tfkd.data import _tfdata

            x = _tfdata.with_label_checks(x, num_classes)
        return x, y, kwargs
    if getattr(x, "shuffles_itself", False):  # keras_tfkd.data.pipeline (NumPy)
        check_labels(x.labels, num_classes, "the pipeline's labels", axes)
        return x, y, kwargs
    if y is not None and _is_array_like(y):
        check_labels(y, num_classes, "y", axes)
        _check_finite_inputs(x, "x")
        if training:
            _check_teacher_against_inputs(distiller, x)
        if kwargs.get("sample_weight") is not None:
            weights = check_sample_weight(kwargs["sample_weight"])
            _check_token_weights(weights, np.shape(y), axes)
    val = kwargs.get("validation_data")
    if isinstance(val, (tuple, list)) and len(val) >= 2 and _is_array_like(val[1]):
        check_labels(val[1], num_classes, "validation_data[1]", axes)
        _check_finite_inputs(val[0], "validation_data[0]")
    return x, y, kwargs
