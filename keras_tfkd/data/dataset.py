"""The `Dataset` type that `keras_tfkd.data.load` returns, and the data errors.

A `Dataset` is metadata plus either NumPy arrays (the small sets) or file
lists (the folder sets); split names are normalised here (``"val"`` and
``"validation"`` are the test split).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = ["Dataset", "DatasetFormatError", "DatasetNotFoundError"]

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
