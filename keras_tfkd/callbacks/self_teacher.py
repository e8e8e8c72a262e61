"""Self-teachers: `freeze_copy` and `SelfTeacherSnapshot`.

A frozen copy of the student being trained is the teacher of the next stage:
the Tf-KD_self teacher, or the next born-again generation
(`keras_tfkd.born_again.born_again`, whose stages are `Generation` tuples).
"""

from __future__ import annotations

import math
import warnings
from collections import namedtuple

import keras
import numpy as np

__all__ = ["freeze_copy", "SelfTeacherSnapshot", "Generation"]


def _student_of(model):
    """The model being distilled: ``model.student`` for a Distiller, else `model`."""
    student = getattr(model, "student", None)
    return student if isinstance(student, keras.Model) else model


def freeze_copy(model, weights=None, name=None):
    """A frozen clone of `model`: same architecture, copied weights, not trainable.

    For a `Distiller` the student is copied. The clone shares no variable with
    the original (training the original later does not change it), has
    ``trainable = False`` and can be passed as the teacher of
    `keras_tfkd.recipes.tfkd_self` or `kd`.

    Args:
        model: a built `keras.Model` (Functional, Sequential, or a subclass
            with `get_config`), or a `Distiller`.
        weights: the list of arrays to load (as from ``model.get_weights()``);
            default: the model's current weights.
        name: name of the clone (default ``"<model name>_teacher"``).

    Example:

    ```python
    teacher = freeze_copy(trained_model)
    distiller = recipes.tfkd_self(fresh_model, teacher, alpha=0.95, temperature=6.0)
    ```
    """
    model = _student_of(model)
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got model={model!r}.")
    if not model.built:
        raise ValueError(
            f"`model` ({model.name!r}) is not built: call it on a batch first."
        )
    clone = keras.models.clone_model(model)
    if not clone.built:  # subclassed models come back from their config unbuilt
        build_config = model.get_build_config()
        if build_config is None:
            raise ValueError(
                f"Cannot rebuild a clone of {model.name!r}: it has no build config."
            )
        clone.build_from_config(build_config)
    clone.set_weights(model.get_weights() if weights is None else weights)
    clone.trainable = False
    clone.name = name or f"{model.name}_teacher"
    return clone


class SelfTeacherSnapshot(keras.callbacks.Callback):
    """Freezes a copy of the student being trained as the next stage's teacher.

    Tf-KD_self trains a model normally, then uses a frozen copy of it (the
    best checkpoint, in the reference code) as the teacher of a fresh model of
    the same architecture. This callback keeps that copy in memory:

    * with ``monitor=None`` it keeps the student as it is at the end of `fit`;
    * with ``monitor="val_accuracy"`` (any key of the epoch logs) it keeps the
      student of the best epoch so far (``mode="max"``/``"min"``; ``"auto"``
      maximises accuracy-like names and minimises the rest).

    `teacher` then returns a frozen clone (copied weights, ``trainable=False``)
    ready for `keras_tfkd.recipes.tfkd_self`. `snapshot()` takes a copy
    immediately, during or after a run. It works on a `Distiller` (the student
    is copied) or on a plain `keras.Model`. For several born-again
    generations in one call, see `keras_tfkd.born_again.born_again`.

    Args:
        monitor: the logged quantity that picks the best epoch, or None (last).
        mode: ``"auto"``, ``"max"`` or ``"min"``.

    Attributes:
        teacher: the frozen copy (a `keras.Model`); raises before any snapshot.
        best: the monitored value of the kept copy (None with ``monitor=None``).
        best_epoch: the 0-based epoch of the kept copy.

    Example:

    ```python
    snap = SelfTeacherSnapshot(monitor="val_accuracy")
    stage1 = recipes.baseline(build_model())
    stage1.compile(optimizer="adam", metrics=["accuracy"])
    stage1.fit(x, y, validation_data=(x_val, y_val), epochs=30, callbacks=[snap])
    stage2 = recipes.tfkd_self(build_model(), snap.teacher, alpha=0.95,
                               temperature=6.0)
    ```
    """

    _MAX_HINTS = ("acc", "auc", "precision", "recall", "f1", "iou", "top_k")

    def __init__(self, monitor=None, mode="auto"):
        super().__init__()
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(
                f"`monitor` must be a log key (str) or None, got monitor={monitor!r}."
            )
        if mode not in ("auto", "max", "min"):
            raise ValueError(
                f"`mode` must be 'auto', 'max' or 'min', got mode={mode!r}."
            )
        if mode == "auto" and monitor is not None:
            name = monitor.removeprefix("val_").lower()
            mode = "max" if any(h in name for h in self._MAX_HINTS) else "min"
        self.monitor = monitor
        self.mode = mode
        self.best = None
        self.best_epoch = None
        self._last_epoch = None
        self._weights = None
        self._source = None
        self._teacher = None

    def _keep(self, model, epoch, value=None):
        self._source = _student_of(model)
        self._weights = [np.array(w, copy=True) for w in self._source.get_weights()]
        self._teacher = None
        self.best_epoch = epoch
        self.best = value

    def snapshot(self, model=None):
        """Keep a copy of the student now (`best`, `best_epoch` become None).

        Returns the frozen teacher. `model` defaults to the model of the last
        `fit` this callback was used in.
        """
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("`snapshot()` needs a model: pass one or use it in fit.")
        self._keep(model, None)
        return self.teacher

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch, self._last_epoch = None, None, None
        self._weights, self._teacher = None, None

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if self.monitor is None:
            return
        logs = logs or {}
        if self.monitor not in logs:
            has_val = any(k.startswith("val_") for k in logs)
            if not self.monitor.startswith("val_") or has_val:
                raise ValueError(
                    f"SelfTeacherSnapshot: monitor={self.monitor!r} is not in the "
                    f"epoch logs; available keys: {sorted(logs)}."
                )
            return  # no validation this epoch (validation_freq > 1)
        value = float(logs[self.monitor])
        if math.isnan(value):
            return
        improved = (
            self.best is None
            or (self.mode == "max" and value > self.best)
            or (self.mode == "min" and value < self.best)
        )
        if improved:
            self._keep(self.model, epoch, value)

    def on_train_end(self, logs=None):
        if self.monitor is None:
            self._keep(self.model, self._last_epoch)
        elif self._weights is None:
            warnings.warn(
                f"SelfTeacherSnapshot: {self.monitor!r} was never logged; keeping "
                "the student as it is at the end of training.",
                stacklevel=2,
            )
            self._keep(self.model, self._last_epoch)

    @property
    def teacher(self):
        """The frozen copy of the kept student (built once, then cached)."""
        if self._weights is None:
            raise ValueError(
                "SelfTeacherSnapshot has no snapshot yet: pass it to `fit(..., "
                "callbacks=[snap])` or call `snap.snapshot(model)` first."
            )
        if self._teacher is None:
            self._teacher = freeze_copy(self._source, weights=self._weights)
        return self._teacher


Generation = namedtuple("Generation", ["index", "distiller", "history", "teacher"])
Generation.__doc__ = """One stage of `keras_tfkd.born_again.born_again`.

``index`` 0 is the normally trained model; ``distiller`` the trained Distiller;
``history`` its `keras.callbacks.History`; ``teacher`` a frozen copy of its
student (the teacher of generation ``index + 1``).
"""
