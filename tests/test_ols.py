"""Online Label Smoothing (`OnlineSoftLabels`) against a NumPy simulation."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfkd import Distiller, losses
from keras_tfkd.online import OnlineSoftLabels

K, D, N, B, EPOCHS, LR, ALPHA = 3, 5, 12, 4, 3, 0.5, 0.5
# Seed 32 gives data on which class 1 has no correctly classified example in
# the first epoch (both variants) while classes 0 and 2 have some, so the
# epoch-end rule for an empty class and the mean of a seen one both shape the
# next epoch; no argmax in the run is closer than 6e-3 to a tie.
SEED = 32


def _np(x):
    if isinstance(x, keras.Variable):
        x = x.value
    return np.asarray(ops.convert_to_numpy(x), dtype="float64")


def _data():
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(N, D)).astype("float32")
    y = rng.integers(0, K, N)
    w0 = (rng.normal(size=(D, K)) * 0.3).astype("float32")
    return x, y, w0


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _initial(variant, eps=0.1):
    if variant == "official":
        return np.zeros((K, K))
    return np.full((K, K), eps / (K - 1)) + np.eye(K) * (1 - eps - eps / (K - 1))


def _simulate(x, y, w0, variant):
    """OLS in float64: SGD on (1 - alpha) CE + alpha CE(S[y]), S per epoch.

    Returns the final kernel, the matrix after each epoch, the per-epoch
    counts of correct examples and the smallest top-2 probability gap.
    """
    x, w = x.astype("float64"), w0.astype("float64")
    s = _initial(variant)
    one_hot = np.eye(K)[y]
    matrices, counts, gaps = [], [], []
    for _ in range(EPOCHS):
        sums, count = np.zeros((K, K)), np.zeros(K)
        for start in range(0, N, B):
            i = np.arange(start, start + B)
            p = _softmax(x[i] @ w)
            top2 = np.sort(p, axis=1)[:, -2:]
            gaps.append((top2[:, 1] - top2[:, 0]).min())
            correct = p.argmax(axis=1) == y[i]
            np.add.at(sums, y[i][correct], p[correct])
            np.add.at(count, y[i][correct], 1)
            q = s[y[i]]
            # d/dz of -sum q log softmax(z) is sum(q) p - q (sum(q) = 0 or 1).
            grad_z = (1 - ALPHA) * (p - one_hot[i]) + ALPHA * (
                q.sum(axis=1, keepdims=True) * p - q
            )
            w = w - LR * x[i].T @ grad_z / B
        seen = count > 0.5
        empty = 1.0 / K if variant == "official" else 0.0
        s = np.where(seen[:, None], sums / np.where(seen, count, 1)[:, None], empty)
        matrices.append(s)
        counts.append(count)
    return w, matrices, counts, min(gaps)


def _student(w0):
    student = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(K, use_bias=False)]
    )
    student.layers[0].kernel.assign(w0)
    return student


def _distiller(w0, variant):
    distiller = Distiller(
        student=_student(w0),
        teacher=OnlineSoftLabels(K, variant=variant),
        soft_loss=losses.SoftTargetCrossEntropy(targets="probabilities"),
        alpha=ALPHA,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(LR))
    return distiller


class _Matrices(keras.callbacks.Callback):
    """The teacher's matrix after each epoch (the Distiller's hook runs first)."""

    def __init__(self):
        super().__init__()
        self.matrices = []

    def on_epoch_end(self, epoch, logs=None):
        self.matrices.append(self.model.teacher.soft_labels)


@pytest.mark.parametrize("variant", ["official", "port"])
def test_fit_matches_numpy_simulation(variant):
    x, y, w0 = _data()
    w, matrices, counts, gap = _simulate(x, y, w0, variant)
    # The data exercise both epoch-end rules and no argmax is a near tie.
    assert counts[0][1] == 0 and counts[0][0] > 0 and counts[0][2] > 0
    assert gap > 1e-3
    distiller = _distiller(w0, variant)
    recorder = _Matrices()
    distiller.fit(
        x,
        y,
        epochs=EPOCHS,
        batch_size=B,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    kernel = _np(distiller.student.layers[0].kernel)
    np.testing.assert_allclose(kernel, w, atol=1e-5, rtol=0)
    assert len(recorder.matrices) == EPOCHS
    for got, expected in zip(recorder.matrices, matrices):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    empty = 1.0 / K if variant == "official" else 0.0
    np.testing.assert_allclose(recorder.matrices[0][1], empty, atol=0)
    # The running sums start again at every epoch end.
    assert not _np(distiller.teacher.class_sums).any()
    assert not _np(distiller.teacher.class_counts).any()


def test_update_sums_the_correct_examples_of_each_class():
    teacher = OnlineSoftLabels(K)
    logits = np.array(
        [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
        dtype="float32",
    )
    labels = np.array([0, 0, 0, 2])  # the second example is wrong
    teacher.update(None, labels, logits)
    teacher.update(None, np.eye(K)[labels].astype("float32"), logits)  # one-hot
    p = _softmax(logits.astype("float64"))
    sums = np.zeros((K, K))
    sums[0] = 2 * (p[0] + p[2])
    sums[2] = 2 * p[3]
    np.testing.assert_allclose(_np(teacher.class_sums), sums, atol=1e-6)
    np.testing.assert_allclose(_np(teacher.class_counts), [4, 0, 2])
    teacher.on_epoch_end(0)
    expected = np.stack([(p[0] + p[2]) / 2, np.full(K, 1.0 / K), p[3]])
    np.testing.assert_allclose(teacher.soft_labels, expected, atol=1e-6)
    assert not _np(teacher.class_sums).any() and not _np(teacher.class_counts).any()
    # An epoch begin clears sums left over (a step outside fit, an epoch cut
    # short and replayed from its first batch) and keeps the matrix.
    teacher.update(None, labels, logits)
    teacher.on_epoch_begin(1, 3)
    assert not _np(teacher.class_sums).any() and not _np(teacher.class_counts).any()
    np.testing.assert_allclose(teacher.soft_labels, expected, atol=1e-6)


@pytest.mark.parametrize("packed", [False, True])
def test_targets_before_training(packed):
    x = np.zeros((4, D), "float32")
    if packed:
        x = {"inputs": x, "example_index": np.arange(4, dtype="int32")}
    y = np.array([0, 1, 2, 1])
    z = np.random.default_rng(0).normal(size=(4, K)).astype("float32")
    soft = losses.SoftTargetCrossEntropy(targets="probabilities")
    official = OnlineSoftLabels(K)(x, labels=y)
    assert tuple(official.shape) == (4, K) and "float32" in str(official.dtype)
    assert not _np(official).any()
    assert float(_np(soft(official, z))) == 0.0
    port = _np(OnlineSoftLabels(K, variant="port", epsilon=0.2)(x, labels=y))
    np.testing.assert_allclose(port, _initial("port", 0.2)[y], atol=1e-7)
    np.testing.assert_allclose(port.sum(axis=1), 1.0, atol=1e-6)


def test_get_config_round_trip():
    teacher = OnlineSoftLabels(7, variant="port", epsilon=0.25, name="ols")
    config = teacher.get_config()
    assert (config["num_classes"], config["variant"], config["epsilon"]) == (
        7,
        "port",
        0.25,
    )
    clone = OnlineSoftLabels.from_config(config)
    assert (clone.num_classes, clone.variant, clone.epsilon) == (7, "port", 0.25)
    np.testing.assert_array_equal(clone.soft_labels, teacher.soft_labels)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(teacher)
    )
    assert isinstance(restored, OnlineSoftLabels) and restored.variant == "port"


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"variant": "paper"}, "variant"),
        ({"variant": None}, "variant"),
        ({"epsilon": 1.0}, "epsilon"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"epsilon": True}, "epsilon"),
        ({"epsilon": "0.1"}, "epsilon"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    kwargs = {"num_classes": K, **kwargs}
    with pytest.raises(ValueError, match=f"`{name}`.*{name}="):
        OnlineSoftLabels(**kwargs)


def test_call_needs_labels():
    with pytest.raises(ValueError, match="labels"):
        OnlineSoftLabels(K)(np.zeros((2, D), "float32"))


@pytest.mark.parametrize("variant", ["official", "port"])
def test_state_survives_save_and_load(tmp_path, variant):
    x, y, w0 = _data()
    distiller = _distiller(w0, variant)
    distiller.fit(x, y, epochs=1, batch_size=B, shuffle=False, verbose=0)
    # A step outside `fit` (no epoch hooks) leaves running sums to save.
    distiller.train_on_batch(x[:B], y[:B])
    teacher = distiller.teacher
    assert _np(teacher.class_counts).sum() > 0
    path = tmp_path / "ols.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.teacher, OnlineSoftLabels)
    assert loaded.teacher.variant == variant
    np.testing.assert_array_equal(loaded.teacher.soft_labels, teacher.soft_labels)
    for name in ("class_sums", "class_counts"):
        np.testing.assert_array_equal(
            _np(getattr(loaded.teacher, name)), _np(getattr(teacher, name))
        )
