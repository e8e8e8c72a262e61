"""Datasets and augmentation pipelines for the Tf-KD experiments.

Two steps, on every Keras backend:

1. :func:`load` finds a data set and returns a :class:`Dataset`: NumPy arrays
   (uint8 images in HWC layout, int32 labels) for the small sets, file lists for
   the folder sets (Tiny-ImageNet, ImageNet). Local copies are parsed with NumPy
   (IDX and the official CIFAR *binary* format; user files are never unpickled);
   a missing set is downloaded with ``keras.datasets`` where Keras can, and
   otherwise fails with one :class:`DatasetNotFoundError` that lists every
   place it looked and how to provide the data.
2. :func:`pipeline` turns a split into batches of ``(float32 normalised
   images, int32 labels)`` with the reference augmentation, for ``model.fit``
   on TensorFlow, JAX and PyTorch alike. On JAX and PyTorch it is a
   ``keras.utils.PyDataset`` built on NumPy (`keras_tfkd.pydataset`), so
   TensorFlow is not needed; on the TensorFlow backend it is a ``tf.data``
   pipeline (`keras_tfkd._tfdata`). ``engine=`` picks one explicitly.

Where data is searched, in order (``$KERAS_TFKD_DATA`` is an optional root
folder for all sets; ``$KERAS_TFKD_OFFLINE=1`` or ``download=False`` forbids
downloads):

==============  ===========================================================
set             places
==============  ===========================================================
digits          scikit-learn's bundled copy (always available, no download)
fashion_mnist   ``data_dir``, ``data_dir/fashion-mnist``,
                ``$KERAS_TFKD_DATA/fashion-mnist``, ``$KERAS_TFKD_DATA``,
                ``/usr/share/datasets/fashion-mnist`` (Debian package
                ``dataset-fashion-mnist``), ``~/.keras/datasets/fashion-mnist``,
                then ``keras.datasets.fashion_mnist.load_data()``
cifar10         ``data_dir``, ``data_dir/cifar-10-batches-bin``,
                ``$KERAS_TFKD_DATA/cifar-10-batches-bin``,
                ``~/.keras/datasets/cifar-10-batches-bin``, then
                ``keras.datasets.cifar10.load_data()``
cifar100        the same with ``cifar-100-binary`` (fine labels)
tiny_imagenet   ``data_dir``, ``data_dir/tiny-imagenet-200``,
                ``$KERAS_TFKD_DATA/tiny-imagenet-200``, ``$KERAS_TFKD_DATA``,
                ``~/.keras/datasets/tiny-imagenet-200``; ``download=True``
                fetches the official zip (about 240 MB)
imagenet        ``data_dir``, ``data_dir/imagenet``,
                ``$KERAS_TFKD_DATA/imagenet``, ``~/.keras/datasets/imagenet``
                (``train/<class>/*``, ``val/<class>/*``; never downloaded)
==============  ===========================================================

Reference augmentation (``augment=None`` on the train split; see
:data:`AUGMENTATIONS`):

- CIFAR-10/100 (``"cifar"``): 4-pixel zero padding + random 32x32 crop,
  horizontal flip, random rotation in [-15, 15] degrees (nearest neighbour,
  black fill), as the reference ``RandomCrop(32, 4)``, ``RandomHorizontalFlip``,
  ``RandomRotation(15)``; then normalisation with the CIFAR-100 mean/std (used
  for CIFAR-10 too, as in the reference code).
- Tiny-ImageNet (``"tiny_imagenet"``): rotation in [-20, 20] degrees, flip.
- digits / Fashion-MNIST (``"shift"``): a random shift by up to 1 pixel
  (digits, 8x8) or 2 pixels (Fashion-MNIST, 28x28) with zero fill, the same
  pad-and-crop as CIFAR. No flips (they change digits, and every shoe in
  Fashion-MNIST points the same way).
- ImageNet (``"imagenet"``): random-resized crop to 224 (area 8-100%, aspect
  3/4-4/3) + flip; evaluation resizes the short side to 256 and centre-crops 224.

Randomness is seeded: a pipeline with a fixed ``seed`` yields the same
batches every time it is built, and fresh augmentation on each pass.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_tfkd.validation import check_sample_weight

__all__ = [
    "AUGMENTATIONS",
    "Dataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "augmentation_is_random",
    "available",
    "load",
    "num_batches",
    "pipeline",
    "pipeline_throughput",
    "read_cifar_binary",
    "read_idx",
    "reference_augmentation",
]

#: Environment variable naming a root folder that holds data sets.
ENV_DATA = "KERAS_TFKD_DATA"
#: Environment variable that, set to 1/true/yes, forbids downloads.
ENV_OFFLINE = "KERAS_TFKD_OFFLINE"
#: System folders searched for Debian-packaged data sets (``<dir>/<set>``).
SYSTEM_DATA_DIRS: tuple[str, ...] = ("/usr/share/datasets",)

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

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
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
CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR100_FILES = ("train.bin", "test.bin")
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")

_NAMES = ("digits", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet")
_SPLITS = {"train": "train", "test": "test", "val": "test", "validation": "test"}

#: Augmentation policies understood by :func:`pipeline`.
AUGMENTATIONS = ("none", "shift", "cifar", "tiny_imagenet", "imagenet")
_REFERENCE_AUGMENTATION = {
    "digits": "shift",
    "fashion_mnist": "shift",
    "cifar10": "cifar",
    "cifar100": "cifar",
    "tiny_imagenet": "tiny_imagenet",
    "imagenet": "imagenet",
}


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
    :func:`pipeline`. Labels are always int32 arrays. ``mean``/``std`` are
    per-channel statistics of images scaled to [0, 1].

    Example:
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


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


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
            ``tiny_imagenet`` or ``imagenet`` (``-`` is accepted for ``_``).
        data_dir: a folder to search first (see the module docstring for the
            full search order).
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


def reference_augmentation(dataset: Dataset | str) -> str:
    """The name of the reference augmentation policy of a data set.

    Example:
        >>> reference_augmentation("cifar10")
        'cifar'
    """
    name = dataset.name if isinstance(dataset, Dataset) else str(dataset)
    return _REFERENCE_AUGMENTATION[name.lower().replace("-", "_")]


def augmentation_is_random(
    dataset: Dataset | str, split: str = "train", augment: bool | str | None = None
) -> bool:
    """Whether :func:`pipeline` with these arguments augments at random.

    Use it to refuse caching model outputs (e.g. teacher logits) on data that
    changes every epoch. ImageNet's evaluation resize + centre crop is
    deterministic and does not count as random.

    Example:
        >>> augmentation_is_random("cifar100", "train")
        True
        >>> augmentation_is_random("cifar100", "test")
        False
        >>> augmentation_is_random("cifar100", "train", augment=False)
        False
    """
    return _resolve_augmentation(dataset, _split(split), augment) != "none"


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches in one pass of `pipeline` (and so train steps per epoch).

    ``drop_remainder`` drops a last, smaller batch, unless that would leave
    none (a batch larger than the data still trains one partial batch).

    Example:
        >>> num_batches(1347, 64, True), num_batches(1347, 64, False)
        (21, 22)
        >>> num_batches(10, 64, True)
        1
    """
    if drop_remainder and num_examples >= batch_size:
        return num_examples // batch_size
    return max(1, math.ceil(num_examples / batch_size))


#: Values of `pipeline`'s ``engine``.
ENGINES = ("auto", "numpy", "tf.data")


def pipeline_engine(engine: str = "auto") -> str:
    """The engine that `pipeline` runs for ``engine`` on this Keras backend.

    ``"auto"`` is ``"tf.data"`` on the TensorFlow backend (TensorFlow is then
    installed and ``fit`` consumes a ``tf.data.Dataset`` natively) and
    ``"numpy"`` on JAX and PyTorch, which then need no TensorFlow at all.

    Example:
        >>> pipeline_engine("numpy")
        'numpy'
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}; got {engine!r}")
    if engine != "auto":
        return engine
    import keras

    return "tf.data" if keras.backend.backend() == "tensorflow" else "numpy"


def pipeline(
    dataset: Dataset | str,
    split: str,
    batch_size: int,
    *,
    augment: bool | str | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    drop_remainder: bool = False,
    repeat: bool = False,
    teacher_logits: Any = None,
    sample_weight: Any = None,
    engine: str = "auto",
    workers: int | None = None,
):
    """Batches of ``(x, y)`` for ``model.fit``, on every Keras backend.

    ``x`` is float32 ``(B, H, W, C)``, scaled to [0, 1] then normalised with
    the data set's per-channel ``mean``/``std``; ``y`` is int32 ``(B,)``. It
    works as input to ``fit``/``evaluate``/``predict`` on every backend.

    Which path runs (``engine``, see `pipeline_engine`):

    * ``"numpy"`` (the default on JAX and PyTorch): a
      `keras_tfkd.pydataset.BatchPipeline`, a ``keras.utils.PyDataset`` built
      on NumPy (and PIL for image files); no TensorFlow needed;
    * ``"tf.data"`` (the default on TensorFlow): a prefetched
      ``tf.data.Dataset`` with the same augmentations as TensorFlow ops.

    Both draw the augmentation from the same distributions (the reference
    code's: `keras_tfkd.augment` lists them) and are deterministic for a fixed
    ``seed``; the random streams differ, so the two engines give different
    (equally distributed) batches for one seed. ``benchmarks/run.py`` measures
    both against training step rates.

    Args:
        dataset: a :class:`Dataset` or a name for :func:`load`.
        split: ``"train"`` or ``"test"`` (``"val"`` is an alias of test).
        batch_size: examples per batch.
        augment: ``None``: the reference augmentation of the data set for the
            train split, none for test; ``True``: the reference augmentation;
            ``False``: none; or a policy name from :data:`AUGMENTATIONS`.
        shuffle: shuffle the examples each pass (default: train split only).
            The whole split is shuffled (a permutation of indices).
        seed: fixes shuffling and augmentation: the same seed gives the same
            batches every time the pipeline is built; each pass still differs.
            An integer >= 0.
        drop_remainder: drop a last, smaller batch.
        repeat: repeat forever (then pass ``steps_per_epoch`` to ``fit``).
        teacher_logits: cached teacher logits of this split in order (a
            `keras_tfkd.teachers.CachedTeacher` or an ``(N, K)`` array, e.g.
            from ``CachedTeacher.from_model(model, dataset, split,
            augment=False)``). Each batch is then ``({"inputs": x,
            "teacher_logits": z}, y)``, the rows of ``z`` following their
            images through the shuffle. A random augmentation is refused
            (ValueError): the logits of one view do not describe another.
        sample_weight: an ``(N,)`` array of per-example weights of this split;
            each batch then ends with its weights, ``(x, y, w)``, which ``fit``
            applies to the loss (both terms of a Distiller's loss).
        engine: ``"auto"``, ``"numpy"`` or ``"tf.data"`` (see above).
        workers: threads of the NumPy engine that read batches ahead (default:
            1 for in-memory sets, the CPU count up to 8 for image folders).
            ``tf.data`` tunes its own parallelism and refuses this argument.

    On the JAX and PyTorch backends with ``engine="tf.data"`` TensorFlow is
    told not to use the GPUs (``tf.config.set_visible_devices([], "GPU")``,
    if TF has not touched them yet), so the input pipeline does not take the
    model's GPU memory.

    Example:
        >>> ds = load("digits")
        >>> train = pipeline(ds, "train", 64, seed=0, engine="numpy")
        >>> x, y = train[0]
        >>> tuple(x.shape), x.dtype.name, y.dtype.name
        ((64, 8, 8, 1), 'float32', 'int32')
        >>> # model.fit(train, validation_data=pipeline(ds, "test", 256), epochs=5)
    """
    engine = pipeline_engine(engine)
    if isinstance(dataset, str):
        dataset = load(dataset)
    split = _split(split)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    if seed is not None and (isinstance(seed, bool) or int(seed) != seed or seed < 0):
        raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
    policy = _resolve_augmentation(dataset, split, augment)
    if shuffle is None:
        shuffle = split == "train"
    n = dataset.num_examples(split)
    if n == 0:
        raise ValueError(f"The {split} split of {dataset.name!r} is empty")
    kwargs = dict(
        policy=policy,
        shuffle=bool(shuffle),
        seed=seed,
        drop_remainder=bool(drop_remainder),
        repeat=bool(repeat),
        labels=np.asarray(dataset.labels(split), dtype=np.int32),
        teacher_logits=_teacher_logits(dataset, split, policy, teacher_logits),
        sample_weight=_sample_weight(dataset, split, sample_weight),
    )
    if engine == "tf.data":
        if workers is not None:
            raise ValueError(
                f"workers={workers!r} is for engine='numpy'; tf.data tunes its "
                "own parallelism (leave workers unset)."
            )
        from keras_tfkd import _tfdata

        return _tfdata.build(dataset, split, batch_size, **kwargs)
    from keras_tfkd.pydataset import BatchPipeline

    if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return BatchPipeline(dataset, split, batch_size, workers=workers, **kwargs)


def _teacher_logits(dataset, split, policy, teacher_logits):
    """Cached logits as a float32 ``(N, K)`` array, checked; or None."""
    if teacher_logits is None:
        return None
    if policy != "none":
        raise ValueError(
            f"teacher_logits cannot be combined with the random {policy!r} "
            f"augmentation of the {split!r} split of {dataset.name!r}: cached "
            "logits describe the un-augmented images, not each epoch's new "
            "views. Pass augment=False, or distil from the live teacher model."
        )
    logits = getattr(teacher_logits, "logits", teacher_logits)
    if logits is None:
        raise ValueError("teacher_logits holds no logits yet (a bare CachedTeacher).")
    logits = np.asarray(logits, dtype=np.float32)
    n = dataset.num_examples(split)
    if logits.ndim != 2 or len(logits) != n:
        raise ValueError(
            f"teacher_logits must have shape (N, K) with N = {n}, the size of the "
            f"{split!r} split of {dataset.name!r}; got shape {logits.shape}."
        )
    return logits


def _sample_weight(dataset, split, sample_weight):
    """Per-example weights as a float32 ``(N,)`` array, checked; or None."""
    if sample_weight is None:
        return None
    weights = np.asarray(sample_weight, dtype=np.float32)
    n = dataset.num_examples(split)
    if weights.shape != (n,):
        raise ValueError(
            f"sample_weight must have shape (N,) with N = {n}, the size of the "
            f"{split!r} split of {dataset.name!r}; got shape {weights.shape}."
        )
    check_sample_weight(weights)
    return weights


def pipeline_throughput(
    dataset: Dataset | str,
    split: str = "train",
    batch_size: int = 128,
    steps: int = 50,
    clock=time.perf_counter,
    **kwargs: Any,
) -> float:
    """Images per second of :func:`pipeline` alone (no model), for benchmarks.

    Batches are read as ``fit`` reads them: the next element of a ``tf.data``
    iterator, or ``pipeline[i]`` of the NumPy engine's PyDataset (one thread
    for arrays). One warm-up batch is taken first; then ``steps`` batches are
    timed with ``clock`` (``time.process_time`` counts the CPU time of every
    thread, tf.data's included). Extra keyword arguments go to
    :func:`pipeline` (``repeat=True`` is forced), e.g. ``engine="numpy"``.

    Example:
        >>> rate = pipeline_throughput("digits", "train", 64, steps=5)
        >>> rate > 0
        True
    """
    if isinstance(dataset, str):
        dataset = load(dataset)
    kwargs["repeat"] = True
    stream = pipeline(dataset, split, batch_size, **kwargs)
    if hasattr(stream, "element_spec"):  # tf.data
        iterator = iter(stream)

        def take(_):
            return next(iterator)

    else:
        take = stream.__getitem__
    take(0)
    count = 0
    start = clock()
    for i in range(1, int(steps) + 1):
        count += int(take(i)[0].shape[0])
    return count / max(clock() - start, 1e-9)


# --------------------------------------------------------------------------
# File formats
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# Searching
# --------------------------------------------------------------------------


class _Search:
    """Records where a data set was looked for, to build one clear error."""

    def __init__(self, name: str):
        self.name = name
        self.looked: list[str] = []
        self._seen: set[str] = set()

    def candidates(self, entries):
        """Yield existing, not yet seen folders; note the others."""
        for label, path in entries:
            if path is None:
                self.looked.append(f"{label}: {ENV_DATA} is not set")
                continue
            path = Path(path).expanduser()
            key = str(path.resolve()) if path.exists() else str(path)
            if key in self._seen:
                continue
            self._seen.add(key)
            if not path.is_dir():
                self.looked.append(f"{path} ({label}): no such folder")
                continue
            yield label, path

    def note(self, where: str, why: str) -> None:
        self.looked.append(f"{where}: {why}")

    def error(self, how: Sequence[str]) -> DatasetNotFoundError:
        lines = [f"Data set {self.name!r} not found. Looked in:"]
        lines += [f"  - {item}" for item in self.looked]
        lines.append("To provide it:")
        lines += [f"  - {item}" for item in how]
        return DatasetNotFoundError("\n".join(lines), self.looked)


def _env_root() -> Path | None:
    value = os.environ.get(ENV_DATA)
    return Path(value).expanduser() if value else None


def _keras_datasets_dir() -> Path:
    home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    return Path(home) / "datasets"


def _standard_dirs(data_dir, folder: str, *, env_bare: bool, system: bool = False):
    root = _env_root()
    entries = []
    if data_dir is not None:
        entries += [
            ("data_dir argument", Path(data_dir)),
            ("data_dir argument", Path(data_dir) / folder),
        ]
    if root is None:
        entries.append((f"${ENV_DATA}", None))
    else:
        entries.append((f"${ENV_DATA}/{folder}", root / folder))
        if env_bare:
            entries.append((f"${ENV_DATA}", root))
    if system:
        entries += [("system data", Path(d) / folder) for d in SYSTEM_DATA_DIRS]
    entries.append(("Keras cache", _keras_datasets_dir() / folder))
    return entries


def _download_allowed(download: bool | None) -> bool:
    if download is not None:
        return bool(download)
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("1", "true", "yes")


def _download_note(download: bool | None) -> str:
    if download is False:
        return "disabled (download=False)"
    return f"disabled (${ENV_OFFLINE} is set)"


def _limits(limit) -> tuple[int | None, int | None]:
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
    return (x, y) if n is None else (x[:n], y[:n])


def _spread(files: np.ndarray, y: np.ndarray, n: int | None):
    """``n`` evenly spaced entries, so that every class of a sorted list shows."""
    if n is None or n >= len(y):
        return files, y
    keep = np.unique(np.linspace(0, len(y) - 1, max(n, 0)).round().astype(int))
    return files[keep], y[keep]


def _split(split: str) -> str:
    try:
        return _SPLITS[str(split).lower()]
    except KeyError:
        raise ValueError(
            f"Unknown split {split!r}; use 'train' or 'test' ('val' = 'test')"
        ) from None


# --------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------


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


def _find_file(folder: Path, name: str) -> Path | None:
    """``name`` (a ``.gz`` name) or its uncompressed twin in ``folder``."""
    for candidate in (name, name[: -len(".gz")]):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


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


def _fashion_help() -> list[str]:
    files = ", ".join(FASHION_MNIST_FILES)
    return [
        f"pass data_dir=FOLDER, a folder holding {files}",
        f"or set {ENV_DATA}=ROOT with the files in ROOT/fashion-mnist/",
        "or, on Debian/Ubuntu: apt-get install dataset-fashion-mnist "
        "(installs them into /usr/share/datasets/fashion-mnist)",
        f"or allow the download (network access; unset {ENV_OFFLINE}, "
        "download=True): keras.datasets.fashion_mnist.load_data()",
    ]


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


def _cifar_help(name: str, folder: str, files: Sequence[str]) -> list[str]:
    archive = (
        "cifar-10-binary.tar.gz" if name == "cifar10" else "cifar-100-binary.tar.gz"
    )
    return [
        f"extract the official binary version ({archive}) and pass data_dir=FOLDER "
        f"holding {folder}/ (or the files {', '.join(files)} directly)",
        f"or set {ENV_DATA}=ROOT with ROOT/{folder}/",
        f"or allow the download (network access; unset {ENV_OFFLINE}, "
        f"download=True): keras.datasets.{name}.load_data()",
    ]


def _list_images(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        names = [
            e.name
            for e in it
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return [str(folder / n) for n in sorted(names)]


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


def _tiny_help() -> list[str]:
    return [
        "pass data_dir=FOLDER, the unzipped tiny-imagenet-200/ folder "
        "(wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
        "val/val_annotations.txt), or its parent",
        f"or set {ENV_DATA}=ROOT with ROOT/tiny-imagenet-200/",
        f"or download it (about 240 MB): load('tiny_imagenet', download=True) "
        f"fetches {TINY_IMAGENET_URL} into the Keras cache",
    ]


def _class_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir())


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
        raise search.error(
            [
                "get ILSVRC2012 from image-net.org and arrange it as "
                "FOLDER/train/<class>/*.JPEG and FOLDER/val/<class>/*.JPEG "
                "(the validation images sorted into class folders)",
                f"then pass data_dir=FOLDER, or set {ENV_DATA}=ROOT "
                "with ROOT/imagenet/",
            ]
        )
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


# --------------------------------------------------------------------------
# Augmentation policy names (the ops: keras_tfkd.augment and keras_tfkd._tfdata)
# --------------------------------------------------------------------------


def _resolve_augmentation(dataset, split: str, augment) -> str:
    name = dataset.name if isinstance(dataset, Dataset) else str(dataset)
    name = name.lower().replace("-", "_")
    if augment is None:
        policy = _REFERENCE_AUGMENTATION[name] if split == "train" else "none"
    elif augment is True:
        policy = _REFERENCE_AUGMENTATION[name]
    elif augment is False:
        policy = "none"
    elif isinstance(augment, str) and augment in AUGMENTATIONS:
        policy = augment
    else:
        raise ValueError(
            f"augment must be None, True, False or one of {AUGMENTATIONS}; "
            f"got {augment!r}"
        )
    if policy == "imagenet" and name != "imagenet":
        raise ValueError("augment='imagenet' needs the imagenet data set (files)")
    return policy
