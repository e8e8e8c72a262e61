"""The input pipelines: the NumPy/PyDataset engine and the tf.data engine.

Both engines run on every backend here when TensorFlow is installed (the CI's
dev environment); without TensorFlow only the NumPy engine is tested. The
augmentations are checked three ways: golden batches of each transform, the
statistics of each policy's output (flip rate, shift and rotation ranges),
and, with TensorFlow installed, the tf.data transforms against the NumPy ones
on the same random parameters.
"""

import importlib.util

import keras
import numpy as np
import pytest

from keras_tfkd import data, recipes
from keras_tfkd.data import augment
from keras_tfkd.teachers import INPUTS_KEY, TEACHER_LOGITS_KEY

HAVE_TF = importlib.util.find_spec("tensorflow") is not None
ENGINES = ["numpy"] + (["tf.data"] if HAVE_TF else [])
needs_tf = pytest.mark.skipif(not HAVE_TF, reason="TensorFlow is not installed")


def _dataset(name, images, labels, num_classes=10):
    n = len(images)
    return data.Dataset(
        name=name,
        num_classes=num_classes,
        input_shape=tuple(images.shape[1:]),
        mean=(0.0,) * images.shape[-1],
        std=(1.0,) * images.shape[-1],
        x_train=images,
        y_train=np.asarray(labels, np.int32),
        x_test=images[: max(1, n // 4)],
        y_test=np.asarray(labels[: max(1, n // 4)], np.int32),
    )


def _batches(stream):
    """One pass as a list of NumPy tuples, whatever the engine."""
    return [tuple(_numpy(t) for t in batch) for batch in stream]


def _numpy(value):
    if isinstance(value, dict):
        return {k: np.asarray(v) for k, v in value.items()}
    return np.asarray(value)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


# ------------------------------------------------------------------ golden
def test_flip_is_the_mirror_image():
    x = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 2), dtype=np.uint8)
    out = augment.flip(x, np.array([True, False, True]))
    np.testing.assert_array_equal(out[0], x[0, :, ::-1])
    np.testing.assert_array_equal(out[1], x[1])
    np.testing.assert_array_equal(out[2], x[2, :, ::-1])


def test_shift_is_a_translation_with_zero_fill():
    x = np.arange(1, 26, dtype=np.uint8).reshape(1, 5, 5, 1)
    out = augment.shift(np.repeat(x, 2, 0), np.array([[2, 0], [-1, 1]]))[..., 0]
    expected0 = np.zeros((5, 5), np.uint8)
    expected0[:, :3] = x[0, :, 2:, 0]  # reads column x + 2
    expected1 = np.zeros((5, 5), np.uint8)
    expected1[:4, 1:] = x[0, 1:, :4, 0]  # reads (x - 1, y + 1)
    np.testing.assert_array_equal(out[0], expected0)
    np.testing.assert_array_equal(out[1], expected1)


def test_rotation_golden_and_bounds():
    x = np.random.default_rng(1).integers(1, 256, (1, 6, 6, 1), dtype=np.uint8)
    quarter = augment.rotate(x, np.array([90.0]))[0, :, :, 0]
    np.testing.assert_array_equal(quarter, np.rot90(x[0, :, :, 0]))  # anticlockwise
    np.testing.assert_array_equal(augment.rotate(x, np.array([0.0])), x)
    half = augment.rotate(x, np.array([180.0]))[0, :, :, 0]
    np.testing.assert_array_equal(half, x[0, ::-1, ::-1, 0])
    small = augment.rotate(x, np.array([10.0]))
    assert small.shape == x.shape and small.dtype == x.dtype
    assert set(np.unique(small)) <= set(np.unique(x)) | {0}  # nearest: no new values


def test_parameter_distributions():
    rng = np.random.default_rng(0)
    cifar = augment.sample("cifar", rng, 20000, (32, 32))
    assert cifar["shift"].min() == -4 and cifar["shift"].max() == 4
    counts = np.bincount(cifar["shift"].ravel() + 4)
    assert counts.min() > 0.8 * counts.mean()  # uniform on the 9 integers
    assert abs(cifar["flip"].mean() - 0.5) < 0.02
    assert -15 <= cifar["angle"].min() < -14.5 and 14.5 < cifar["angle"].max() <= 15
    assert abs(cifar["angle"].std() - 15 / np.sqrt(3)) < 0.3  # uniform
    tiny = augment.sample("tiny_imagenet", rng, 5000, (64, 64))
    assert sorted(tiny) == ["angle", "flip"] and np.abs(tiny["angle"]).max() <= 20
    assert augment.sample("shift", rng, 1000, (28, 28))["shift"].max() == 2
    assert augment.sample("shift", rng, 1000, (8, 8))["shift"].max() == 1
    assert augment.sample("none", rng, 10, (8, 8)) == {}
    with pytest.raises(ValueError, match="mixup"):
        augment.sample("mixup", rng, 10, (8, 8))


@needs_tf
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tf_transforms_equal_numpy_transforms(seed):
    """The tf.data ops read the same source pixel as the NumPy ones."""
    import tensorflow as tf

    from keras_tfkd.data import _tfdata

    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, (16, 32, 32, 3)).astype(np.float32)
    params = augment.sample("cifar", rng, 16, (32, 32))
    tx = tf.constant(x)
    ones, zeros = tf.ones([16]), tf.zeros([16])
    offsets = tf.constant(params["shift"], tf.float32)
    shift = tf.stack(
        [ones, zeros, offsets[:, 0], zeros, ones, offsets[:, 1], zeros, zeros], 1
    )
    np.testing.assert_array_equal(
        _tfdata._transform(tf, tx, shift).numpy(), augment.shift(x, params["shift"])
    )
    # Rotation: the same affine map; nearest-neighbour ties may round apart.
    angle = np.deg2rad(params["angle"]).astype(np.float32)
    cos, sin = np.cos(angle), np.sin(angle)
    c = 15.5
    rot = np.stack(
        [cos, -sin, c - cos * c + sin * c, sin, cos, c - sin * c - cos * c]
        + [np.zeros(16, np.float32)] * 2,
        1,
    )
    got = _tfdata._transform(tf, tx, tf.constant(rot)).numpy()
    want = augment.rotate(x, params["angle"])
    assert np.mean(got == want) > 0.99


# ------------------------------------------------------- pipeline output
@pytest.mark.parametrize("engine", ENGINES)
def test_flip_rate_and_rotation_range_of_the_cifar_policy(engine):
    """Statistics of the output: a flip or rotation made a no-op fails here."""
    n = 512
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, 15:17, 4:15] = 255  # a bar on the left half: its side shows a flip
    ds = _dataset("cifar10", images, np.arange(n) % 10)
    x = np.concatenate(
        [
            b[0]
            for b in _batches(
                data.pipeline(ds, "train", 128, augment="cifar", seed=7, engine=engine)
            )
        ]
    )[..., 0]
    left = x[:, :, :16].sum(axis=(1, 2))
    right = x[:, :, 16:].sum(axis=(1, 2))
    flipped = right > left
    assert 0.4 < flipped.mean() < 0.6
    # Orientation of the bar from second moments (shift-invariant).
    angles = np.abs(_bar_angles(x))
    assert angles.max() <= 18.5  # [-15, 15], + the estimate's pixel error
    assert np.mean(angles > 7.5) > 0.3  # a real spread, not a no-op


def _bar_angles(x):
    """The orientation (degrees) of the bright bar in each image, by moments."""
    angles = []
    for img in x:
        ys, xs = np.nonzero(img > 0.5)
        cov = np.cov(np.stack([xs, ys]).astype(float))
        angles.append(
            0.5 * np.degrees(np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1]))
        )
    return np.asarray(angles)


@pytest.mark.parametrize("engine", ENGINES)
def test_rotation_range_of_the_tiny_imagenet_policy(engine):
    n = 256
    images = np.zeros((n, 64, 64, 3), np.uint8)
    images[:, 31:33, 8:56] = 255  # a long horizontal bar through the centre
    ds = _dataset("tiny_imagenet", images, np.arange(n) % 2, num_classes=2)
    pipe = data.pipeline(
        ds, "train", 128, augment="tiny_imagenet", seed=1, engine=engine
    )
    angles = _bar_angles(np.concatenate([b[0] for b in _batches(pipe)])[..., 0])
    assert np.abs(angles).max() <= 20.5 and np.abs(angles).max() > 18
    assert abs(angles.mean()) < 2.0  # symmetric
    assert abs(angles.std() - 20 / np.sqrt(3)) < 1.5  # uniform on [-20, 20]


@pytest.mark.parametrize("engine", ENGINES)
def test_shift_policy_statistics(engine):
    n = 600
    images = np.zeros((n, 28, 28, 1), np.uint8)
    images[:, 14, 14] = 255  # one pixel: its position is the shift
    ds = _dataset("fashion_mnist", images, np.arange(n) % 10)
    batches = _batches(data.pipeline(ds, "train", 200, seed=3, engine=engine))
    x = np.concatenate([b[0] for b in batches])[..., 0]
    pos = np.array([np.unravel_index(np.argmax(img), img.shape) for img in x])
    d = pos - 14
    assert d.min() == -2 and d.max() == 2  # shifts within [-2, 2], all reached
    assert np.all(np.abs(d.mean(axis=0)) < 0.25)  # no mean shift
    assert len({tuple(v) for v in d}) == 25


@pytest.mark.parametrize("engine", ENGINES)
def test_seeded_passes_deterministic_and_fresh(engine, digits):
    def first_pass(seed):
        return _batches(data.pipeline(digits, "train", 128, seed=seed, engine=engine))

    a, b = first_pass(4), first_pass(4)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    pipe = data.pipeline(digits, "train", 128, seed=4, engine=engine)
    one, two = _batches(pipe), _batches(pipe)
    assert not np.array_equal(one[0][1], two[0][1])  # reshuffled each pass
    seen = np.sort(np.concatenate([y for _, y in one]))
    np.testing.assert_array_equal(seen, np.sort(digits.y_train))  # a permutation
    assert not np.array_equal(first_pass(5)[0][1], a[0][1])


@pytest.mark.parametrize("engine", ENGINES)
def test_shuffled_labels_follow_their_images(engine, digits):
    table = {
        digits.x_train[i].tobytes(): digits.y_train[i]
        for i in range(digits.num_examples("train"))
    }
    pipe = data.pipeline(digits, "train", 100, augment=False, seed=2, engine=engine)
    for x, y in _batches(pipe)[:3]:
        raw = np.rint((x * digits.std[0] + digits.mean[0]) * 255).astype(np.uint8)
        assert [table[img.tobytes()] for img in raw] == y.tolist()


@pytest.mark.parametrize("engine", ENGINES)
def test_sample_weights_and_cached_logits_follow_the_shuffle(engine, digits):
    n = digits.num_examples("train")
    weights = np.arange(n, dtype=np.float32)
    logits = np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 10))
    pipe = data.pipeline(
        digits,
        "train",
        64,
        augment=False,
        seed=1,
        sample_weight=weights,
        teacher_logits=logits,
        engine=engine,
    )
    x, y, w = _batches(pipe)[0]
    assert sorted(x) == [INPUTS_KEY, TEACHER_LOGITS_KEY]
    assert x[INPUTS_KEY].shape == (64, 8, 8, 1) and y.shape == (64,)
    idx = w.astype(int)  # each weight is its example's index
    assert len(set(idx)) == 64 and not np.array_equal(idx, np.arange(64))
    np.testing.assert_array_equal(y, digits.y_train[idx])
    np.testing.assert_array_equal(x[TEACHER_LOGITS_KEY][:, 0], idx)
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        data.pipeline(digits, "train", 64, sample_weight=weights[:-1], engine=engine)
    with pytest.raises(ValueError, match="finite and >= 0"):
        data.pipeline(digits, "train", 64, sample_weight=-weights, engine=engine)


def test_bad_arguments_name_themselves(digits):
    with pytest.raises(ValueError, match="engine must be one of"):
        data.pipeline(digits, "train", 64, engine="grain")
    with pytest.raises(ValueError, match="seed must be None or an integer >= 0"):
        data.pipeline(digits, "train", 64, seed=-1)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        data.pipeline(digits, "train", 0)


def test_auto_engine_follows_the_backend():
    expected = "tf.data" if keras.backend.backend() == "tensorflow" else "numpy"
    assert data.pipeline_engine() == expected


def test_numpy_engine_repeat_and_drop_remainder(digits):
    pipe = data.pipeline(digits, "train", 500, drop_remainder=True, engine="numpy")
    assert len(pipe) == 2 and pipe.num_batches == 2
    endless = data.pipeline(digits, "train", 500, repeat=True, seed=0, engine="numpy")
    assert endless.num_batches is None
    x5 = endless[5][0]  # pass 1 (3 batches a pass), batch 2: a partial batch
    assert x5.shape[0] == 1347 - 1000
    with pytest.raises(IndexError):
        pipe[2]


def test_numpy_engine_file_folders_with_threads(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    files, labels = [], []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        size = (64, 64) if i % 3 else (40, 50)  # some need a resize
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
        labels.append(i % 2)
    ds = data.Dataset(
        name="tiny_imagenet",
        num_classes=2,
        input_shape=(64, 64, 3),
        mean=data.TINY_IMAGENET_MEAN,
        std=data.TINY_IMAGENET_STD,
        y_train=np.asarray(labels, np.int32),
        y_test=np.asarray(labels, np.int32),
        train_files=np.asarray(files),
        test_files=np.asarray(files),
    )
    one = data.pipeline(ds, "train", 5, seed=0, engine="numpy", workers=3)
    two = data.pipeline(ds, "train", 5, seed=0, engine="numpy", workers=1)
    for (xa, ya), (xb, yb) in zip(_batches(one), _batches(two)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    test = _batches(data.pipeline(ds, "test", 12, engine="numpy"))[0][0]
    raw = np.asarray(Image.open(files[1]).convert("RGB"), np.float32) / 255
    np.testing.assert_allclose(
        test[1], (raw - data.TINY_IMAGENET_MEAN) / data.TINY_IMAGENET_STD, atol=1e-5
    )


# ------------------------------------------------------------ with fit
@pytest.mark.gradients
@pytest.mark.parametrize("engine", ENGINES)
def test_distiller_fits_on_each_engine_with_weights(engine, digits):
    keras.utils.set_random_seed(0)
    student = keras.Sequential(
        [
            keras.Input(digits.input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    distiller = recipes.tfkd_reg(
        student, 10, alpha=0.5, temperature=20.0, kl="reference"
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    n = digits.num_examples("train")
    weights = np.ones(n, np.float32)
    train = data.pipeline(
        digits, "train", 128, seed=0, sample_weight=weights, engine=engine
    )
    test = data.pipeline(digits, "test", 256, engine=engine)
    history = distiller.fit(train, epochs=3, validation_data=test, verbose=0)
    assert history.history["val_accuracy"][-1] > 0.7
    assert len(history.history["loss"]) == 3


def test_out_of_range_labels_refused_before_training():
    images = np.zeros((8, 4, 4, 1), np.uint8)
    ds = _dataset("digits", images, np.array([0, 1, 2, 3, 4, 5, 6, 12]))
    student = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    distiller = recipes.baseline(student)
    distiller.compile(optimizer="sgd")
    before = [w.copy() for w in student.get_weights()]
    with pytest.raises(ValueError, match=r"\[0, 10\)|range|12"):
        distiller.fit(data.pipeline(ds, "train", 4, engine="numpy"), verbose=0)
    for a, b in zip(before, student.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.gradients
def test_worker_threads_train_exactly_as_one_thread(digits):
    """Prefetching threads read the same batches, pass after pass."""

    def trained(workers):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
        )
        distiller = recipes.baseline(model)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        train = data.pipeline(
            digits, "train", 128, seed=3, engine="numpy", workers=workers
        )
        distiller.fit(train, epochs=3, verbose=0)
        assert train.epoch >= 3  # a new pass each epoch
        return model.get_weights()

    for a, b in zip(trained(1), trained(3)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
