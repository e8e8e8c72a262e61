"""Warnings for the old import paths of moved modules."""

from __future__ import annotations

import sys
import warnings


def warn_moved(old: str, new: str) -> None:
    """Warn that module ``old`` moved to ``new``; call it from ``old``'s body.

    The warning names the first frame outside the import machinery and the
    lazy `keras_tfkd` attributes, the user's ``import`` line, so Python's
    default filters show it when a script (``__main__``) uses the old path.
    """
    skip = {old, __name__, "keras_tfkd", "importlib"}
    frame, level = sys._getframe(1), 2  # stacklevel 2: the module `old`
    while frame is not None:
        filename = frame.f_code.co_filename
        # `warnings` does not count importlib's bootstrap frames; nor do we.
        internal = "importlib" in filename and "_bootstrap" in filename
        if not internal and frame.f_globals.get("__name__") not in skip:
            break
        frame, level = frame.f_back, level + (not internal)
    warnings.warn(
        f"{old} moved to {new}; the old path is removed in the next release "
        f"(import {new} instead).",
        DeprecationWarning,
        stacklevel=level,
    )
