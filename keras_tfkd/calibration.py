"""Calibration metrics as `keras.metrics.Metric` objects, on every backend.

`ExpectedCalibrationError`, `NegativeLogLikelihood` and `BrierScore` take
integer labels (``(N,)`` or ``(N, 1)``) or one-hot labels ``(N, K)`` as
``y_true`` and logits ``(N, K)`` as ``y_pred`` (``from_logits=True``, the
default, as Keras's cross-entropy metrics; ``from_logits=False`` takes
probabilities), and accumulate over batches with `update_state`: they go in
``compile(metrics=[...])`` of a model or a `keras_tfkd.Distiller` (whose
`evaluate` logs them by name). Everything is computed in float32 through
`log_softmax`, so logits of magnitude 1e4 (or float16 logits) stay finite.
The state is a few float32 sums (weighted by `sample_weight`), summed across
replicas under a distribution strategy.

Import them from `keras_tfkd.metrics` (which imports this module on first
use); the NumPy references on host logits are
`keras_tfkd.metrics.expected_calibration_error`,
`~keras_tfkd.metrics.negative_log_likelihood` and
`~keras_tfkd.metrics.brier_score`.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_tfkd._input_checks import check_num_bins

__all__ = ["ExpectedCalibrationError", "NegativeLogLikelihood", "BrierScore"]


def _targets(y_true, num_classes):
    """float32 one-hot targets ``(N, K)`` from integer (``(N,)``, ``(N, 1)``) labels.

    One-hot (or soft) labels ``(N, K)`` are taken as they are.
    """
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == 2 and y_true.shape[-1] == num_classes != 1:
        return ops.cast(y_true, "float32")
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.one_hot(labels, num_classes, dtype="float32")


def _weights(sample_weight, like):
    """float32 per-example weights shaped as `like` ``(N,)`` (ones when None)."""
    ones = ops.ones_like(like)
    if sample_weight is None:
        return ones
    sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    return ones * ops.reshape(sample_weight, (-1,))


class _CalibrationMetric(keras.metrics.Metric):
    """Shared input handling: float32 predictions, one-hot targets, weights."""

    def __init__(self, from_logits=True, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.from_logits = bool(from_logits)

    def _sum_variable(self, name, shape=()):
        return self.add_variable(
            shape=shape, initializer="zeros", dtype="float32", name=name
        )

    def _inputs(self, y_true, y_pred):
        """``(scores, probabilities, log-probabilities, targets)``, all float32.

        `scores` are `y_pred` in float32 (logits or probabilities), for the
        argmax. With ``from_logits=False`` the probabilities are used as given
        and their log is taken of ``max(p, epsilon)`` (`keras.config.epsilon`),
        as Keras's cross-entropies do, so that a probability of 0 stays finite.
        """
        scores = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        if self.from_logits:
            log_p = ops.log_softmax(scores, axis=-1)
            p = ops.exp(log_p)
        else:
            p = scores
            log_p = ops.log(ops.clip(p, keras.config.epsilon(), 1.0))
        return scores, p, log_p, _targets(y_true, scores.shape[-1])

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="keras_tfkd")
class ExpectedCalibrationError(_CalibrationMetric):
    """Expected calibration error (ECE) with `num_bins` equal-width bins.

    With ``p = softmax(z)`` (or the probabilities themselves when
    ``from_logits=False``), each example has a confidence ``conf = max_k p_k``
    and is correct when ``argmax_k z_k`` is its label; it falls in bin
    ``b = min(floor(conf * num_bins), num_bins - 1)`` of [0, 1] (a confidence
    of exactly 1 in the last bin)::

        ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|
            = sum_b |sum_{n in B_b} (correct_n - conf_n)| / N

    with ``acc(B_b)`` and ``conf(B_b)`` the mean correctness and confidence in
    bin ``b``. The state is three float32 vectors of length `num_bins`, the
    per-bin sums of the (weighted) counts ``bin_counts``, confidences
    ``bin_confidence`` and correct predictions ``bin_correct``, accumulated
    over every batch since the last `reset_state`; a `sample_weight` weighs
    the counts. The result is 0 before any example, NaN after a non-finite
    logit. `keras_tfkd.metrics.expected_calibration_error` is the NumPy
    reference.

    Args:
        num_bins: the number of equal-width confidence bins, an int >= 1
            (default 15).
        from_logits: `y_pred` are logits (default True) or probabilities.
        name, dtype: as for any `keras.metrics.Metric`.

    Example:

    >>> import numpy as np
    >>> metric = ExpectedCalibrationError(num_bins=2)
    >>> # confidences 0.9 (right) and 0.6 (wrong), both in the bin [0.5, 1]:
    >>> metric.update_state([0, 1], np.log([[0.9, 0.1], [0.6, 0.4]]))
    >>> round(float(metric.result()), 4)  # |0.5 - 0.75|
    0.25
    """

    def __init__(
        self,
        num_bins=15,
        from_logits=True,
        name="expected_calibration_error",
        dtype=None,
    ):
        super().__init__(from_logits=from_logits, name=name, dtype=dtype)
        self.num_bins = check_num_bins(num_bins)
        self.bin_counts = self._sum_variable("bin_counts", (self.num_bins,))
        self.bin_confidence = self._sum_variable("bin_confidence", (self.num_bins,))
        self.bin_correct = self._sum_variable("bin_correct", (self.num_bins,))

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch: integer or one-hot `y_true`, logits (or probabilities)."""
        scores, p, _, targets = self._inputs(y_true, y_pred)
        confidence = ops.max(p, axis=-1)
        correct = ops.cast(
            ops.argmax(scores, axis=-1) == ops.argmax(targets, axis=-1), "float32"
        )
        weights = _weights(sample_weight, confidence)
        bins = ops.cast(ops.floor(confidence * self.num_bins), "int32")
        bins = ops.clip(bins, 0, self.num_bins - 1)
        in_bin = ops.one_hot(bins, self.num_bins, dtype="float32")  # (N, bins)

        def per_bin(values):
            return ops.sum(in_bin * ops.expand_dims(values, -1), axis=0)

        self.bin_counts.assign_add(per_bin(weights))
        self.bin_confidence.assign_add(per_bin(weights * confidence))
        self.bin_correct.assign_add(per_bin(weights * correct))

    def result(self):
        gaps = ops.sum(ops.abs(self.bin_correct - self.bin_confidence))
        return ops.divide_no_nan(gaps, ops.sum(self.bin_counts))

    def reset_state(self):
        for variable in (self.bin_counts, self.bin_confidence, self.bin_correct):
            variable.assign(ops.zeros((self.num_bins,), dtype="float32"))

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins}


class _MeanOverExamples(_CalibrationMetric):
    """A weighted mean over examples of `per_example`, kept as two float32 sums."""

    def __init__(self, from_logits=True, name=None, dtype=None):
        super().__init__(from_logits=from_logits, name=name, dtype=dtype)
        self.total = self._sum_variable("total")
        self.count = self._sum_variable("count")

    def per_example(self, p, log_p, targets):  # pragma: no cover - abstract
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch: integer or one-hot `y_true`, logits (or probabilities)."""
        _, p, log_p, targets = self._inputs(y_true, y_pred)
        values = self.per_example(p, log_p, targets)
        weights = _weights(sample_weight, values)
        self.total.assign_add(ops.sum(weights * values))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(ops.zeros((), dtype="float32"))
        self.count.assign(ops.zeros((), dtype="float32"))


@keras.saving.register_keras_serializable(package="keras_tfkd")
class NegativeLogLikelihood(_MeanOverExamples):
    """Mean negative log-likelihood of the labels::

        NLL = mean_n -log p_n[y_n],    p_n = softmax(z_n)

    (``mean_n -sum_k q_nk log p_nk`` for one-hot or soft labels ``q``), a
    weighted mean with `sample_weight`, accumulated over every batch since the
    last `reset_state`. With logits it is computed through `log_softmax`,
    finite for logits of 1e4; with ``from_logits=False`` ``p_y`` is clipped at
    `keras.config.epsilon` (an NLL of at most ~16.1 per example). It is
    Keras's sparse categorical cross-entropy, kept as a mean over examples
    for calibration studies. `keras_tfkd.metrics.negative_log_likelihood` is
    the NumPy reference.

    Args:
        from_logits: `y_pred` are logits (default True) or probabilities.
        name, dtype: as for any `keras.metrics.Metric`.

    Example:

    >>> import numpy as np
    >>> metric = NegativeLogLikelihood()
    >>> metric.update_state([0], np.log([[0.5, 0.5]]))
    >>> metric.update_state([1], np.log([[0.75, 0.25]]))
    >>> round(float(metric.result()), 4)  # (log 2 + log 4) / 2
    1.0397
    """

    def __init__(self, from_logits=True, name="negative_log_likelihood", dtype=None):
        super().__init__(from_logits=from_logits, name=name, dtype=dtype)

    def per_example(self, p, log_p, targets):
        return -ops.sum(targets * log_p, axis=-1)


@keras.saving.register_keras_serializable(package="keras_tfkd")
class BrierScore(_MeanOverExamples):
    """Brier score, the mean squared distance of ``p`` to the one-hot label::

        Brier = mean_n sum_k (p_nk - onehot(y_n)_k)^2,    p_n = softmax(z_n)

    from 0 (certain and right) to 2 (certain and wrong), a weighted mean with
    `sample_weight`, accumulated over every batch since the last
    `reset_state`. `keras_tfkd.metrics.brier_score` is the NumPy reference.

    Args:
        from_logits: `y_pred` are logits (default True) or probabilities.
        name, dtype: as for any `keras.metrics.Metric`.

    Example:

    >>> import numpy as np
    >>> metric = BrierScore(from_logits=False)
    >>> metric.update_state([0, 1], np.array([[0.75, 0.25], [1.0, 0.0]]))
    >>> round(float(metric.result()), 4)  # (0.125 + 2) / 2
    1.0625
    """

    def __init__(self, from_logits=True, name="brier_score", dtype=None):
        super().__init__(from_logits=from_logits, name=name, dtype=dtype)

    def per_example(self, p, log_p, targets):
        return ops.sum(ops.square(p - targets), axis=-1)
