"""The loaders of the data sets, and `load` / `available`, their entry points.

`load` finds a data set (`keras_tfkd.data.sources` says where it looks) and
returns a `Dataset`: NumPy arrays (uint8 images in HWC layout, int32 labels)
for the small sets, file lists for the folder sets (Tiny-ImageNet, ImageNet).
Local copies are parsed with NumPy (`keras_tfkd.data.formats`: IDX and the
official CIFAR *binary* format; user files are never unpickled); a missing set
is downloaded with ``keras.datasets`` where Keras can, and otherwise fails
with one `DatasetNotFoundError` that lists every place it looked and how to
provide the data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from keras_tfkd.data.dataset import Dataset, DatasetFormatError, _first, _limits
from keras_tfkd.data.formats import (
    _class_folders,
    _list_images,
    read_cifar_binary,
    read_idx,
)
from keras_tfkd.data.sources import (
    CIFAR10_FILES,
    CIFAR100_FILES,
    FASHION_MNIST_FILES,
    TINY_IMAGENET_URL,
    _cifar_help,
    _download_allowed,
    _download_note,
    _fashion_help,
    _find_file,
    _imagenet_help,
    _keras_datasets_dir,
    _Search,
    _standard_dirs,
    _tiny_help,
)

__all__ = ["available", "load"]

CIFAR_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR_STD = (0.2673, 0.2564, 0.2762)
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
# Of the digits training split below, pixels scaled to [0, 1].
DIGITS_MEAN = (0.3063,)
DIGITS_STD = (0.3766,)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_NAMES = ("digits", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet")


def available() -> list[str]:
    """Names accepted by :func:`load`.

    Example:
        >>> "cifar100" in available()
        True
    """
    return list(_NAMES)


def load(name: str, data_dir: str | os.PathLike | None = None, **kw: Any) -> Dataset:
    """Load data set ``name`` (see :func:`available`).

    Args:
        name: ``digits``, ``fashion_mnist``, ``cifar10``, ``cifar100``,
            ``tiny_imagenet`` or ``imagenet`` (``-`` is accepted for ``_``),
            or the path of a ``.npz`` file of your own arrays
            (`keras_tfkd.data.load_npz`).
        data_dir: a folder to search first (`keras_tfkd.data.sources` lists
            the full search order).
        **kw: ``limit`` (int, or ``(n_train, n_test)``) keeps the first N
            examples of each split of in-memory sets, or N evenly spaced files
            (every class represented) of folder sets -- for quick runs;
            ``download`` (bool) allows/forbids a download (default: allowed
            unless ``$KERAS_TFKD_OFFLINE`` is set; Tiny-ImageNet downloads only
            with ``download=True``); ImageNet also takes ``image_size`` (224)
            and ``resize_size`` (256).

    Raises:
        ValueError: unknown name.
        DatasetNotFoundError: the data set is nowhere to be found.
        DatasetFormatError: a file was found but is corrupt or truncated.

    Example:
        >>> ds = load("digits")
        >>> ds.x_train.shape, ds.x_test.shape
        ((1347, 8, 8, 1), (450, 8, 8, 1))
        >>> fm = load("fashion_mnist", limit=1000)  # doctest: +SKIP
    """
    if str(name).lower().endswith(".npz"):
        from keras_tfkd.data.arrays import load_npz

        unknown = sorted(set(kw) - {"limit"})
        if unknown or data_dir is not None:
            raise TypeError(
                f"load({str(name)!r}) of a .npz file takes only `limit`, got "
                f"{', '.join(unknown or ['data_dir'])}."
            )
        return load_npz(name, **kw)
    key = str(name).lower().replace("-", "_")
    if key not in _NAMES:
        raise ValueError(
            f"Unknown data set {name!r}; valid names: {', '.join(available())}"
        )
    loader = {
        "digits": _load_digits,
        "fashion_mnist": _load_fashion_mnist,
        "cifar10": _load_cifar10,
        "cifar100": _load_cifar100,
        "tiny_imagenet": _load_tiny_imagenet,
        "imagenet": _load_imagenet,
    }[key]
    allowed = {"limit", "download"}
    if key == "imagenet":
        allowed |= {"image_size", "resize_size"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise TypeError(
            f"load({key!r}) got unexpected keyword argument(s) {', '.join(unknown)}; "
            f"accepted: data_dir, {', '.join(sorted(allowed))}"
        )
    return loader(data_dir, **kw)


def _spread(files: np.ndarray, y: np.ndarray, n: int | None):
    """``n`` evenly spaced entries, so that every class of a sorted list shows."""
    if n is None or n >= len(y):
        return files, y
    keep = np.unique(np.linspace(0, len(y) - 1, max(n, 0)).round().astype(int))
    return files[keep], y[keep]


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Deterministic per-class split (legacy RandomState: stable across NumPy)."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _load_digits(data_dir=None, limit=None, download=None) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values 0..16 -> uint8 0..255, like every other set here.
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int32)
    train, test = _stratified_split(y, 0.25, seed=0)
    n_train, n_test = _limits(limit)
    x_train, y_train = _first(x[train], y[train], n_train)
    x_test, y_test = _first(x[test], y[test], n_test)
    return Dataset(
        name="digits",
        num_classes=10,
        input_shape=(8, 8, 1),
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=tuple(str(i) for i in range(10)),
        source="sklearn.datasets.load_digits (75/25 stratified split, seed 0)",
    )


def _load_fashion_mnist(data_dir=None, limit=None, download=None) -> Dataset:
    search = _Search("fashion_mnist")
    entries = _standard_dirs(data_dir, "fashion-mnist", env_bare=True, system=True)
    found = None
    for _, folder in search.candidates(entries):
        paths = [_find_file(folder, f) for f in FASHION_MNIST_FILES]
        missing = [f for f, p in zip(FASHION_MNIST_FILES, paths) if p is None]
        if not missing:
            found = (folder, paths)
            break
        search.note(str(folder), "missing " + ", ".join(missing))

    if found is not None:
        folder, (xtr, ytr, xte, yte) = found
        x_train, y_train = _read_idx_pair(xtr, ytr)
        x_test, y_test = _read_idx_pair(xte, yte)
        source = str(folder)
    else:
        if not _download_allowed(download):
            search.note(
                "keras.datasets.fashion_mnist.load_data()", _download_note(download)
            )
            raise search.error(_fashion_help())
        import keras

        try:
            (x_train, y_train), (x_test, y_test) = (
                keras.datasets.fashion_mnist.load_data()
            )
        except Exception as e:  # network errors come in many types
            search.note("keras.datasets.fashion_mnist.load_data()", f"failed: {e}")
            raise search.error(_fashion_help()) from e
        source = "keras.datasets.fashion_mnist"
    n_train, n_test = _limits(limit)
    x_train, y_train = _first(x_train, y_train, n_train)
    x_test, y_test = _first(x_test, y_test, n_test)
    return Dataset(
        name="fashion_mnist",
        num_classes=10,
        input_shape=(28, 28, 1),
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        x_train=np.ascontiguousarray(x_train, dtype=np.uint8)[..., None],
        y_train=np.asarray(y_train, dtype=np.int32).reshape(-1),
        x_test=np.ascontiguousarray(x_test, dtype=np.uint8)[..., None],
        y_test=np.asarray(y_test, dtype=np.int32).reshape(-1),
        class_names=FASHION_MNIST_CLASSES,
        source=source,
    )


def _read_idx_pair(images_path: Path, labels_path: Path):
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetFormatError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), "
            f"found {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetFormatError(
            f"{labels_path}: expected {len(images)} labels to match {images_path}, "
            f"found shape {labels.shape}"
        )
    if labels.size and labels.max() >= 10:
        raise DatasetFormatError(f"{labels_path}: labels outside 0..9")
    return images, labels


def _load_cifar10(data_dir=None, limit=None, download=None) -> Dataset:
    return _load_cifar(
        data_dir,
        limit,
        download,
        name="cifar10",
        folder="cifar-10-batches-bin",
        files=CIFAR10_FILES,
        label_bytes=1,
        num_classes=10,
    )


def _load_cifar100(data_dir=None, limit=None, download=None) -> Dataset:
    return _load_cifar(
        data_dir,
        limit,
        download,
        name="cifar100",
        folder="cifar-100-binary",
        files=CIFAR100_FILES,
        label_bytes=2,
        num_classes=100,
    )


def _load_cifar(
    data_dir, limit, download, *, name, folder, files, label_bytes, num_classes
):
    search = _Search(name)
    entries = _standard_dirs(data_dir, folder, env_bare=False)
    found = None
    for _, path in search.candidates(entries):
        missing = [f for f in files if not (path / f).is_file()]
        if not missing:
            found = path
            break
        search.note(str(path), "missing " + ", ".join(missing))

    class_names = CIFAR10_CLASSES if num_classes == 10 else None
    if found is not None:
        parts = [read_cifar_binary(found / f, label_bytes) for f in files]
        train_parts, (x_test, y_test) = parts[:-1], parts[-1]
        x_train = np.concatenate([p[0] for p in train_parts])
        y_train = np.concatenate([p[1] for p in train_parts])
        y_train, y_test = y_train[:, -1], y_test[:, -1]  # CIFAR-100: fine label
        for f, y in ((files[0], y_train), (files[-1], y_test)):
            if y.max() >= num_classes:
                raise DatasetFormatError(
                    f"{found / f}: labels outside 0..{num_classes - 1}"
                )
        if num_classes == 100 and (found / "fine_label_names.txt").is_file():
            text = (found / "fine_label_names.txt").read_text().split()
            class_names = tuple(text) if len(text) == 100 else None
        source = str(found)
    else:
        loader = f"keras.datasets.{name}.load_data()"
        if not _download_allowed(download):
            search.note(loader, _download_note(download))
            raise search.error(_cifar_help(name, folder, files))
        import keras

        module = getattr(keras.datasets, name)
        try:
            if num_classes == 100:
                data = module.load_data(label_mode="fine")
            else:
                data = module.load_data()
        except Exception as e:  # network errors come in many types
            search.note(loader, f"failed: {e}")
            raise search.error(_cifar_help(name, folder, files)) from e
        (x_train, y_train), (x_test, y_test) = data
        if x_train.shape[-1] != 3:  # image_data_format() == "channels_first"
            x_train = x_train.transpose(0, 2, 3, 1)
            x_test = x_test.transpose(0, 2, 3, 1)
        source = f"keras.datasets.{name}"
    n_train, n_test = _limits(limit)
    x_train, y_train = _first(x_train, y_train, n_train)
    x_test, y_test = _first(x_test, y_test, n_test)
    return Dataset(
        name=name,
        num_classes=num_classes,
        input_shape=(32, 32, 3),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        x_train=np.ascontiguousarray(x_train, dtype=np.uint8),
        y_train=np.asarray(y_train, dtype=np.int32).reshape(-1),
        x_test=np.ascontiguousarray(x_test, dtype=np.uint8),
        y_test=np.asarray(y_test, dtype=np.int32).reshape(-1),
        class_names=class_names,
        source=source,
    )


def _tiny_layout_problem(root: Path) -> str | None:
    missing = [p for p in ("wnids.txt", "train", "val") if not (root / p).exists()]
    return ("missing " + ", ".join(missing)) if missing else None


def _load_tiny_imagenet(data_dir=None, limit=None, download=None) -> Dataset:
    search = _Search("tiny_imagenet")
    folder = "tiny-imagenet-200"
    entries = _standard_dirs(data_dir, folder, env_bare=True)
    entries.append(("Keras download", _keras_datasets_dir() / folder / folder))
    root = None
    for _, path in search.candidates(entries):
        problem = _tiny_layout_problem(path)
        if problem is None:
            root = path
            break
        search.note(str(path), problem)
    if root is None:
        if download is True:
            import keras

            try:
                path = Path(
                    keras.utils.get_file(
                        fname=folder, origin=TINY_IMAGENET_URL, extract=True
                    )
                )
            except Exception as e:  # network errors come in many types
                search.note(TINY_IMAGENET_URL, f"download failed: {e}")
                raise search.error(_tiny_help()) from e
            root = path / folder if (path / folder).is_dir() else path
            if _tiny_layout_problem(root) is not None:
                search.note(str(root), "downloaded archive has an unexpected layout")
                raise search.error(_tiny_help())
        else:
            search.note(TINY_IMAGENET_URL, "not downloaded (pass download=True)")
            raise search.error(_tiny_help())

    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    classes = sorted(wnids)  # torchvision ImageFolder order
    index = {w: i for i, w in enumerate(classes)}

    train_files, train_labels = [], []
    for wnid in classes:
        class_dir = root / "train" / wnid
        image_dir = (
            class_dir / "images" if (class_dir / "images").is_dir() else class_dir
        )
        if not image_dir.is_dir():
            raise DatasetFormatError(f"{class_dir}: class folder of wnids.txt missing")
        names = _list_images(image_dir)
        train_files += names
        train_labels += [index[wnid]] * len(names)

    test_files, test_labels = [], []
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        for n, line in enumerate(annotations.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or fields[1] not in index:
                raise DatasetFormatError(
                    f"{annotations}, line {n}: expected '<file> <wnid> ...' with a "
                    f"wnid from wnids.txt, got {line!r}"
                )
            test_files.append(str(root / "val" / "images" / fields[0]))
            test_labels.append(index[fields[1]])
    else:  # val/ re-arranged into class folders
        for wnid in classes:
            class_dir = root / "val" / wnid
            if (class_dir / "images").is_dir():
                class_dir = class_dir / "images"
            if class_dir.is_dir():
                names = _list_images(class_dir)
                test_files += names
                test_labels += [index[wnid]] * len(names)
    if not train_files or not test_files:
        raise DatasetFormatError(
            f"{root}: no images found in train/<wnid>/images/ or in val/ "
            "(val/images/ + val/val_annotations.txt)"
        )
    n_train, n_test = _limits(limit)
    xtr, ytr = _spread(np.array(train_files), np.array(train_labels, np.int32), n_train)
    xte, yte = _spread(np.array(test_files), np.array(test_labels, np.int32), n_test)
    return Dataset(
        name="tiny_imagenet",
        num_classes=len(classes),
        input_shape=(64, 64, 3),
        mean=TINY_IMAGENET_MEAN,
        std=TINY_IMAGENET_STD,
        y_train=ytr,
        y_test=yte,
        train_files=xtr,
        test_files=xte,
        class_names=tuple(classes),
        source=str(root),
    )


def _load_imagenet(
    data_dir=None, limit=None, download=None, image_size=224, resize_size=256
) -> Dataset:
    search = _Search("imagenet")
    entries = _standard_dirs(data_dir, "imagenet", env_bare=False)
    root = None
    for _, path in search.candidates(entries):
        missing = [s for s in ("train", "val") if not (path / s).is_dir()]
        if missing:
            search.note(str(path), "missing " + ", ".join(f"{s}/" for s in missing))
            continue
        if not _class_folders(path / "train"):
            search.note(str(path), "train/ has no class folders")
            continue
        root = path
        break
    if root is None:
        search.note("download", "ImageNet is never downloaded (licence)")
        raise search.error(_imagenet_help())
    classes = _class_folders(root / "train")
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in _class_folders(root / "val") if c not in index]
    if unknown:
        raise DatasetFormatError(
            f"{root / 'val'}: class folders not in train/: {', '.join(unknown[:5])}"
        )
    split_files = {}
    for split in ("train", "val"):
        files, labels = [], []
        for c in classes:
            if (root / split / c).is_dir():
                names = _list_images(root / split / c)
                files += names
                labels += [index[c]] * len(names)
        if not files:
            raise DatasetFormatError(f"{root / split}: no images in class folders")
        split_files[split] = (np.array(files), np.array(labels, np.int32))
    n_train, n_test = _limits(limit)
    xtr, ytr = _spread(*split_files["train"], n_train)
    xte, yte = _spread(*split_files["val"], n_test)
    return Dataset(
        name="imagenet",
        num_classes=len(classes),
        input_shape=(int(image_size), int(image_size), 3),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        y_train=ytr,
        y_test=yte,
        train_files=xtr,
        test_files=xte,
        class_names=tuple(classes),
        source=str(root),
        eval_resize=int(resize_size),
    )
