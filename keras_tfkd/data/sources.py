"""Where the data sets are searched for, the download policy, and the help texts.

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

A set that is nowhere to be found raises one `DatasetNotFoundError` that lists
every place looked in (`_Search` records them) and how to provide the data
(the ``_*_help`` texts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from keras_tfkd.data.dataset import DatasetNotFoundError

#: Environment variable naming a root folder that holds data sets.
ENV_DATA = "KERAS_TFKD_DATA"
#: Environment variable that, set to 1/true/yes, forbids downloads.
ENV_OFFLINE = "KERAS_TFKD_OFFLINE"
#: System folders searched for Debian-packaged data sets (``<dir>/<set>``).
SYSTEM_DATA_DIRS: tuple[str, ...] = ("/usr/share/datasets",)

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR100_FILES = ("train.bin", "test.bin")
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


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


def _find_file(folder: Path, name: str) -> Path | None:
    """``name`` (a ``.gz`` name) or its uncompressed twin in ``folder``."""
    for candidate in (name, name[: -len(".gz")]):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _download_allowed(download: bool | None) -> bool:
    if download is not None:
        return bool(download)
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("1", "true", "yes")


def _download_note(download: bool | None) -> str:
    if download is False:
        return "disabled (download=False)"
    return f"disabled (${ENV_OFFLINE} is set)"


# ------------------------------------------------------------ help texts
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


def _tiny_help() -> list[str]:
    return [
        "pass data_dir=FOLDER, the unzipped tiny-imagenet-200/ folder "
        "(wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
        "val/val_annotations.txt), or its parent",
        f"or set {ENV_DATA}=ROOT with ROOT/tiny-imagenet-200/",
        f"or download it (about 240 MB): load('tiny_imagenet', download=True) "
        f"fetches {TINY_IMAGENET_URL} into the Keras cache",
    ]


def _imagenet_help() -> list[str]:
    return [
        "get ILSVRC2012 from image-net.org and arrange it as "
        "FOLDER/train/<class>/*.JPEG and FOLDER/val/<class>/*.JPEG "
        "(the validation images sorted into class folders)",
        f"then pass data_dir=FOLDER, or set {ENV_DATA}=ROOT with ROOT/imagenet/",
    ]
