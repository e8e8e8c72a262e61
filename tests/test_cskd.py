"""CS-KD: the class-pair sampler and the Distiller step against NumPy references."""

import zipfile

import h5py
import keras
import numpy as np
import pytest
import reference as ref
from keras import ops

from keras_tfkd import Distiller, losses
from keras_tfkd.data.dataset import Dataset
from keras_tfkd.online import ClassPairBatches, ClassPairTeacher

T = 4.0


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype="float64")


def _indexed(labels):
    """Inputs whose single feature is the example's row, to read batches back."""
    return np.arange(len(labels), dtype="float32")[:, None]


def _rows(inputs, key):
    return inputs[key][:, 0].astype(int)


def _pass(pairs, epoch):
    """``(originals, partners)`` of one pass, in batch order."""
    originals, partners = [], []
    for b in range(len(pairs)):
        inputs, _ = pairs.batch(epoch, b)
        originals.append(_rows(inputs, "inputs"))
        partners.append(_rows(inputs, "pair_inputs"))
    return np.concatenate(originals), np.concatenate(partners)


# ------------------------------------------------------------------ sampler


def test_every_example_is_an_original_once_per_pass_with_a_different_partner(rng):
    y = rng.integers(0, 5, size=103)
    pairs = ClassPairBatches(_indexed(y), y, batch_size=16, seed=3)
    assert len(pairs) == 7
    for epoch in range(4):
        originals, partners = _pass(pairs, epoch)
        np.testing.assert_array_equal(np.sort(originals), np.arange(103))
        np.testing.assert_array_equal(y[partners], y[originals])
        assert np.all(partners != originals)
        inputs, labels = pairs.batch(epoch, 0)
        np.testing.assert_array_equal(labels, y[_rows(inputs, "inputs")])


def test_partners_are_uniform_over_the_other_members_of_the_class():
    y = np.array([0, 0, 0, 0, 1, 1])
    pairs = ClassPairBatches(_indexed(y), y, batch_size=6, seed=0)
    draws = np.stack([pairs.draw(e)[1] for e in range(600)])
    counts = np.bincount(draws[:, 0], minlength=4)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] / 600 - 1 / 3) < 0.07)
    # A class of two: the partner is always the other one.
    assert np.all(draws[:, 4] == 5) and np.all(draws[:, 5] == 4)


def test_draws_depend_only_on_seed_and_pass(rng):
    y = rng.integers(0, 3, size=40)
    x = _indexed(y)
    a = ClassPairBatches(x, y, batch_size=8, seed=11)
    b = ClassPairBatches(x, y, batch_size=8, seed=11)
    # b reads pass 3 first: still the same batches as a's pass 3.
    for epoch in (3, 0, 1):
        for got, want in zip(_pass(b, epoch), _pass(a, epoch)):
            np.testing.assert_array_equal(got, want)
    assert not np.array_equal(_pass(a, 0)[0], _pass(a, 1)[0])
    assert not np.array_equal(_pass(a, 0)[1], _pass(a, 1)[1])
    other = ClassPairBatches(x, y, batch_size=8, seed=12)
    assert not np.array_equal(_pass(other, 0)[0], _pass(a, 0)[0])
    keras.utils.set_random_seed(5)
    c = ClassPairBatches(x, y, batch_size=8)
    keras.utils.set_random_seed(5)
    d = ClassPairBatches(x, y, batch_size=8)
    np.testing.assert_array_equal(_pass(c, 2)[1], _pass(d, 2)[1])


def test_shuffle_false_keeps_the_order_and_the_last_batch_is_partial():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    pairs = ClassPairBatches(_indexed(y), y, batch_size=4, shuffle=False, seed=0)
    sizes = [len(pairs.batch(0, b)[1]) for b in range(len(pairs))]
    assert sizes == [4, 4, 2]
    for epoch in range(3):
        np.testing.assert_array_equal(_pass(pairs, epoch)[0], np.arange(10))
    assert not np.array_equal(_pass(pairs, 0)[1], _pass(pairs, 1)[1])
    with pytest.raises(IndexError):
        pairs[3]


def test_a_class_of_one_pairs_with_itself_and_allow_self_includes_the_example():
    y = np.array([0, 0, 1, 2, 2, 2])
    pairs = ClassPairBatches(_indexed(y), y, batch_size=4, seed=0)
    partners = np.stack([pairs.draw(e)[1] for e in range(50)])
    assert np.all(partners[:, 2] == 2)
    assert np.all(partners[:, [0, 1, 3, 4, 5]] != [0, 1, 3, 4, 5])
    official = ClassPairBatches(_indexed(y), y, batch_size=4, seed=0, allow_self=True)
    partners = np.stack([official.draw(e)[1] for e in range(400)])
    np.testing.assert_array_equal(y[partners], np.broadcast_to(y, partners.shape))
    # 1 in 2 for class 0, 1 in 3 for class 2; always for the class of one.
    self_rate = (partners == np.arange(6)).mean(axis=0)
    np.testing.assert_allclose(
        self_rate, [1 / 2, 1 / 2, 1, 1 / 3, 1 / 3, 1 / 3], atol=0.1
    )


def test_one_hot_labels_sample_weights_and_augmentation(rng):
    y = rng.integers(0, 3, size=12)
    one_hot = np.eye(3, dtype="float32")[y]
    w = rng.uniform(size=12).astype("float32")

    def jitter(images, generator):
        return images + generator.normal(size=images.shape).astype("float32")

    pairs = ClassPairBatches(
        _indexed(y), one_hot, batch_size=5, seed=1, sample_weight=w, augment=jitter
    )
    again = ClassPairBatches(
        _indexed(y), one_hot, batch_size=5, seed=1, sample_weight=w, augment=jitter
    )
    inputs, labels, weights = pairs.batch(2, 1)
    plain = ClassPairBatches(_indexed(y), one_hot, batch_size=5, seed=1)
    raw, _ = plain.batch(2, 1)
    rows = _rows(raw, "inputs")
    np.testing.assert_array_equal(labels, one_hot[rows])
    np.testing.assert_array_equal(weights, w[rows])
    for key in ("inputs", "pair_inputs"):
        assert not np.allclose(inputs[key], raw[key])  # augmented
        np.testing.assert_array_equal(inputs[key], again.batch(2, 1)[0][key])
    # Originals and partners get their own draws.
    noise_o = inputs["inputs"] - raw["inputs"]
    noise_p = inputs["pair_inputs"] - raw["pair_inputs"]
    assert not np.allclose(noise_o, noise_p)
    calls = []
    one_arg = ClassPairBatches(
        _indexed(y), y, batch_size=5, seed=1, augment=lambda b: calls.append(1) or b
    )
    one_arg.batch(0, 0)
    assert len(calls) == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(y=np.zeros(5, "int32")), "`x` has 6 examples but `y` has 5"),
        (dict(y=np.zeros(6, "float32")), "dtype float32"),
        (dict(y=np.array([0, 1, -1, 0, 1, 0])), "label -1"),
        (dict(y=np.array([0, 1, 3, 0, 1, 0]), num_classes=3), "label 3, outside"),
        (dict(y=np.full((6, 3), 1 / 3)), "one-hot rows"),
        (dict(y=np.eye(3)[[0, 1, 2, 0, 1, 2]], num_classes=4), "width 3"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(batch_size=True), "batch_size=True"),
        (dict(batch_size=2.5), "batch_size=2.5"),
        (dict(seed=-1), "seed=-1"),
        (dict(shuffle="yes"), "shuffle='yes'"),
        (dict(sample_weight=np.ones(5)), r"shape \(6,\)"),
        (dict(sample_weight=-np.ones(6)), "sample_weight"),
        (dict(augment="flip"), "augment='flip'"),
        (dict(x={"a": np.zeros((6, 1))}), "one array"),
        (dict(x=np.zeros((0, 2)), y=np.zeros(0, "int32")), "empty"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, match):
    arguments = dict(x=np.zeros((6, 2)), y=np.array([0, 1, 2, 0, 1, 2]))
    arguments.update(kwargs)
    x, y = arguments.pop("x"), arguments.pop("y")
    with pytest.raises(ValueError, match=match):
        ClassPairBatches(x, y, **arguments)


def test_from_dataset_augments_and_normalises_like_the_pipeline():
    from keras_tfkd import data

    try:
        digits = data.load("digits")
    except Exception as error:  # pragma: no cover - no local copy
        pytest.skip(f"digits not available: {error}")
    pairs = ClassPairBatches.from_dataset(digits, "train", 64, seed=0)
    again = ClassPairBatches.from_dataset(digits, "train", 64, seed=0, augment=False)
    inputs, labels = pairs[0]
    assert inputs["inputs"].shape == (64, 8, 8, 1) and labels.dtype == np.int32
    assert inputs["pair_inputs"].dtype == np.float32
    plain, plain_labels = again.batch(0, 0)
    np.testing.assert_array_equal(labels, plain_labels)  # same order and pairs
    assert not np.allclose(inputs["inputs"], plain["inputs"])  # "shift" applied
    order, partners = pairs.draw(0)
    y = digits.labels("train")
    np.testing.assert_array_equal(y[partners], y)
    mean, std = np.float32(digits.mean[0]), np.float32(digits.std[0])
    images = digits.images("train")[order[:64]]
    np.testing.assert_allclose(
        plain["inputs"], (images.astype("float32") / 255.0 - mean) / std, rtol=1e-6
    )
    folder = Dataset(
        name="tiny_imagenet",
        num_classes=2,
        input_shape=(8, 8, 3),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        y_train=np.array([0, 1], "int32"),
        train_files=np.array(["a.png", "b.png"]),
    )
    with pytest.raises(ValueError, match="in-memory"):
        ClassPairBatches.from_dataset(folder, "train", 2)


# ---------------------------------------------------------------- Distiller


def _distiller(student, lam=1.0, seed=0, **teacher_kwargs):
    return Distiller(
        student=student,
        teacher=ClassPairTeacher(student.output_shape[-1], seed=seed, **teacher_kwargs),
        soft_loss=losses.SoftTargetKL(temperature=T),
        hard_weight=1.0,
        soft_weight=lam,
    )


def _cs_kd_loss_and_grad(z, z_pair, y, lam):
    """CE(y, z) + lam T^2 KL(S(z_pair/T) || S(z/T)), batch-mean, and d/dz."""
    n, k = z.shape
    q = ref.softmax(z_pair / T)
    loss = (
        ref.ce(z, y) + lam * T**2 * ref.kl_per_sample(q, ref.log_softmax(z / T)).mean()
    )
    grad = (ref.softmax(z) - ref.one_hot(y, k)) / n + lam * T * (
        ref.softmax(z / T) - q
    ) / n
    return loss, grad


def test_one_step_equals_the_hand_computation(rng):
    n, d, k, lam, lr = 6, 3, 4, 0.7, 0.5
    x = rng.normal(size=(n, d)).astype("float32")
    y = np.array([0, 0, 1, 1, 2, 3])  # class 2 and class 3 pair with themselves
    w0 = rng.normal(size=(d, k)).astype("float32")
    b0 = rng.normal(size=k).astype("float32") * 0.1
    dense = keras.layers.Dense(k)
    student = keras.Sequential([keras.Input((d,)), dense])
    dense.set_weights([w0, b0])
    distiller = _distiller(student, lam=lam, seed=7)
    distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=lr))
    history = distiller.fit(x, y, epochs=1, batch_size=n, verbose=0)

    inputs, labels = ClassPairBatches(x, y, n, seed=7, num_classes=k).batch(0, 0)
    xb = inputs["inputs"].astype("float64")
    xp = inputs["pair_inputs"].astype("float64")
    z, z_pair = xb @ w0 + b0, xp @ w0 + b0
    loss, grad = _cs_kd_loss_and_grad(z, z_pair, labels, lam)
    np.testing.assert_allclose(history.history["loss"][0], loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        history.history["hard_loss"][0], ref.ce(z, labels), rtol=1e-5, atol=1e-6
    )
    # The gradient flows through the originals only (z_pair is a constant).
    np.testing.assert_allclose(_np(dense.kernel), w0 - lr * xb.T @ grad, atol=1e-5)
    np.testing.assert_allclose(_np(dense.bias), b0 - lr * grad.sum(0), atol=1e-5)


def _bn_student(d, h, k):
    return keras.Sequential(
        [
            keras.Input((d,)),
            keras.layers.Dense(h, name="hidden"),
            keras.layers.BatchNormalization(momentum=0.9, name="bn"),
            keras.layers.Dense(k, name="out"),
        ]
    )


def test_batch_norm_runs_the_partners_in_training_mode_after_the_originals(rng):
    n, d, h, k, momentum, eps = 8, 3, 5, 3, 0.9, 1e-3
    x = rng.normal(size=(n, d)).astype("float32") * 2 + 1
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    student = _bn_student(d, h, k)
    w1, b1 = (v.astype("float64") for v in student.get_layer("hidden").get_weights())
    w2, b2 = (v.astype("float64") for v in student.get_layer("out").get_weights())
    distiller = _distiller(student, seed=2)
    distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1))
    history = distiller.fit(x, y, epochs=1, batch_size=n, verbose=0)

    inputs, labels = ClassPairBatches(x, y, n, seed=2).batch(0, 0)
    h_o = inputs["inputs"].astype("float64") @ w1 + b1
    h_p = inputs["pair_inputs"].astype("float64") @ w1 + b1
    # Official code: net(x) then net(x_pairs), both in train mode.
    mean = 0.9 * (0.9 * 0.0 + 0.1 * h_o.mean(0)) + 0.1 * h_p.mean(0)
    var = 0.9 * (0.9 * 1.0 + 0.1 * h_o.var(0)) + 0.1 * h_p.var(0)
    bn = student.get_layer("bn")
    np.testing.assert_allclose(_np(bn.moving_mean), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(bn.moving_variance), var, rtol=1e-5, atol=1e-6)
    assert momentum == bn.momentum
    # Each half is normalised with its own batch statistics.

    def logits(hidden):
        normed = (hidden - hidden.mean(0)) / np.sqrt(hidden.var(0) + eps)
        return normed @ w2 + b2

    loss, _ = _cs_kd_loss_and_grad(logits(h_o), logits(h_p), labels, 1.0)
    np.testing.assert_allclose(history.history["loss"][0], loss, rtol=1e-5)


def test_fit_from_arrays_logs_both_terms_and_saves_the_student_once(rng, tmp_path):
    x = rng.normal(size=(40, 4)).astype("float32")
    y = rng.integers(0, 3, size=40)
    distiller = _distiller(_bn_student(4, 6, 3), seed=1)
    distiller.compile(optimizer="sgd")
    history = distiller.fit(
        x, y, epochs=2, batch_size=8, validation_split=0.25, verbose=0
    )
    for name in ("loss", "hard_loss", "soft_loss", "val_loss", "val_soft_loss"):
        assert len(history.history[name]) == 2 and np.all(
            np.isfinite(history.history[name])
        )
    assert history.history["soft_loss"][0] > 0
    assert history.history["val_soft_loss"] == [0.0, 0.0]  # no pairs: no soft term
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["soft_loss"] == 0.0 and logs["loss"] == pytest.approx(logs["hard_loss"])

    # The teacher does not track the student: no second copy of its weights.
    student = distiller.student
    assert distiller.teacher.weights == []
    assert len(distiller.weights) == len(student.weights) + len(
        [w for w in distiller.weights if not any(w is s for s in student.weights)]
    )
    path = tmp_path / "cskd.keras"
    distiller.save(path)
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as file:
        names = []
        with h5py.File(file, "r") as weights:
            weights.visititems(
                lambda name, obj: (
                    names.append(name) if isinstance(obj, h5py.Dataset) else None
                )
            )
    student_entries = [n for n in names if "sequential" in n]
    assert len(student_entries) == len(student.weights)
    assert not any("pair_teacher" in n for n in names)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.teacher, ClassPairTeacher)
    assert loaded.teacher.weights == [] and loaded.teacher._student() is loaded.student
    assert loaded.teacher.seed == 1 and not loaded.teacher.allow_self
    assert len(loaded.weights) == len(distiller.weights)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6
    )
    loaded.compile(optimizer="sgd")
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)


class _Logged(ClassPairBatches):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = []

    def batch(self, epoch, index):
        self.log.append((epoch, index))
        return super().batch(epoch, index)


def test_fit_reads_one_pass_per_epoch_and_starts_at_initial_epoch(rng):
    x = rng.normal(size=(20, 4)).astype("float32")
    y = rng.integers(0, 2, size=20)
    distiller = _distiller(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    distiller.compile(optimizer="sgd", metrics=["accuracy"])  # Keras then peeks
    pairs = _Logged(x, y, batch_size=8, seed=0)
    distiller.fit(pairs, epochs=2, verbose=0)
    # Keras peeks at batches of the first pass before training (shapes,
    # build) and may prefetch the next pass: the passes read never go back.
    epochs = [e for e, _ in pairs.log]
    assert epochs == sorted(epochs) and set(epochs) <= {0, 1, 2}
    for epoch in (0, 1):
        assert [b for e, b in pairs.log if e == epoch][-3:] == [0, 1, 2]
    resumed = _Logged(x, y, batch_size=8, seed=0)
    distiller.fit(resumed, epochs=5, initial_epoch=3, verbose=0)
    epochs = [e for e, _ in resumed.log]
    assert epochs == sorted(epochs) and set(epochs) - {5} == {3, 4}


def test_inputs_without_pairs_are_refused_with_what_to_pass(rng):
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.integers(0, 2, size=16)
    distiller = _distiller(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    distiller.compile(optimizer="sgd")

    class Plain(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return x[index * 8 : index * 8 + 8], y[index * 8 : index * 8 + 8]

    with pytest.raises(ValueError, match="ClassPairBatches"):
        distiller.fit(Plain(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="pair_inputs"):
        distiller.fit({"inputs": x, "teacher_logits": np.zeros((16, 2))}, y, verbose=0)
    with pytest.raises(ValueError, match="labels"):
        distiller.fit(x, None, verbose=0)
    with pytest.raises(ValueError, match="Distiller"):
        ClassPairTeacher(2)({"inputs": x, "pair_inputs": x})
    with pytest.raises(ValueError, match="seed=-2"):
        ClassPairTeacher(2, seed=-2)
