"""A user's own data as a `Dataset`: `from_arrays` and ``.npz`` files (`load_npz`).

The inputs reach the model as given (as float32): the set's ``mean`` is 0 and
its ``std`` 1/255, which undoes the pipelines' scaling of images by 1/255, so
images already normalised, raw pixels and tabular features all pass through
unchanged (to float32 rounding). Nothing is augmented unless a study asks for
a policy of `keras_tfkd.data.AUGMENTATIONS` (images ``(N, H, W, C)`` only).

Each set carries a `fingerprint` of its arrays, which enters every run's key:
a study rerun on changed data trains again instead of reusing old results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from keras_tfkd.data.dataset import (
    Dataset,
    DatasetFormatError,
    DatasetNotFoundError,
    _first,
    _limits,
)

__all__ = ["NPZ_KEYS", "from_arrays", "load_npz"]

#: The arrays of a ``.npz`` data file; ``x_val``/``y_val`` are optional.
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _pair(value, argument):
    """``(x, y)`` as NumPy arrays, checked: same length, integer labels."""
    if isinstance(value, Dataset) or not isinstance(value, (tuple, list)):
        raise TypeError(
            f"`{argument}` must be a pair (x, y) of arrays, got {type(value).__name__}."
        )
    if len(value) != 2:
        raise ValueError(f"`{argument}` must be a pair (x, y), got {len(value)} items.")
    x, y = (np.asarray(v) for v in value)
    if x.ndim < 2:
        raise ValueError(
            f"`{argument}`: x must have a feature axis, (N, features) or (N, H, W, "
            f"C), got shape {x.shape}."
        )
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"`{argument}`: x must be numeric, got dtype {x.dtype}.")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise ValueError(f"`{argument}`: x holds NaN or infinite values.")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot? pass y.argmax(axis=1))" if y.ndim == 2 else ""
        raise ValueError(
            f"`{argument}`: y must be integer class ids of shape (N,), got shape "
            f"{y.shape}{hint}."
        )
    if len(x) != len(y):
        raise ValueError(
            f"`{argument}`: x has {len(x)} examples but y has {len(y)} labels."
        )
    if len(y) == 0:
        raise ValueError(f"`{argument}` is empty.")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or np.any(y != np.round(y)):
            raise ValueError(
                f"`{argument}`: y must be integer class ids, got dtype {y.dtype} "
                f"(e.g. {y[0]!r})."
            )
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"`{argument}`: class ids must be >= 0, got {int(y.min())}.")
    return x, y


def _fingerprint(arrays):
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()[:16]


def from_arrays(
    train,
    test,
    validation=None,
    *,
    name="arrays",
    num_classes=None,
    class_names=None,
    source="arrays",
):
    """A `Dataset` of in-memory arrays, each split a pair ``(x, y)``.

    Args:
        train, test: ``(x, y)``: ``x`` of shape ``(N, ...)`` (images
            ``(N, H, W, C)``, or features ``(N, D)``), ``y`` integer class
            ids ``(N,)``.
        validation: ``(x, y)`` held out to select epochs (a study's
            ``validation_fraction`` then carves nothing), or None.
        name: the set's name, in run keys, folder names and tables.
        num_classes: K (default: the largest label + 1).
        class_names: K names, or None.

    The model sees ``x`` as float32, unchanged: normalise it yourself, or in
    the model (e.g. a ``keras.layers.Rescaling`` layer).

    Example:
        >>> import numpy as np
        >>> x, y = np.random.rand(40, 6).astype("float32"), np.arange(40) % 4
        >>> ds = from_arrays((x[:30], y[:30]), (x[30:], y[30:]), name="toy")
        >>> ds.num_classes, ds.input_shape, ds.num_examples("test")
        (4, (6,), 10)
    """
    splits = {"train": _pair(train, "train"), "test": _pair(test, "test")}
    if validation is not None:
        splits["validation"] = _pair(validation, "validation")
    shape = splits["train"][0].shape[1:]
    for split, (x, _) in splits.items():
        if x.shape[1:] != shape:
            raise ValueError(
                f"`{split}`: examples of shape {x.shape[1:]}, but the training "
                f"examples have shape {shape}."
            )
    largest = max(int(y.max()) for _, y in splits.values())
    if num_classes is None:
        num_classes = largest + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"`num_classes` must be an int, got {num_classes!r}.")
    if num_classes < 2 or largest >= num_classes:
        raise ValueError(
            f"`num_classes`={num_classes} does not fit the labels (0..{largest}): "
            "at least 2 classes, and every label below it."
        )
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names for {num_classes} classes."
        )
    channels = shape[-1]
    as_given = {
        "mean": (0.0,) * channels,
        "std": (1.0 / 255.0,) * channels,
    }
    x_train, y_train = splits["train"]
    x_test, y_test = splits["test"]
    dataset = Dataset(
        name=str(name),
        num_classes=int(num_classes),
        input_shape=tuple(int(s) for s in shape),
        x_train=x_train,
        y_train=y_train.astype(np.int32),
        x_test=x_test,
        y_test=y_test.astype(np.int32),
        class_names=None if class_names is None else tuple(class_names),
        source=source,
        fingerprint=_fingerprint([a for pair in splits.values() for a in pair]),
        **as_given,
    )
    if validation is not None:
        x_val, y_val = splits["validation"]
        dataset.validation = dataclasses.replace(
            dataset,
            x_train=x_train[:0],
            y_train=dataset.y_train[:0],
            x_test=x_val,
            y_test=y_val.astype(np.int32),
            source=f"{source} (validation)",
        )
    return dataset


def load_npz(path, limit=None):
    """The data set of a ``.npz`` file with `NPZ_KEYS` (and ``x_val``/``y_val``).

    The set is named after the file (``my_data.npz``: ``my_data``); `limit`
    (int, or ``(n_train, n_test)``) keeps the first examples of the train and
    test splits.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(
            f"No data file {str(path)!r}: a .npz with {', '.join(NPZ_KEYS)} "
            "(np.savez(path, x_train=..., ...)).",
            [str(path)],
        )
    try:
        with np.load(path, allow_pickle=False) as arrays:
            found = {k: arrays[k] for k in arrays.files}
    except Exception as e:  # zipfile, pickle and format errors
        raise DatasetFormatError(
            f"{path}: not a readable .npz file ({type(e).__name__}: {e})."
        ) from e
    missing = [k for k in NPZ_KEYS if k not in found]
    if missing:
        raise DatasetFormatError(
            f"{path}: missing {', '.join(missing)}; it has "
            f"{', '.join(sorted(found)) or 'no arrays'} (needs {', '.join(NPZ_KEYS)}, "
            "and x_val, y_val to select epochs on)."
        )
    if ("x_val" in found) != ("y_val" in found):
        raise DatasetFormatError(f"{path}: x_val and y_val go together.")
    n_train, n_test = _limits(limit)
    train = _first(found["x_train"], found["y_train"], n_train)
    test = _first(found["x_test"], found["y_test"], n_test)
    validation = None
    if "x_val" in found:
        validation = (found["x_val"], found["y_val"])
    try:
        return from_arrays(train, test, validation, name=path.stem, source=str(path))
    except (TypeError, ValueError) as e:
        raise DatasetFormatError(f"{path}: {e}") from None
