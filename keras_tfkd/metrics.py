"""Metrics computed on the host from predicted logits (NumPy)."""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy"]


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
