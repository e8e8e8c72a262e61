"""Data sets and pipelines (every backend; the default engine of each backend)."""

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_tfkd import data

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No env root, no home cache, no system folders, no downloads."""
    monkeypatch.delenv(data.ENV_DATA, raising=False)
    monkeypatch.setenv(data.ENV_OFFLINE, "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home" / ".keras"))
    monkeypatch.setattr(data.sources, "SYSTEM_DATA_DIRS", (str(tmp_path / "system"),))
    return tmp_path


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def write_idx(path, array, code=0x08):
    array = np.asarray(array)
    header = bytes([0, 0, code, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


def write_fashion(folder, n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
        arrays[prefix] = (x, y)
    return arrays


def write_jpegs(folder, names, size=(64, 64), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=95)


# ----------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------


def test_available_and_unknown_name():
    assert data.available() == [
        "digits",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "tiny_imagenet",
        "imagenet",
    ]
    with pytest.raises(ValueError, match="valid names: digits, fashion_mnist"):
        data.load("mnist")
    with pytest.raises(TypeError, match="image_size"):
        data.load("digits", image_size=32)


def test_digits_offline_deterministic_split(digits):
    ds = digits
    assert (ds.num_classes, ds.input_shape) == (10, (8, 8, 1))
    assert ds.x_train.shape == (1347, 8, 8, 1) and ds.x_test.shape == (450, 8, 8, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    again = data.load("digits")
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    np.testing.assert_array_equal(again.y_train, ds.y_train)
    counts = np.bincount(ds.y_test, minlength=10)
    totals = counts + np.bincount(ds.y_train, minlength=10)
    np.testing.assert_array_equal(counts, np.round(totals * 0.25))  # stratified
    scaled = ds.x_train / 255.0
    assert scaled.mean() == pytest.approx(ds.mean[0], abs=1e-4)
    assert scaled.std() == pytest.approx(ds.std[0], abs=1e-4)
    small = data.load("digits", limit=(100, 20))
    assert len(small.y_train) == 100 and len(small.y_test) == 20


def test_read_idx_round_trip(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x.gz"), images)
    values = np.array([[-3, 70000], [5, -1]], np.int32)
    write_idx(tmp_path / "y", values, code=0x0C)  # uncompressed, big-endian int32
    got = data.read_idx(tmp_path / "y")
    np.testing.assert_array_equal(got, values)
    assert got.dtype == np.int32


def test_read_idx_rejects_truncated_and_bad_files(tmp_path):
    images = np.zeros((10, 28, 28), np.uint8)
    write_idx(tmp_path / "good.gz", images)
    blob = (tmp_path / "good.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])  # broken gzip stream
    with pytest.raises(data.DatasetFormatError, match="cut.gz"):
        data.read_idx(tmp_path / "cut.gz")
    raw = gzip.decompress(blob)
    with gzip.open(tmp_path / "short.gz", "wb") as f:  # valid gzip, missing data
        f.write(raw[:-100])
    with pytest.raises(data.DatasetFormatError, match=r"short\.gz.*truncated"):
        data.read_idx(tmp_path / "short.gz")
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(data.DatasetFormatError, match="junk.*not an IDX"):
        data.read_idx(tmp_path / "junk")


def test_fashion_mnist_from_data_dir(isolated, monkeypatch):
    arrays = write_fashion(isolated / "fm")
    ds = data.load("fashion-mnist", data_dir=isolated / "fm")
    assert ds.source == str(isolated / "fm")
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train"][0])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k"][1])
    assert ds.y_train.dtype == np.int32
    # Found under $KERAS_TFKD_DATA/fashion-mnist too; limit keeps the first N.
    write_fashion(isolated / "root" / "fashion-mnist")
    monkeypatch.setenv(data.ENV_DATA, str(isolated / "root"))
    limited = data.load("fashion_mnist", limit=3)
    assert limited.source == str(isolated / "root" / "fashion-mnist")
    assert limited.x_train.shape == (3, 28, 28, 1) and len(limited.y_test) == 3
    # A corrupt file names itself.
    (isolated / "fm" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(data.DatasetFormatError, match="t10k-labels-idx1-ubyte.gz"):
        data.load("fashion_mnist", data_dir=isolated / "fm")


@pytest.mark.skipif(
    not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_debian_package(isolated, monkeypatch):
    monkeypatch.setattr(data.sources, "SYSTEM_DATA_DIRS", ("/usr/share/datasets",))
    ds = data.load("fashion_mnist", limit=(500, 200))
    assert ds.source == str(DEBIAN_FASHION)
    assert ds.x_train.shape == (500, 28, 28, 1) and ds.x_test.shape == (200, 28, 28, 1)
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert 0.2 < ds.x_train.mean() / 255 < 0.4


def cifar_record(label_bytes, labels, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, 3072, dtype=np.uint8)
    return bytes(labels) + pixels.tobytes(), pixels


def test_cifar10_binary(isolated):
    folder = isolated / "cifar-10-batches-bin"
    folder.mkdir()
    for i, name in enumerate(data.CIFAR10_FILES):
        records = [
            cifar_record(1, [(i + k) % 10], seed=10 * i + k)[0] for k in range(2)
        ]
        (folder / name).write_bytes(b"".join(records))
    ds = data.load("cifar10", data_dir=isolated)  # finds the standard subfolder
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (2, 32, 32, 3)
    assert ds.y_train.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    _, pixels = cifar_record(1, [5], seed=50)  # first test record
    planes = pixels.reshape(3, 32, 32)  # R plane, G plane, B plane
    np.testing.assert_array_equal(ds.x_test[0], planes.transpose(1, 2, 0))
    assert ds.mean == data.CIFAR_MEAN and ds.class_names[0] == "airplane"
    (folder / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(data.DatasetFormatError, match="test_batch.bin"):
        data.load("cifar10", data_dir=folder)


def test_cifar100_binary_fine_labels(isolated):
    folder = isolated / "cifar-100-binary"
    folder.mkdir()
    (folder / "train.bin").write_bytes(
        b"".join(cifar_record(2, [3, 42 + k], seed=k)[0] for k in range(3))
    )
    (folder / "test.bin").write_bytes(cifar_record(2, [19, 99], seed=9)[0])
    ds = data.load("cifar100", data_dir=folder)
    assert ds.num_classes == 100
    assert ds.y_train.tolist() == [42, 43, 44] and ds.y_test.tolist() == [99]


def make_tiny_imagenet(root):
    wnids = ["n02", "n01"]  # not sorted: classes follow sorted order
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        write_jpegs(
            root / "train" / wnid / "images", [f"{wnid}_{i}.JPEG" for i in range(2)]
        )
    write_jpegs(root / "val" / "images", ["val_0.JPEG", "val_1.JPEG", "val_2.JPEG"])
    (root / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn01\t0\t0\t10\t10\n"
        "val_1.JPEG\tn02\t1\t1\t20\t20\n"
        "val_2.JPEG\tn01\t2\t2\t30\t30\n"
    )


def test_tiny_imagenet_folder(isolated):
    make_tiny_imagenet(isolated / "tiny-imagenet-200")
    ds = data.load("tiny_imagenet", data_dir=isolated)
    assert not ds.in_memory
    assert ds.class_names == ("n01", "n02") and ds.num_classes == 2
    assert ds.input_shape == (64, 64, 3) and ds.mean == data.TINY_IMAGENET_MEAN
    assert ds.y_train.tolist() == [0, 0, 1, 1]
    assert ds.y_test.tolist() == [0, 1, 0]
    assert ds.test_files[1].endswith("val_1.JPEG")
    x, y = next(iter(data.pipeline(ds, "train", 4, seed=0)))
    assert tuple(x.shape) == (4, 64, 64, 3) and x.dtype.name == "float32"
    assert sorted(np.asarray(y).tolist()) == [0, 0, 1, 1]
    x, y = next(iter(data.pipeline(ds, "test", 8)))
    assert tuple(x.shape) == (3, 64, 64, 3) and np.asarray(y).tolist() == [0, 1, 0]
    assert data.augmentation_is_random(ds, "train")


def test_imagenet_folder(isolated):
    root = isolated / "imagenet"
    for split, n in (("train", 2), ("val", 1)):
        for c, size in (("cat", (50, 40)), ("dog", (30, 60))):
            write_jpegs(root / split / c, [f"{c}{i}.jpg" for i in range(n)], size)
    ds = data.load("imagenet", data_dir=isolated, image_size=32, resize_size=36)
    assert ds.class_names == ("cat", "dog") and ds.input_shape == (32, 32, 3)
    assert ds.y_train.tolist() == [0, 0, 1, 1] and len(ds.test_files) == 2
    x, _ = next(iter(data.pipeline(ds, "train", 4, seed=1)))
    assert tuple(x.shape) == (4, 32, 32, 3)
    x, y = next(iter(data.pipeline(ds, "test", 4)))
    assert tuple(x.shape) == (2, 32, 32, 3) and np.asarray(y).tolist() == [0, 1]
    assert data.augmentation_is_random(ds, "train")
    assert not data.augmentation_is_random(ds, "test")  # resize + centre crop


MISSING = [
    ("fashion_mnist", "apt-get install dataset-fashion-mnist"),
    ("cifar10", "cifar-10-binary.tar.gz"),
    ("cifar100", "cifar-100-binary"),
    ("tiny_imagenet", "download=True"),
    ("imagenet", "train/<class>"),
]


def test_missing_dataset_one_clear_error(isolated, monkeypatch):
    (isolated / "empty").mkdir()
    monkeypatch.setenv(data.ENV_DATA, str(isolated / "empty"))
    for name, hint in MISSING:
        with pytest.raises(data.DatasetNotFoundError) as info:
            data.load(name, data_dir=isolated / "nowhere")
        assert isinstance(info.value, FileNotFoundError)
        message = str(info.value)
        assert hint in message and data.ENV_DATA in message, message
        assert str(isolated / "nowhere") in message, message
        assert str(isolated / "empty") in message, message
        assert str(isolated / "home" / ".keras" / "datasets") in message, message
        if name == "fashion_mnist":
            assert str(isolated / "system" / "fashion-mnist") in message
        if name in ("fashion_mnist", "cifar10", "cifar100"):
            assert "KERAS_TFKD_OFFLINE" in message  # download refused, and said so
        assert len(info.value.searched) >= 4


# ----------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------


def test_pipeline_normalised_batches(digits):
    batches = list(data.pipeline(digits, "test", 128))
    x = np.concatenate([np.asarray(b[0]) for b in batches])
    y = np.concatenate([np.asarray(b[1]) for b in batches])
    assert [tuple(b[0].shape) for b in batches][0] == (128, 8, 8, 1)
    assert x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(y, digits.y_test)  # test: no shuffle
    expected = (digits.x_test / 255.0 - digits.mean[0]) / digits.std[0]
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    assert abs(x.mean()) < 0.1 and abs(x.std() - 1) < 0.1
    assert not data.augmentation_is_random(digits, "test")
    dropped = list(data.pipeline(digits, "test", 128, drop_remainder=True))
    assert len(dropped) == 3


def test_shift_augmentation_is_a_shift_and_seeded(digits):
    kw = dict(shuffle=False, seed=3)
    plain = data.pipeline(digits, "train", 64, augment=False, shuffle=False)
    plain = np.asarray(next(iter(plain))[0])
    pipe = data.pipeline(digits, "train", 64, **kw)
    aug = np.asarray(next(iter(pipe))[0])
    assert aug.shape == plain.shape and not np.allclose(aug, plain)
    zero = (0 - digits.mean[0]) / digits.std[0]  # zero fill, normalised
    padded = np.pad(plain[..., 0], ((0, 0), (1, 1), (1, 1)), constant_values=zero)
    shifts = set()
    for i in range(len(aug)):  # every image is its original shifted by <= 1 px
        found = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if np.allclose(aug[i, ..., 0], padded[i, dy : dy + 8, dx : dx + 8])
        ]
        assert found, f"image {i} is not a shift of its original"
        shifts.add(found[0])
    assert len(shifts) >= 5  # all 9 shifts are equally likely
    again = np.asarray(next(iter(data.pipeline(digits, "train", 64, **kw)))[0])
    np.testing.assert_array_equal(aug, again)  # same seed, same batch
    epochs = [np.asarray(next(iter(pipe))[0]) for _ in range(2)]
    assert not np.array_equal(epochs[0], epochs[1])  # fresh noise each pass
    shuffled = [next(iter(data.pipeline(digits, "train", 64, seed=5)))[1] for _ in "ab"]
    np.testing.assert_array_equal(*shuffled)
    assert not np.array_equal(shuffled[0], digits.y_train[:64])


def test_cifar_augmentation_keeps_shape():
    rng = np.random.default_rng(0)
    ds = data.Dataset(
        name="cifar10",
        num_classes=10,
        input_shape=(32, 32, 3),
        mean=data.CIFAR_MEAN,
        std=data.CIFAR_STD,
        x_train=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(8, dtype=np.int32),
        x_test=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(4, dtype=np.int32),
    )
    assert data.augmentation_is_random(ds, "train")
    assert not data.augmentation_is_random(ds, "train", augment=False)
    assert data.augmentation_is_random(ds, "test", augment=True)
    x, y = next(iter(data.pipeline(ds, "train", 8, shuffle=False, seed=0)))
    plain, _ = next(iter(data.pipeline(ds, "train", 8, augment=False)))
    assert tuple(x.shape) == (8, 32, 32, 3) and x.dtype.name == "float32"
    assert not np.allclose(np.asarray(x), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(y), np.arange(8))
    with pytest.raises(ValueError, match="augment"):
        data.pipeline(ds, "train", 8, augment="mixup")


@pytest.mark.gradients
def test_fit_on_digits_pipeline(digits):
    keras.utils.set_random_seed(0)  # unseeded, 3 epochs landed at 0.68-0.8
    train = data.pipeline(digits, "train", 128, seed=0)
    test = data.pipeline(digits, "test", 256)
    model = keras.Sequential(
        [
            keras.Input(digits.input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(digits.num_classes),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(train, epochs=3, validation_data=test, verbose=0)
    assert history.history["val_accuracy"][-1] > 0.7


def test_pipeline_throughput(digits):
    """Images per second: the images of `steps` batches over the clock's time
    between the first and the last, the warm-up batch not counted."""
    ticks = iter([100.0, 104.0])  # the clock, read once before and once after
    rate = data.pipeline_throughput(
        digits, "train", 64, steps=3, clock=lambda: next(ticks)
    )
    assert rate == 3 * 64 / 4.0
    assert next(ticks, None) is None


# ------------------------------------------------------- the package's layout
# A fresh process that imports no Keras: no backend is involved.
@pytest.mark.one_backend
def test_data_package_imports_no_framework():
    """`keras_tfkd.data` (the names, not the engines) imports no Keras."""
    code = (
        "import sys, keras_tfkd\n"
        "keras_tfkd.data.pipeline, keras_tfkd.data.load('digits')\n"
        "print(sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]
