"""Helpers shared by the callback modules."""

from __future__ import annotations

import numpy as np
from keras import ops


def as_float(value):
    """`value` as a Python float, or None if it is not a real scalar number."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    try:
        array = np.asarray(ops.convert_to_numpy(value))
    except Exception:  # noqa: BLE001 - anything that is not a tensor/array
        return None
    if array.ndim != 0 or array.dtype.kind not in "iuf":
        return None
    return float(array)
