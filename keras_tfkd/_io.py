"""Atomic file writes: a file is either the old one or the new one, never half.

`write_atomic` has a callback write a temporary file in the destination's
folder, flushes it to disk, then moves it onto the destination with
`os.replace` (atomic within one file system), so a run killed at any instant
leaves no truncated file behind. `write_json_atomic` writes JSON that way.
Both give the file the permissions of any new file (``0o666`` less the
umask), not the ``0o600`` of `tempfile.mkstemp`.

Used for run backups (`keras_tfkd.callbacks.RunBackup`), results files,
run records and saved models (`keras_tfkd.runs`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

# Endings a writer needs in order to choose its format: Keras saves by the
# file name (".keras", ".weights.h5"), np.savez appends ".npz" if it is missing.
_KEPT_ENDINGS = (".weights.h5", ".keras", ".npz")


def write_atomic(path, write):
    """Call ``write(tmp_path)``, then move the file onto `path` atomically.

    The temporary file is a hidden file in `path`'s folder (created if
    missing); it ends like `path` where the writer needs that ending
    (``.keras``, ``.weights.h5``, ``.npz``), else in ``.tmp``. If `write`
    raises, the temporary file is removed and `path` is left as it was.

    Example:

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder) / "note.txt"
    ...     write_atomic(path, lambda tmp: pathlib.Path(tmp).write_text("hi"))
    ...     print(path.read_text(), os.listdir(folder))
    hi ['note.txt']
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    ending = next((e for e in _KEPT_ENDINGS if name.endswith(e)), ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=ending, dir=folder)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would stick after replace
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path, payload):
    """Write `payload` to `path` as JSON (``indent=1``), atomically.

    NumPy scalars and arrays are written as numbers and lists, `Path`s as
    strings; anything else JSON cannot hold raises a `TypeError` (and `path`
    is left as it was).
    """

    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=False, default=_json_default)
            f.write("\n")

    write_atomic(path, dump)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Cannot write {type(value).__name__} to JSON: {value!r}")
