"""File readers of the data sets, in NumPy: IDX, CIFAR binary, image folders.

User files are parsed, never unpickled: Fashion-MNIST comes as IDX files
(`read_idx`), CIFAR as the official *binary* version (`read_cifar_binary`),
Tiny-ImageNet and ImageNet as folders of image files (listed here, decoded by
the pipelines). A bad, truncated or corrupt file raises `DatasetFormatError`
naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from keras_tfkd.data.dataset import DatasetFormatError

__all__ = ["read_cifar_binary", "read_idx"]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed if it ends in ``.gz``.

    The magic number (two zero bytes, a type code, the number of dimensions)
    and the data size are checked; a bad, truncated or corrupt file raises
    :class:`DatasetFormatError` naming the file.

    Example:
        >>> x = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
        ... # doctest: +SKIP
        >>> x.shape, x.dtype  # doctest: +SKIP
        ((10000,), dtype('uint8'))
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetFormatError(
            f"{path}: cannot read this IDX file ({e}); it is corrupt or truncated. "
            "Delete it and provide the file again."
        ) from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetFormatError(
            f"{path}: not an IDX file (magic bytes {data[:4].hex() or 'missing'})"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetFormatError(f"{path}: IDX header is truncated or invalid")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[data[2]]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetFormatError(
            f"{path}: IDX header announces shape {dims} ({expected} bytes of data) "
            f"but the file holds {len(data) - header}; it is truncated or corrupt."
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    return array.reshape(dims).astype(dtype.newbyteorder("="))


def read_cifar_binary(
    path: str | os.PathLike, label_bytes: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of the official CIFAR *binary* version with NumPy.

    Each record is ``label_bytes`` label bytes (CIFAR-10: 1; CIFAR-100: 2,
    coarse then fine) followed by 3072 pixel bytes (the 1024 red, then green,
    then blue values of a 32x32 image, row-major).

    Returns:
        ``(images, labels)``: uint8 ``(N, 32, 32, 3)`` and uint8
        ``(N, label_bytes)``.

    Example:
        >>> x, y = read_cifar_binary("cifar-10-batches-bin/test_batch.bin")
        ... # doctest: +SKIP
        >>> x.shape, y[:, 0].max()  # doctest: +SKIP
        ((10000, 32, 32, 3), 9)
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + 3072
    if raw.size == 0 or raw.size % record:
        raise DatasetFormatError(
            f"{path}: {raw.size} bytes is not a whole number of {record}-byte "
            "CIFAR binary records; the file is truncated or not a CIFAR binary file."
        )
    raw = raw.reshape(-1, record)
    labels = raw[:, :label_bytes].copy()
    images = raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _list_images(folder: Path) -> list[str]:
    """The image files of ``folder`` (by extension), sorted, as path strings."""
    with os.scandir(folder) as it:
        names = [
            e.name
            for e in it
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return [str(folder / n) for n in sorted(names)]


def _class_folders(folder: Path) -> list[str]:
    """The names of the sub-folders of ``folder`` (one per class), sorted."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir())
