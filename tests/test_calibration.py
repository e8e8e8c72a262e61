"""Calibration metrics: the Keras metrics of `keras_tfkd.calibration` against the
NumPy references of `keras_tfkd.metrics`, and those against the textbook
formulas, on the current backend."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_tfkd import Distiller, calibration, metrics
from keras_tfkd.metrics import (
    BrierScore,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
)

KERAS_METRICS = {
    "ece": ExpectedCalibrationError,
    "nll": NegativeLogLikelihood,
    "brier": BrierScore,
}
NUMPY_METRICS = {
    "ece": metrics.expected_calibration_error,
    "nll": metrics.negative_log_likelihood,
    "brier": metrics.brier_score,
}
KINDS = sorted(KERAS_METRICS)
LOG_NAMES = {
    "ece": "expected_calibration_error",
    "nll": "negative_log_likelihood",
    "brier": "brier_score",
}
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _softmax(logits):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _problem(rng, n, k, scale=2.0):
    logits = (scale * rng.normal(size=(n, k))).astype("float32")
    # Half the labels are the argmax, so that the bins hold right and wrong.
    labels = np.where(
        rng.random(n) < 0.5, logits.argmax(-1), rng.integers(0, k, size=n)
    )
    return logits, labels.astype("int64")


def _accumulated(metric, batches):
    metric.reset_state()
    for batch in batches:
        metric.update_state(*batch)
    return float(metric.result())


# ------------------------------------------------- the NumPy references
def _ece_textbook(logits, labels, num_bins, weights):
    """``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``, bin by bin."""
    p = _softmax(logits)
    conf, pred = p.max(-1), logits.argmax(-1)
    total, ece = weights.sum(), 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        last = b == num_bins - 1
        member = (conf >= lo) & ((conf <= hi) if last else (conf < hi))
        w = weights[member]
        if w.sum() == 0:
            continue
        acc = np.sum(w * (pred[member] == labels[member])) / w.sum()
        mean_conf = np.sum(w * conf[member]) / w.sum()
        ece += w.sum() / total * abs(acc - mean_conf)
    return ece


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [2, 10, 100])
def test_numpy_references_match_the_textbook_formulas(rng, k, weighted):
    logits, labels = _problem(rng, 300, k)
    weights = rng.uniform(0.0, 2.0, size=300) if weighted else np.ones(300)
    sw = weights if weighted else None
    p = _softmax(logits)
    np.testing.assert_allclose(
        metrics.expected_calibration_error(logits, labels, 15, sample_weight=sw),
        _ece_textbook(logits, labels, 15, weights),
        rtol=1e-12,
    )
    nll = -np.log(p[np.arange(300), labels])
    np.testing.assert_allclose(
        metrics.negative_log_likelihood(logits, labels, sample_weight=sw),
        np.sum(weights * nll) / weights.sum(),
        rtol=1e-12,
    )
    brier = np.sum((p - np.eye(k)[labels]) ** 2, axis=-1)
    np.testing.assert_allclose(
        metrics.brier_score(logits, labels, sample_weight=sw),
        np.sum(weights * brier) / weights.sum(),
        rtol=1e-12,
    )


def test_numpy_references_are_nan_for_non_finite_logits():
    logits = np.array([[np.nan, 1.0], [0.0, 1.0]])
    for fn in NUMPY_METRICS.values():
        assert np.isnan(fn(logits, np.array([0, 1])))


# ----------------------------------------------- Keras metrics vs NumPy
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("kind", KINDS)
def test_accumulates_over_batches_as_numpy_on_the_concatenation(
    rng, kind, k, weighted, from_logits
):
    # (smaller logits for probabilities: none near the epsilon clip of the NLL)
    logits, labels = _problem(rng, 33, k, scale=2.0 if from_logits else 1.0)
    weights = rng.uniform(0.0, 2.0, size=33).astype("float32")
    weights[::7] = 0.0
    probabilities = _softmax(logits)
    if not from_logits:
        assert probabilities.min() > 1e-5
    y_pred = logits if from_logits else probabilities.astype("float32")
    batches = []
    for start, stop in [(0, 11), (11, 22), (22, 33)]:  # one shape: fast on JAX
        batch = [labels[start:stop], y_pred[start:stop]]
        if weighted:
            batch.append(weights[start:stop])
        batches.append(batch)
    metric = KERAS_METRICS[kind](from_logits=from_logits)
    expected = NUMPY_METRICS[kind](
        logits, labels, sample_weight=weights if weighted else None
    )
    np.testing.assert_allclose(_accumulated(metric, batches), expected, **TOL)
    # reset_state starts over: the second pass gives the same value.
    np.testing.assert_allclose(_accumulated(metric, batches), expected, **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_labels_integer_column_or_one_hot_and_weight_shapes(rng, kind):
    logits, labels = _problem(rng, 16, 10)
    weights = rng.uniform(0.0, 1.0, size=16).astype("float32")
    expected = NUMPY_METRICS[kind](logits, labels, sample_weight=weights)
    one_hot = np.eye(10, dtype="float32")[labels]
    for y in (labels, labels.astype("int32")[:, None], one_hot):
        for w in (weights, weights[:, None]):
            metric = KERAS_METRICS[kind]()
            metric.update_state(y, logits, sample_weight=w)
            np.testing.assert_allclose(float(metric.result()), expected, **TOL)
    # a weight of 0 removes an example
    keep = weights > 0.5
    metric = KERAS_METRICS[kind]()
    metric.update_state(labels, logits, sample_weight=keep.astype("float32"))
    np.testing.assert_allclose(
        float(metric.result()),
        NUMPY_METRICS[kind](logits[keep], labels[keep]),
        **TOL,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_extreme_and_float16_logits(rng, kind):
    logits, labels = _problem(rng, 16, 10, scale=1e4)
    metric = KERAS_METRICS[kind]()
    metric.update_state(labels, logits)
    value = float(metric.result())
    assert np.isfinite(value)
    np.testing.assert_allclose(value, NUMPY_METRICS[kind](logits, labels), **TOL)
    half, labels = _problem(rng, 16, 10)
    half = half.astype("float16")
    metric = KERAS_METRICS[kind]()
    metric.update_state(labels, half)
    np.testing.assert_allclose(
        float(metric.result()), NUMPY_METRICS[kind](half, labels), **TOL
    )


@pytest.mark.parametrize("kind", KINDS)
def test_empty_state_is_zero_and_non_finite_logits_give_nan(kind):
    metric = KERAS_METRICS[kind]()
    assert float(metric.result()) == 0.0
    metric.update_state([0, 1], np.array([[np.nan, 1.0], [0.0, 1.0]], "float32"))
    assert np.isnan(float(metric.result()))
    metric.reset_state()
    assert float(metric.result()) == 0.0


# ------------------------------------------------ ECE by hand
def test_ece_on_a_hand_computed_example():
    p = np.array([[0.95, 0.05], [0.85, 0.15], [0.55, 0.45], [0.57, 0.43]])
    labels = np.array([0, 1, 0, 1])
    # bins of 0.1: 0.95 right in bin 9 (gap 0.05), 0.85 wrong in bin 8 (0.85),
    # 0.55 right and 0.57 wrong in bin 5 (acc 0.5, conf 0.56: gap 0.06, 2 of 4).
    expected = (0.05 + 0.85 + 2 * 0.06) / 4
    assert expected == pytest.approx(0.255)
    for from_logits, y_pred in [(True, np.log(p)), (False, p)]:
        metric = ExpectedCalibrationError(num_bins=10, from_logits=from_logits)
        metric.update_state(labels, y_pred.astype("float32"))
        np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
        counts = metric.bin_counts.numpy()
        np.testing.assert_array_equal(counts, [0, 0, 0, 0, 0, 2, 0, 0, 1, 1])
    np.testing.assert_allclose(
        metrics.expected_calibration_error(np.log(p), labels, 10), expected
    )
    # one bin: |mean accuracy - mean confidence| = |0.5 - 0.73|
    metric = ExpectedCalibrationError(num_bins=1, from_logits=False)
    metric.update_state(labels, p.astype("float32"))
    np.testing.assert_allclose(float(metric.result()), 0.23, rtol=1e-6)


def test_a_confidence_of_one_goes_to_the_last_bin():
    logits = np.array([[1e4, 0.0], [0.0, 1e4]], "float32")
    metric = ExpectedCalibrationError(num_bins=10)
    metric.update_state([0, 0], logits)  # confidence 1, right then wrong
    assert float(metric.result()) == pytest.approx(0.5)
    np.testing.assert_array_equal(metric.bin_counts.numpy()[-1], 2.0)
    assert metrics.expected_calibration_error(logits, [0, 0], 10) == 0.5


@pytest.mark.parametrize("num_bins", [0, -3, 2.5, True, "15", None])
def test_num_bins_must_be_an_integer_of_at_least_one(num_bins):
    pattern = rf"num_bins={num_bins!r}".replace("(", r"\(").replace(".", r"\.")
    with pytest.raises(ValueError, match=pattern):
        ExpectedCalibrationError(num_bins=num_bins)
    with pytest.raises(ValueError, match="`num_bins`"):
        metrics.expected_calibration_error(np.zeros((1, 2)), [0], num_bins)
    assert ExpectedCalibrationError(num_bins=np.int64(4)).get_config()["num_bins"] == 4


# ------------------------------------------------ in Keras and the Distiller
def _dense_problem(rng):
    x = rng.normal(size=(20, 4)).astype("float32")
    y = rng.integers(0, 3, size=20)
    return x, y


def _dense():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


def _all_metrics():
    return [ExpectedCalibrationError(), NegativeLogLikelihood(), BrierScore()]


def _check_logs(logs, logits, y, sample_weight=None, prefix=""):
    for kind, name in LOG_NAMES.items():
        np.testing.assert_allclose(
            logs[prefix + name],
            NUMPY_METRICS[kind](logits, y, sample_weight=sample_weight),
            err_msg=prefix + name,
            **TOL,
        )


def test_in_compile_and_evaluate(rng):
    x, y = _dense_problem(rng)
    weights = rng.uniform(0.0, 2.0, size=20).astype("float32")
    model = _dense()
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=_all_metrics(),
        # compile's `metrics` ignore sample weights, `weighted_metrics` use them
        weighted_metrics=[
            ExpectedCalibrationError(name="weighted_expected_calibration_error"),
            NegativeLogLikelihood(name="weighted_negative_log_likelihood"),
            BrierScore(name="weighted_brier_score"),
        ],
    )
    logits = model.predict(x, verbose=0)
    logs = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    _check_logs(logs, logits, y)
    _check_logs(logs, logits, y, prefix="weighted_")
    logs = model.evaluate(
        x, y, sample_weight=weights, batch_size=8, verbose=0, return_dict=True
    )
    _check_logs(logs, logits, y)
    _check_logs(logs, logits, y, sample_weight=weights, prefix="weighted_")


def test_in_a_distillers_fit_and_evaluate_logs(rng):
    x, y = _dense_problem(rng)
    distiller = Distiller(student=_dense())
    distiller.compile(optimizer="sgd", metrics=_all_metrics())
    history = distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert set(LOG_NAMES.values()) <= set(history.history)
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert set(LOG_NAMES.values()) <= set(logs)
    logits = distiller.student.predict(x, verbose=0)
    _check_logs(logs, logits, y)


# ------------------------------------------------ serialising, importing
@pytest.mark.parametrize(
    "metric",
    [
        ExpectedCalibrationError(num_bins=7, from_logits=False, name="ece7"),
        NegativeLogLikelihood(from_logits=False, name="nll_p"),
        BrierScore(name="brier"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_serialization_round_trip(metric):
    config = json.loads(json.dumps(keras.metrics.serialize(metric)))
    assert config["registered_name"] == f"keras_tfkd>{type(metric).__name__}"
    clone = keras.metrics.deserialize(config)
    assert type(clone) is type(metric)
    assert clone.get_config() == metric.get_config()
    again = type(metric).from_config(metric.get_config())
    assert again.get_config() == metric.get_config()
    p = np.array([[0.7, 0.3], [0.2, 0.8]], "float32")
    metric.update_state([0, 0], p)
    clone.update_state([0, 0], p)
    assert float(clone.result()) == float(metric.result())


def test_exported_lazily_from_keras_tfkd_metrics():
    for name in ("ExpectedCalibrationError", "NegativeLogLikelihood", "BrierScore"):
        assert name in metrics.__all__ and name in calibration.__all__
        assert getattr(metrics, name) is getattr(calibration, name)
    for name in ("expected_calibration_error", "negative_log_likelihood"):
        assert name in metrics.__all__
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        metrics.Nope  # noqa: B018
    script = (
        "import sys, keras_tfkd.metrics as m\n"
        "m.expected_calibration_error([[1.0, 0.0]], [0]); m.brier_score\n"
        "print(sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
