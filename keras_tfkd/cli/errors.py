"""The command's one- or two-line errors, and the checks that raise them.

`_UsageError` carries the message and the exit status (2: a bad name or
value on the command line; 1: a problem of this machine); `main` prints it
after ``keras-tfkd: error:``. The checks here run before anything is
trained: names against the registries (with the closest valid names), the
output folder; `_data_error` rewords a missing data set.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from keras_tfkd.experiments import UnknownNameError

PROG = "keras-tfkd"
# Above this many valid names, an unknown name gets the closest ones and the
# `keras-tfkd list` command that prints them all.
_LIST_ALL_UP_TO = 8
# Where `keras_tfkd.data` looks for each data set under --data-dir or
# $KERAS_TFKD_DATA, and what goes there (for the CLI-worded fix).
_DATA_FOLDERS = {
    "fashion_mnist": (
        "fashion-mnist",
        "the four *-ubyte.gz files; on Debian/Ubuntu: apt-get install "
        "dataset-fashion-mnist",
    ),
    "cifar10": ("cifar-10-batches-bin", "cifar-10-binary.tar.gz extracted"),
    "cifar100": ("cifar-100-binary", "cifar-100-binary.tar.gz extracted"),
    "tiny_imagenet": ("tiny-imagenet-200", "tiny-imagenet-200.zip unzipped"),
    "imagenet": ("imagenet", "train/<class>/* and val/<class>/*"),
}
# Data sets that Keras downloads when downloads are allowed.
_KERAS_DOWNLOADS = ("fashion_mnist", "cifar10", "cifar100")


class _UsageError(Exception):
    """A mistake the command reports in one or two lines, without a traceback.

    ``status`` is 2 for a bad name or value on the command line, 1 for a
    problem of this machine (a missing backend or data set, an unusable
    output folder).
    """

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ checks
def _unknown(kind, name, valid, flag=None, listing=None):
    """The message for an unknown name: all valid names, or the 5 closest.

    Short lists are given whole; a long one (`listing` names the
    ``keras-tfkd list`` section that prints it) gives the closest names
    (`difflib`) and the command that lists them all, on a second line.
    """
    valid = [str(v) for v in valid]
    head = f"{flag}: " if flag else ""
    if listing is None or len(valid) <= _LIST_ALL_UP_TO:
        return f"{head}unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}."
    close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.4)
    hint = f" Closest: {', '.join(close)}." if close else " No close match."
    return (
        f"{head}unknown {kind} {name!r}.{hint}\n"
        f"`{PROG} list {listing}` prints the {len(valid)} valid {kind}s."
    )


def _from_unknown_name_error(e):
    """An `UnknownNameError` raised below the CLI, in the CLI's wording."""
    text = str(e)
    words = text.split()
    if e.name is None or not e.valid or len(words) < 2 or words[0] != "Unknown":
        return text
    kind = words[1]
    listing = {
        "experiment": "experiments",
        "model": "models",
        "student": "models",
        "teacher": "models",
        "dataset": "datasets",
    }.get(kind)
    flag = None
    if kind in ("student", "teacher"):
        kind, flag = "model", kind
    return _unknown(kind, e.name, e.valid, flag, listing)


def _check_experiment(experiment_id):
    from keras_tfkd import experiments

    try:
        return experiments.get(experiment_id)
    except UnknownNameError as e:
        raise _UsageError(
            _unknown("experiment", e.name, e.valid, "--experiment", "experiments")
        ) from None


def _check_dataset(name, flag="--dataset"):
    from keras_tfkd import data

    if str(name).lower().endswith(".npz"):  # a file of the user's arrays
        if not os.path.isfile(name):
            raise _UsageError(
                f"{flag} {name!r}: no such file (a .npz with x_train, y_train, "
                "x_test, y_test).",
                status=1,
            )
        return str(name)
    key = str(name).lower().replace("-", "_")
    if key not in data.available():
        raise _UsageError(_unknown("dataset", name, data.available(), flag, "datasets"))
    return key


def _check_models(*pairs):
    """Each ``(flag, name)``: an unknown model name is a usage error."""
    from keras_tfkd import runs

    names = runs.model_names()
    for flag, name in pairs:
        if name is not None and name not in names:
            raise _UsageError(_unknown("model", name, names, flag, "models"))


def _check_output_dir(path, default):
    """The output folder must be (or be creatable as) a writable folder."""
    p = Path(path)
    fix = f"Pass a folder (it is created if missing), e.g. --output-dir {default}."
    if p.exists() and not p.is_dir():
        raise _UsageError(
            f"--output-dir {str(path)!r} is a file, not a folder.\n{fix}", status=1
        )
    if p.is_symlink() and not p.exists():
        raise _UsageError(
            f"--output-dir {str(path)!r} is a broken symbolic link.\n{fix}", status=1
        )
    parent = p.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise _UsageError(
            f"--output-dir {str(path)!r}: {str(parent)!r} is a file, so the folder "
            f"cannot be created.\n{fix}",
            status=1,
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _UsageError(
            f"--output-dir {str(path)!r}: no permission to write in "
            f"{str(parent)!r}.\nPass a folder you can write to.",
            status=1,
        )


def _missing_dirs(path):
    """The folders of `path` that do not exist yet, deepest first."""
    missing = []
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _remove_empty(folders):
    """Remove the folders this command created if they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (something was saved), or already gone
            return


def _data_error(e, name):
    """A `DatasetNotFoundError` with the fix in command-line words.

    Keeps the message's first part (the places searched) and replaces its
    Python-API advice (``data_dir=...``, ``download=True``) with
    ``--data-dir`` / ``$KERAS_TFKD_DATA``.
    """
    from keras_tfkd import data

    text = str(e).split("\nTo provide it:", 1)[0]
    folder, what = _DATA_FOLDERS.get(name, (name, ""))
    what = f" ({what})" if what else ""
    fix = (
        f"To fix: pass --data-dir DIR, with DIR/{folder}/{what} or its files in "
        f"DIR, or set {data.ENV_DATA}=ROOT with ROOT/{folder}/"
    )
    if name in _KERAS_DOWNLOADS:
        if not data.sources._download_allowed(None):  # $KERAS_TFKD_OFFLINE set
            fix += f"; or unset {data.ENV_OFFLINE} to let Keras download it"
        else:
            fix += "; or let Keras download it (needs network access)"
    return f"{text}\n{fix}."
