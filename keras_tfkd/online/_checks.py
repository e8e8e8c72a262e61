"""Argument checks shared by the online teachers: one message per kind of mistake."""

from __future__ import annotations

import numpy as np


def check_integer(name, value, minimum, allow_none=False):
    """`value` as an int >= `minimum` (or None if allowed), else a ValueError."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        none = "None or " if allow_none else ""
        raise ValueError(
            f"`{name}` must be {none}an integer >= {minimum}, got {name}={value!r}."
        )
    return int(value)


def check_choice(name, value, choices):
    """`value` if it is one of `choices`, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, choices))}, "
            f"got {name}={value!r}."
        )
    return value


def refuse_sequences(method, shape, need):
    """Raise for sequence logits ``(None, L, V)``: `method` keeps state that does
    not scale to a vocabulary; `need` says what it would hold."""
    if shape is None or len(shape) < 3:
        return
    raise ValueError(
        f"{method} cannot distil sequence outputs {tuple(shape)}: {need} Use a "
        "per-token method instead (recipes.kd, recipes.tfkd_reg, "
        "recipes.label_smoothing, recipes.tfkd_self, recipes.dkd)."
    )


def gigabytes(num_bytes):
    """A byte count as text, e.g. ``'10.1 GB'``."""
    return f"{num_bytes / 1e9:,.1f} GB" if num_bytes >= 1e8 else f"{num_bytes:,} bytes"
