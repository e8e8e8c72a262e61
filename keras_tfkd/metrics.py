"""Metrics computed on the host from predicted logits (NumPy).

`accuracy` and the calibration metrics `expected_calibration_error`,
`negative_log_likelihood` and `brier_score` take NumPy logits ``(N, K)`` and
labels (integer ``(N,)``/``(N, 1)``, or one-hot ``(N, K)``) and return a
float, computed in float64; this module does not import Keras.

The same calibration metrics as `keras.metrics.Metric` objects, for
``compile(metrics=[...])`` and a `Distiller`'s `evaluate` logs, are
`ExpectedCalibrationError`, `NegativeLogLikelihood` and `BrierScore`
(defined in `keras_tfkd.calibration`, imported from here on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

# Shared with keras_tfkd.calibration, which imports it from the lower module
# (so that module never imports this one back); still importable from here.
from keras_tfkd._input_checks import check_num_bins

if TYPE_CHECKING:  # imported on first use by __getattr__, below
    from keras_tfkd.calibration import (
        BrierScore,
        ExpectedCalibrationError,
        NegativeLogLikelihood,
    )

__all__ = [
    "accuracy",
    "expected_calibration_error",
    "negative_log_likelihood",
    "brier_score",
    "ExpectedCalibrationError",
    "NegativeLogLikelihood",
    "BrierScore",
]

# The Keras metrics, imported from keras_tfkd.calibration on first use: the
# `keras-tfkd` command imports this module before it sets KERAS_BACKEND.
_KERAS_METRICS = ("ExpectedCalibrationError", "NegativeLogLikelihood", "BrierScore")


def __getattr__(name):
    if name in _KERAS_METRICS:
        from keras_tfkd import calibration

        value = getattr(calibration, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_tfkd.metrics' has no attribute {name!r}")


def accuracy(logits, labels):
    """Top-1 accuracy, ``mean_n [argmax_k logits[n, k] == labels[n]]``, as a float.

    NaN when any logit is not finite (a diverged model has no accuracy), so a
    NaN model is never reported at chance level or better.

    >>> accuracy(np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([0, 0]))
    0.5
    >>> accuracy(np.array([[np.nan, 1.0]]), np.array([1]))
    nan
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if not np.all(np.isfinite(logits)):
        return float("nan")
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _calibration_inputs(logits, labels, sample_weight):
    """float64 log-probabilities, one-hot targets and weights, or None if not finite."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape (N, K), got shape {logits.shape}.")
    n, k = logits.shape
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[-1] == k != 1:
        targets = labels.astype(np.float64)
    else:
        targets = np.eye(k)[labels.reshape(-1).astype(np.int64)]
    if sample_weight is None:
        weights = np.ones(n)
    else:
        weights = np.broadcast_to(
            np.asarray(sample_weight, dtype=np.float64).reshape(-1), (n,)
        )
    if not np.all(np.isfinite(logits)):
        return None
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return logits, log_p, targets, weights


def _weighted_mean(values, weights):
    total = float(np.sum(weights))
    return float(np.sum(weights * values) / total) if total else float("nan")


def expected_calibration_error(logits, labels, num_bins=15, sample_weight=None):
    """Expected calibration error with `num_bins` equal-width confidence bins.

    With ``p = softmax(logits)``, each example has a confidence
    ``conf = max_k p_k`` and is correct when ``argmax_k logits == label``; it
    falls in bin ``b = min(floor(conf * num_bins), num_bins - 1)`` (bins of
    width ``1 / num_bins`` on [0, 1], a confidence of 1 in the last one)::

        ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|

    with ``acc(B_b)`` and ``conf(B_b)`` the mean correctness and confidence
    in bin ``b``. A `sample_weight` weighs the counts. NaN when a logit is not
    finite or the total weight is 0. `ExpectedCalibrationError` is the same as
    a Keras metric.

    >>> logits = np.log(np.array([[0.9, 0.1], [0.6, 0.4]]))
    >>> # confidences 0.9 (right) and 0.6 (wrong), both in the bin [0.5, 1]:
    >>> round(expected_calibration_error(logits, np.array([0, 1]), num_bins=2), 4)
    0.25
    """
    num_bins = check_num_bins(num_bins)
    inputs = _calibration_inputs(logits, labels, sample_weight)
    if inputs is None:
        return float("nan")
    logits, log_p, targets, weights = inputs
    confidence = np.exp(log_p.max(axis=-1))
    correct = np.argmax(logits, axis=-1) == np.argmax(targets, axis=-1)
    bins = np.minimum(np.floor(confidence * num_bins), num_bins - 1).astype(np.int64)
    gap = np.bincount(bins, weights * (correct - confidence), minlength=num_bins)
    total = float(np.sum(weights))
    return float(np.abs(gap).sum() / total) if total else float("nan")


def negative_log_likelihood(logits, labels, sample_weight=None):
    """Mean negative log-likelihood of the labels, ``mean_n -log softmax(z_n)[y_n]``.

    With one-hot (or soft) labels ``q``: ``mean_n -sum_k q_k log p_k``.
    Computed through a stable `log_softmax`, so it stays finite for logits of
    1e4. A `sample_weight` gives a weighted mean. NaN when a logit is not
    finite. `NegativeLogLikelihood` is the same as a Keras metric.

    >>> round(negative_log_likelihood(np.log(np.array([[0.5, 0.5]])), [0]), 4)
    0.6931
    """
    inputs = _calibration_inputs(logits, labels, sample_weight)
    if inputs is None:
        return float("nan")
    _, log_p, targets, weights = inputs
    return _weighted_mean(-np.sum(targets * log_p, axis=-1), weights)


def brier_score(logits, labels, sample_weight=None):
    """Brier score, ``mean_n sum_k (p_nk - onehot(y_n)_k)^2`` with ``p = softmax(z)``.

    From 0 (certain and right) to 2 (certain and wrong). A `sample_weight`
    gives a weighted mean. NaN when a logit is not finite. `BrierScore` is the
    same as a Keras metric.

    >>> round(brier_score(np.log(np.array([[0.75, 0.25]])), [0]), 4)
    0.125
    """
    inputs = _calibration_inputs(logits, labels, sample_weight)
    if inputs is None:
        return float("nan")
    _, log_p, targets, weights = inputs
    return _weighted_mean(np.sum(np.square(np.exp(log_p) - targets), axis=-1), weights)
