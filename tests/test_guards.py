"""Guards that no other test held (a mutation audit found each unguarded).

* the online teachers (PS-KD, OLS) learn from training steps only: `evaluate`
  and ``fit(validation_data=...)`` leave their state as it was;
* the epoch a run keeps as its best test epoch (and the KD teacher it keeps)
  when several epochs tie;
* the order of the CIFAR augmentation's steps (shift, flip, rotation).

Each test also checks that its data would show the mutation it guards
against (a write would change the state, the swapped orders give other
images), so that it cannot pass for want of a difference.
"""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfkd import Distiller, losses, recipes
from keras_tfkd.data import augment
from keras_tfkd.online import OnlineSoftLabels
from keras_tfkd.runs.loop import _TestAccuracy

N, D, K, BATCH = 12, 5, 3, 4


def _data(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(N, D)) * scale).astype("float32")
    y = rng.integers(0, K, N).astype("int32")
    return x, y


def _linear_student(seed=1):
    kernel = (np.random.default_rng(seed).normal(size=(D, K)) * 0.3).astype("float32")
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K, use_bias=False)])
    model.layers[0].kernel.assign(kernel)
    return model


def _softmax(z):
    z = np.asarray(z, "float64")
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------ online teachers: training steps only
def _pskd():
    distiller = recipes.ps_kd(_linear_student(), alpha=0.8)
    distiller.compile(optimizer=keras.optimizers.SGD(0.5))
    return distiller


def _ols():
    distiller = Distiller(
        student=_linear_student(),
        teacher=OnlineSoftLabels(K),
        soft_loss=losses.SoftTargetCrossEntropy(targets="probabilities"),
        alpha=0.5,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.5))
    return distiller


def _state(distiller):
    """Every variable of the Distiller's online teacher, as NumPy arrays."""
    return [np.array(ops.convert_to_numpy(v.value)) for v in distiller.teacher.weights]


def _assert_same_state(got, want):
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def _validation(method, distiller):
    """Validation data that a write of the teacher's state would show.

    PS-KD: other inputs, packed with the example indices of the training rows
    (a write would replace those rows of the store); OLS: labels the student
    gets right (a write would add to the class sums).
    """
    x_val, y_val = _data(seed=7, scale=3.0)
    if method == "pskd":
        return {"inputs": x_val, "example_index": np.arange(N, dtype="int32")}, y_val
    logits = distiller.student.predict(x_val, verbose=0)
    return x_val, np.argmax(logits, -1).astype("int32")


def _would_show(method, distiller, validation):
    """True if writing the validation batches would change the teacher's state."""
    x_val, y_val = validation
    inputs = x_val["inputs"] if method == "pskd" else x_val
    logits = distiller.student.predict(inputs, verbose=0)
    if method == "pskd":
        stored = ops.convert_to_numpy(distiller.teacher.predictions.value)
        return np.abs(_softmax(logits) - stored).max() > 1e-3
    return bool(np.any(np.argmax(logits, -1) == y_val))


@pytest.mark.parametrize("method", ["pskd", "ols"])
def test_evaluate_leaves_the_online_teacher_as_it_was(method):
    x, y = _data(seed=0)
    distiller = _pskd() if method == "pskd" else _ols()
    distiller.fit(x, y, epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
    validation = _validation(method, distiller)
    assert _would_show(method, distiller, validation)
    before = _state(distiller)
    distiller.evaluate(*validation, batch_size=BATCH, verbose=0)
    _assert_same_state(_state(distiller), before)


@pytest.mark.parametrize("method", ["pskd", "ols"])
def test_validation_data_leaves_the_online_teacher_as_it_was(method):
    """A fit with validation data ends in the state of the same fit without."""
    x, y = _data(seed=0)
    build = _pskd if method == "pskd" else _ols
    validation = _validation(method, build())
    kwargs = dict(epochs=2, batch_size=BATCH, shuffle=False, verbose=0)
    plain = build()
    plain.fit(x, y, **kwargs)
    validated = build()
    history = validated.fit(x, y, validation_data=validation, **kwargs)
    assert len(history.history["val_loss"]) == 2  # the validation pass ran
    # The last validation pass ran on the final weights (the same in both
    # fits): writing it would have changed the state (OLS: before the epoch
    # end made the matrix).
    assert _would_show(method, plain, validation)
    _assert_same_state(_state(validated), _state(plain))


# --------------------------------------------------- the best test epoch on ties
class _Student:
    """Stands in for a student: one epoch's logits per `predict`."""

    def __init__(self, logits):
        self.logits = list(logits)
        self.epoch = -1

    def predict(self, data, verbose=0):
        self.epoch += 1
        return self.logits[self.epoch]

    def get_weights(self):
        return [np.array(self.epoch)]


class _Model:
    def __init__(self, student):
        self.student = student


def _logits_with_accuracy(labels, accuracy):
    """Logits whose top-1 accuracy on `labels` is `accuracy` (NaN: not finite)."""
    n = len(labels)
    logits = np.zeros((n, K), "float32")
    if np.isnan(accuracy):
        logits[0, 0] = np.nan
        return logits
    correct = int(round(accuracy * n))
    predicted = np.where(np.arange(n) < correct, labels, (labels + 1) % K)
    logits[np.arange(n), predicted] = 1.0
    return logits


def test_the_best_test_epoch_is_the_first_of_equally_good_epochs():
    """The run's best test epoch, and the weights kept as its best checkpoint
    (the KD teacher of a normal run), are the *first* epoch that reached the
    best test accuracy; a later tie does not replace them, NaN never counts.

    (The validation selection, `_selected`, takes the last of equal epochs.)
    """
    labels = np.arange(10) % K
    curve = [0.5, 0.8, 0.6, 0.8, float("nan"), 0.8, 0.7]
    student = _Student([_logits_with_accuracy(labels, a) for a in curve])
    tracker = _TestAccuracy(
        None,
        labels,
        keep_best_weights=True,
        log=lambda line: None,
        every=0,
        total=len(curve),
        label="test",
    )
    tracker.set_model(_Model(student))
    for epoch in range(len(curve)):
        tracker.on_epoch_end(epoch, {})
    np.testing.assert_allclose(tracker.accuracies, curve)  # the curve as meant
    assert tracker.best == pytest.approx(0.8)
    assert tracker.best_epoch == 2  # 1-based: the first 0.8, not the 4th or 6th
    assert tracker.best_weights[0] == 1  # the weights of that epoch (0-based)


# ------------------------------------------------ the CIFAR augmentation's order
def test_cifar_augmentation_is_shift_then_flip_then_rotation():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (16, 32, 32, 3), dtype=np.uint8)  # asymmetric
    params = augment.sample("cifar", np.random.default_rng(4), 16, (32, 32))
    assert params["flip"].any() and (params["shift"][:, 0] != 0).any()
    steps = {
        "shift": lambda x: augment.shift(x, params["shift"]),
        "flip": lambda x: augment.flip(x, params["flip"]),
        "rotation": lambda x: augment.rotate(x, params["angle"]),
    }

    def composed(order):
        out = images
        for name in order:
            out = steps[name](out)
        return out

    got = augment.apply("cifar", images, params)
    documented = ("shift", "flip", "rotation")
    np.testing.assert_array_equal(got, composed(documented))
    for order in itertools.permutations(documented):
        if order != documented:  # every other order gives other images
            assert not np.array_equal(got, composed(order)), order
