"""`SoftTargetMonitor`: how much the soft targets look like label smoothing."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_tfkd import teachers as teachers_lib
from keras_tfkd._input_checks import leaves
from keras_tfkd.metrics import accuracy

__all__ = ["SoftTargetMonitor"]


def _batches(x, batch_size):
    """Yield ``(start, stop, x[start:stop])`` over arrays, dicts or lists of arrays."""
    n = len(next(iter(leaves(x))))
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        yield start, stop, _slice(x, start, stop)


def _slice(x, start, stop):
    if isinstance(x, dict):
        return {k: _slice(v, start, stop) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_slice(v, start, stop) for v in x)
    return x[start:stop]


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class SoftTargetMonitor(keras.callbacks.Callback):
    """Logs, per epoch, how much the soft targets look like label smoothing.

    On a fixed sample ``(x, y)`` the teacher's logits ``z_t`` are computed
    once at train begin (the teacher is frozen); at each epoch end, with
    ``T`` the Distiller's current (teacher-side) temperature and
    ``p = softmax(z_t / T)``, it writes to the epoch logs::

        soft_target_true_prob = mean_n p[n, y_n]
        soft_target_entropy   = mean_n -sum_k p[n, k] log p[n, k]   (nats)
        teacher_accuracy      = mean_n [argmax_k z_t[n, k] == y_n]

    A uniform target has true-class probability ``1/K`` and entropy
    ``log K``; label smoothing with ``eps`` puts ``1 - eps`` on the true class.
    The paper's point is that KD at a high temperature sits close to the
    uniform end. ``teacher_accuracy`` is logged for model (and cached)
    teachers only: a virtual or uniform teacher is built from the labels.
    The Distiller's own ``hard_loss`` and ``soft_loss`` terms are already in
    the logs; the values computed here are also kept in `history` (a dict of
    lists), which survives several `fit` calls.

    Works with model teachers, `VirtualTeacher`, `UniformTeacher` and a
    `CachedTeacher` (pass ``x`` as ``cached.attach(x)``).

    Args:
        x: inputs of the sample (what the teacher takes).
        y: integer labels ``(N,)`` / ``(N, 1)`` or one-hot rows ``(N, K)``.
        batch_size: batch size of the teacher's forward passes.
        prefix: prepended to the logged names (e.g. ``"val_"``).

    Example:

    ```python
    monitor = SoftTargetMonitor(x_val, y_val)
    distiller = recipes.kd(student, teacher, alpha=0.9, temperature=20.0)
    distiller.compile(optimizer="adam")
    history = distiller.fit(x, y, epochs=5, callbacks=[monitor])
    history.history["soft_target_true_prob"]   # close to 1/K at T = 20
    ```
    """

    def __init__(self, x, y, batch_size=256, prefix=""):
        super().__init__()
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1:
            y = y.argmax(axis=1)
        elif y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or y.size == 0 or y.dtype.kind not in "iu":
            raise ValueError(
                "`y` must be non-empty integer labels (N,) or (N, 1), or one-hot "
                f"rows (N, K); got an array of shape {y.shape} and dtype {y.dtype}."
            )
        n = len(next(iter(leaves(x))))
        if n != len(y):
            raise ValueError(
                f"`x` has {n} samples but `y` has {len(y)}: they must match."
            )
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be an integer >= 1, got batch_size={batch_size!r}."
            )
        self.x, self.y = x, y.astype("int64")
        self.batch_size = int(batch_size)
        self.prefix = prefix
        self.history = {}
        self._logits = None

    def _teacher_logits(self):
        teacher = getattr(self.model, "teacher", None)
        if teacher is None:
            raise ValueError(
                "SoftTargetMonitor needs a keras_tfkd.Distiller with a teacher, got "
                f"model={self.model!r}."
            )
        if getattr(teacher, "learns_from_student", False):
            raise ValueError(
                f"SoftTargetMonitor describes a fixed teacher's soft targets, but "
                f"{type(teacher).__name__} makes its targets from the student as "
                "it trains (keras_tfkd.online): read its own state instead "
                "(PastPredictions.predictions, OnlineSoftLabels.soft_labels)."
            )
        chunks = []
        for start, stop, xb in _batches(self.x, self.batch_size):
            yb = self.y[start:stop].astype("int32")
            z = teachers_lib.teacher_logits(teacher, xb, yb)
            if z is None:
                raise ValueError(
                    "The teacher returned no logits for `x`: a CachedTeacher "
                    "needs `x` packed with its logits, `SoftTargetMonitor("
                    "cached.attach(x), y)`."
                )
            chunks.append(np.asarray(ops.convert_to_numpy(z), dtype="float64"))
        logits = np.concatenate(chunks)
        if logits.shape[-1] <= int(self.y.max()):
            raise ValueError(
                f"`y` has label {int(self.y.max())} but the teacher predicts "
                f"{logits.shape[-1]} classes."
            )
        return logits

    def on_train_begin(self, logs=None):
        self._logits = self._teacher_logits()
        teacher = self.model.teacher
        self._label_teacher = (
            isinstance(teacher, teachers_lib.Teacher) and not teacher.requires_inputs
        )

    def compute(self, temperature=None):
        """The monitored values (a dict) at `temperature` (default: the current)."""
        if self._logits is None:
            self._logits = self._teacher_logits()
        if temperature is None:
            temperature = getattr(self.model, "teacher_temperature", None) or 1.0
        p = _softmax(self._logits / float(temperature))
        rows = np.arange(len(self.y))
        entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=-1)
        values = {
            "soft_target_true_prob": float(p[rows, self.y].mean()),
            "soft_target_entropy": float(entropy.mean()),
        }
        if not getattr(self, "_label_teacher", False):
            values["teacher_accuracy"] = accuracy(self._logits, self.y)
        return values

    def on_epoch_end(self, epoch, logs=None):
        for key, value in self.compute().items():
            name = f"{self.prefix}{key}"
            self.history.setdefault(name, []).append(value)
            if logs is not None:
                logs[name] = value
