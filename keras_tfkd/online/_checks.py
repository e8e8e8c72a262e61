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
