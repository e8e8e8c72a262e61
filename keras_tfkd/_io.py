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
import sys
import tempfile
from pathlib import Path

import numpy as np

# Endings a writer needs in order to choose its format: Keras saves by the
# file name (".keras", ".weights.h5"), np.savez appends ".npz" if it is missing.
_KEPT_ENDINGS = (".weights.h5", ".keras", ".npz")


def is_writer():
    """False in processes 1, 2, ... of a job of several processes.

    A job on several hosts (`keras_tfkd.distribution.initialize`) holds the
    same replicated weights and results in every process: process 0 alone
    writes them (backups, result records, checkpoints, cached teachers), and
    every process reads them, e.g. to resume. (`keras_tfkd.distribution` is
    looked up, not imported: without it loaded there is one process.)
    """
    distribution = sys.modules.get("keras_tfkd.distribution")
    return distribution is None or distribution.process_index() == 0


def write_atomic(path, write):
    """Call ``write(tmp_path)``, then move the file onto `path` atomically.

    In a job of several processes only process 0 keeps its file
    (`is_writer`); every process calls `write`.

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
    if not is_writer():
        # The other processes run `write` too (saving a model's weights may
        # hold a collective every process must join), into a private folder
        # that is then deleted: only process 0's file is kept.
        with tempfile.TemporaryDirectory() as private:
            write(os.path.join(private, os.path.basename(path)))
        return
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


def remove_file(path):
    """Delete a file if it exists; only process 0 of several does (`is_writer`)."""
    if is_writer():
        Path(path).unlink(missing_ok=True)


def remove_tree(path):
    """Delete a folder and its files; only process 0 of several does (`is_writer`)."""
    if is_writer():
        import shutil

        shutil.rmtree(path, ignore_errors=True)


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
