"""The `Dataset` type that `keras_tfkd.data.load` returns, and the data errors.

A `Dataset` is metadata plus either NumPy arrays (the small sets) or file
lists (the folder sets); split names are normalised here (``"val"`` and
``"validation"`` are the test split).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = ["Dataset", "DatasetFormatError", "DatasetNotFoundError", "holdout"]

_SPLITS = {"train": "train", "test": "test", "val": "test", "validation": "test"}


class DatasetNotFoundError(FileNotFoundError):
    """A data set was not found locally and could not be downloaded.

    The message lists every place searched and how to provide the data;
    ``searched`` holds the same places as a list of strings.
    """

    def __init__(self, message: str, searched: Sequence[str] = ()):
        super().__init__(message)
        self.searched = list(searched)

    def __str__(self) -> str:
        return self.args[0]


class DatasetFormatError(ValueError):
    """A data file exists but is corrupt, truncated or not in the expected format."""


@dataclasses.dataclass(repr=False)
class Dataset:
    """A loaded data set: metadata plus arrays or file lists.

    In-memory sets (digits, Fashion-MNIST, CIFAR) fill ``x_train``/``x_test``
    (uint8, ``(N, H, W, C)``); folder sets (Tiny-ImageNet, ImageNet) fill
    ``train_files``/``test_files`` (arrays of paths) and are read lazily by
    `keras_tfkd.data.pipeline`. Labels are always int32 arrays. ``mean``/``std``
    are per-channel statistics of images scaled to [0, 1].

    Example:
        >>> from keras_tfkd.data import load
        >>> ds = load("digits")
        >>> ds.input_shape, ds.num_classes, ds.x_train.dtype
        ((8, 8, 1), 10, dtype('uint8'))
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    train_files: np.ndarray | None = None
    test_files: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    source: str = ""
    #: ImageNet evaluation: resize the short side to this, then centre-crop.
    eval_resize: int | None = None
    #: Examples held out of the training split for model selection (a
    #: `Dataset` whose test split they are), from `holdout`; None: none.
    validation: Dataset | None = None
    #: A digest of a user's arrays (`keras_tfkd.data.from_arrays`), part of
    #: every run's key; None for the named sets (their name and sizes are).
    fingerprint: str | None = None

    @property
    def in_memory(self) -> bool:
        """True when the images are NumPy arrays, False for file lists."""
        return self.x_train is not None

    def labels(self, split: str) -> np.ndarray:
        """The int32 labels of ``split`` (``"train"`` or ``"test"``)."""
        return self.y_train if _split(split) == "train" else self.y_test

    def images(self, split: str) -> np.ndarray:
        """The uint8 images (in-memory sets) or file paths (folder sets)."""
        train = _split(split) == "train"
        if self.in_memory:
            return self.x_train if train else self.x_test
        return self.train_files if train else self.test_files

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split``."""
        return len(self.labels(split))

    def __repr__(self) -> str:
        kind = "arrays" if self.in_memory else "files"
        return (
            f"Dataset(name={self.name!r}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape}, train={self.num_examples('train')}, "
            f"test={self.num_examples('test')}, {kind}, source={self.source!r})"
        )


def _split(split: str) -> str:
    """``"train"`` or ``"test"`` for a split name (``"val"`` is the test split)."""
    try:
        return _SPLITS[str(split).lower()]
    except KeyError:
        raise ValueError(
            f"Unknown split {split!r}; use 'train' or 'test' ('val' = 'test')"
        ) from None


def _limits(limit) -> tuple[int | None, int | None]:
    """``(n_train, n_test)`` of the `limit` argument of a loader (None: all)."""
    if limit is None:
        return None, None
    if isinstance(limit, (int, np.integer)):
        return int(limit), int(limit)
    n_train, n_test = limit
    return (
        None if n_train is None else int(n_train),
        None if n_test is None else int(n_test),
    )


def _first(x: np.ndarray, y: np.ndarray, n: int | None):
    """The first `n` examples of ``(x, y)`` (all of them when `n` is None)."""
    return (x, y) if n is None else (x[:n], y[:n])


def holdout(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """`dataset` with a stratified, seeded `fraction` of its training split held out.

    Returns a copy whose training split lacks the held-out examples and whose
    ``validation`` is a `Dataset` with them as its test split (so
    ``pipeline(ds.validation, "test", ...)`` reads them, normalised with the
    statistics of the full training split). In each class, ``round(fraction
    * n_c)`` examples are drawn with ``numpy.random.default_rng(seed)`` (at
    least one of any class with two or more), so the class balance is kept
    and the split is the same on every machine. The test split is untouched.

    >>> from keras_tfkd.data import load
    >>> ds = holdout(load("digits"), 0.1)
    >>> ds.num_examples("train"), ds.validation.num_examples("test")
    (1211, 136)
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"`fraction` must be a number, got fraction={fraction!r}.")
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"`fraction` must be in (0, 1) (the share of the training split held "
            f"out for validation), got fraction={fraction!r}."
        )
    if dataset.validation is not None:
        raise ValueError(f"{dataset.name!r} already holds out a validation split.")
    labels = dataset.labels("train")
    rng = np.random.default_rng(int(seed))
    held = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = int(round(fraction * len(members)))
        if len(members) >= 2:
            take = min(max(take, 1), len(members) - 1)
        else:
            take = 0
        held.append(rng.permutation(members)[:take])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=int)
    keep = np.setdiff1d(np.arange(len(labels)), held)
    images = dataset.images("train")
    if len(keep) == 0 or len(held) == 0:
        raise ValueError(
            f"`fraction`={fraction!r} of {len(labels)} training examples leaves "
            "no training or no validation example."
        )
    source = f"{fraction:g} of the training split held out (seed {int(seed)})"
    train_field, test_field = (
        ("x_train", "x_test") if dataset.in_memory else ("train_files", "test_files")
    )
    validation = dataclasses.replace(
        dataset,
        **{train_field: images[:0], test_field: images[held]},
        y_train=labels[:0],
        y_test=labels[held],
        source=source,
    )
    train = {train_field: images[keep], "y_train": labels[keep]}
    return dataclasses.replace(dataset, **train, validation=validation)
