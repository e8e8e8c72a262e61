"""Keras callbacks for distillation: schedules, self-teacher snapshots, monitors.

* `AlphaScheduler` / `TemperatureScheduler` - change the Distiller's ``alpha``
  or temperature at each epoch begin, like `keras.callbacks.LearningRateScheduler`.
  Both knobs live in non-trainable variables, so the compiled train step reads
  the new value at its next call on every backend (no retrace, no recompile),
  and the value in use is logged as ``alpha`` / ``temperature``.
* `SelfTeacherSnapshot` - keeps a frozen copy of the student (the best by a
  monitored metric, or the last) as the teacher of the next stage: the
  Tf-KD_self teacher, or the next born-again generation (`born_again`).
* `SoftTargetMonitor` - logs what the paper plots to argue that KD is a learned
  label smoothing: the mean probability the soft targets put on the true class
  and their mean entropy, at the current temperature, plus the teacher's
  accuracy.
* `StudentCheckpoint` - `keras.callbacks.ModelCheckpoint` that saves the student
  alone (the deployable model) rather than the whole Distiller.
* `freeze_copy` - a frozen clone of a model with its current weights.
* `NaNGuard` - stops training at the first non-finite loss and names the
  epoch and batch (the backup of the last good epoch is left untouched).
* `RunBackup` - `keras.callbacks.BackupAndRestore` whose backups are written
  atomically, at epoch ends, with extra JSON state (best accuracy so far,
  history) so a killed run resumes where it stopped.

Put the schedulers and monitors *before* `keras.callbacks.CSVLogger` or
`TensorBoard` in the ``callbacks`` list: callbacks run in list order, and the
loggers only see the keys written into the epoch logs before them (Keras's
`History` and progress bar always run last, so they see everything).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import tempfile
import warnings
from collections import namedtuple

import keras
import numpy as np
from keras import ops

from keras_tfkd import teachers as teachers_lib
from keras_tfkd.validation import leaves

__all__ = [
    "AlphaScheduler",
    "TemperatureScheduler",
    "SelfTeacherSnapshot",
    "SoftTargetMonitor",
    "StudentCheckpoint",
    "Generation",
    "born_again",
    "freeze_copy",
    "NaNGuard",
    "NonFiniteLossError",
    "RunBackup",
]


def _student_of(model):
    """The model being distilled: ``model.student`` for a Distiller, else `model`."""
    student = getattr(model, "student", None)
    return student if isinstance(student, keras.Model) else model


def _as_float(value):
    """`value` as a Python float, or None if it is not a real scalar number."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    try:
        array = np.asarray(ops.convert_to_numpy(value))
    except Exception:  # noqa: BLE001 - anything that is not a tensor/array
        return None
    if array.ndim != 0 or array.dtype.kind not in "iuf":
        return None
    return float(array)


def _takes_two_arguments(fn):
    """True if `fn` can be called as ``fn(epoch, current_value)``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is p.empty
    ]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return len(positional) >= 2


class _VariableScheduler(keras.callbacks.Callback):
    """Assigns ``schedule(epoch)`` to one variable of the model at epoch begin."""

    key = None  # the name logged per epoch, and the name used in messages

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"`schedule` must be a callable `schedule(epoch) -> {self.key}`, "
                f"got schedule={schedule!r}."
            )
        self.schedule = schedule
        self.verbose = int(verbose)
        self._two_args = _takes_two_arguments(schedule)

    def _variable(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _check(self, epoch, raw):  # pragma: no cover - overridden
        raise NotImplementedError

    def _current(self):
        return float(ops.convert_to_numpy(self._variable()))

    def on_train_begin(self, logs=None):
        self._variable()  # fail before the first step if the model has no such knob

    def on_epoch_begin(self, epoch, logs=None):
        variable = self._variable()
        if self._two_args:
            raw = self.schedule(epoch, self._current())
        else:
            raw = self.schedule(epoch)
        value = self._check(epoch, raw)
        # A plain variable assignment: TensorFlow's tf.function reads the
        # variable, JAX's trainer re-reads all variable state after
        # `on_epoch_begin`, and torch runs eagerly, so no step is retraced.
        variable.assign(value)
        if self.verbose:
            print(
                f"\nEpoch {epoch + 1}: {type(self).__name__} setting "
                f"{self.key} to {value:g}."
            )

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.key] = self._current()


class AlphaScheduler(_VariableScheduler):
    """Sets the Distiller's ``alpha`` (weight of the soft term) at each epoch begin.

    At the start of epoch ``e`` (0-based) the Distiller's alpha variable is
    assigned ``schedule(e)`` (or ``schedule(e, current_alpha)`` if the schedule
    takes two arguments, as `keras.callbacks.LearningRateScheduler` does). The
    loss of every step of that epoch is then::

        loss = (1 - schedule(e)) * hard + schedule(e) * soft

    The compiled train step reads the variable, so the new value takes effect
    at the next step on TensorFlow, JAX and PyTorch without retracing. The
    value in use is written to the epoch logs as ``alpha`` (so it appears in
    ``history.history["alpha"]``, `CSVLogger` files and TensorBoard).

    Args:
        schedule: ``schedule(epoch) -> alpha`` with alpha a number in [0, 1];
            anything else raises a `ValueError` naming the epoch and value.
        verbose: 1 prints the new value at each epoch begin.

    Example:

    ```python
    # Warm up on labels alone, then hand most of the weight to the teacher.
    ramp = AlphaScheduler(lambda epoch: min(0.95, 0.95 * epoch / 5))
    distiller.fit(x, y, epochs=20, callbacks=[ramp])
    distiller.history.history["alpha"]  # [0.0, 0.19, 0.38, ...]
    ```
    """

    key = "alpha"

    def _variable(self):
        variable = getattr(self.model, "alpha_variable", None)
        if variable is None:
            raise ValueError(
                "AlphaScheduler needs a keras_tfkd.Distiller (a model with an "
                f"`alpha_variable`), got model={self.model!r}."
            )
        return variable

    def _check(self, epoch, raw):
        value = _as_float(raw)
        if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(
                f"AlphaScheduler: schedule(epoch={epoch}) returned alpha={raw!r}; "
                "alpha must be a number in [0, 1]."
            )
        return value


class TemperatureScheduler(_VariableScheduler):
    """Sets the Distiller's soft-target temperature ``T`` at each epoch begin.

    The variable set is `Distiller.teacher_temperature_variable`: the teacher-side
    temperature of the first soft loss that has one. For normal KD and
    Tf-KD_self the teacher and student share that variable (and the ``T^2``
    factor follows it); for Tf-KD_reg it is the virtual teacher's ``T`` (the
    student side stays at 1, as in the reference code).

    As for `AlphaScheduler`, the compiled step reads the variable: the new
    value takes effect at the next step without retracing, and is logged per
    epoch as ``temperature``.

    Args:
        schedule: ``schedule(epoch) -> T`` with T a finite number > 0
            (``schedule(epoch, current_T)`` also works); anything else raises
            a `ValueError` naming the epoch and value.
        verbose: 1 prints the new value at each epoch begin.

    Example:

    ```python
    # Anneal T from 20 down to 4 over 10 epochs.
    anneal = TemperatureScheduler(lambda epoch: max(4.0, 20.0 - 1.6 * epoch))
    distiller = recipes.kd(student, teacher, alpha=0.9, temperature=20.0)
    distiller.fit(x, y, epochs=15, callbacks=[anneal])
    ```
    """

    key = "temperature"

    def _variable(self):
        variable = getattr(self.model, "teacher_temperature_variable", None)
        if variable is None:
            raise ValueError(
                "TemperatureScheduler needs a keras_tfkd.Distiller with a soft "
                "loss that has a temperature (e.g. SoftTargetKL), got "
                f"model={self.model!r}."
            )
        return variable

    def _check(self, epoch, raw):
        value = _as_float(raw)
        if value is None or not math.isfinite(value) or value <= 0.0:
            raise ValueError(
                f"TemperatureScheduler: schedule(epoch={epoch}) returned "
                f"temperature={raw!r}; the temperature must be a finite number > 0."
            )
        return value


# ----------------------------------------------------------- self-teachers


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
    generations in one call, see `born_again`.

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
Generation.__doc__ = """One stage of `born_again`.

``index`` 0 is the normally trained model; ``distiller`` the trained Distiller;
``history`` its `keras.callbacks.History`; ``teacher`` a frozen copy of its
student (the teacher of generation ``index + 1``).
"""


def _fresh_compile_kwargs(compile_kwargs):
    kwargs = dict(compile_kwargs or {})
    optimizer = kwargs.get("optimizer", "rmsprop")
    if isinstance(optimizer, keras.optimizers.Optimizer):
        # An optimizer instance is bound to the variables of its first model:
        # give every generation its own, with the same configuration.
        optimizer = optimizer.__class__.from_config(optimizer.get_config())
    elif callable(optimizer) and not isinstance(optimizer, str):
        optimizer = optimizer()
    kwargs["optimizer"] = optimizer
    return kwargs


def born_again(
    build_student,
    generations=1,
    *,
    recipe_kwargs=None,
    compile_kwargs=None,
    fit_kwargs=None,
    monitor=None,
    mode="auto",
    recipe=None,
    first=None,
):
    """Tf-KD_self / born-again training: each generation distils from the last.

    Generation 0 trains ``build_student()`` normally (``first``, default
    `keras_tfkd.recipes.baseline`). Generation ``g >= 1`` trains a fresh
    ``build_student()`` with ``recipe(student, teacher_{g-1}, **recipe_kwargs)``
    (default `keras_tfkd.recipes.tfkd_self`), where ``teacher_{g-1}`` is a
    frozen copy of generation ``g-1``'s student, taken by a
    `SelfTeacherSnapshot(monitor, mode)` (the best epoch by `monitor`, or the
    last epoch). ``generations=1`` is exactly Tf-KD_self.

    Args:
        build_student: a function of no argument returning a new, built
            student (fresh weights at each call).
        generations: the number of distilled generations after generation 0.
        recipe_kwargs: keyword arguments of `recipe` (e.g. ``alpha``,
            ``temperature``, ``multiplier``).
        compile_kwargs: keyword arguments of `Distiller.compile`. An
            optimizer instance is re-created from its config for every
            generation; a callable is called once per generation.
        fit_kwargs: keyword arguments of `Distiller.fit` (``x``, ``y``,
            ``epochs``, ``validation_data``...). ``callbacks`` may be a list
            (shared by all generations) or a function ``generation -> list``.
        monitor, mode: which epoch's student becomes the next teacher.
        recipe: ``recipe(student, teacher, **recipe_kwargs) -> Distiller``.
        first: ``first(student) -> Distiller`` for generation 0.

    Returns:
        A list of ``generations + 1`` `Generation` tuples
        ``(index, distiller, history, teacher)``.

    Example:

    ```python
    runs = born_again(
        lambda: models.get_model("cnn_tiny", 10, input_shape=(8, 8, 1)),
        generations=2,
        recipe_kwargs=dict(alpha=0.95, temperature=6.0),
        compile_kwargs=dict(optimizer="adam", metrics=["accuracy"]),
        fit_kwargs=dict(x=x, y=y, epochs=10, validation_data=(x_val, y_val)),
        monitor="val_accuracy",
    )
    [max(g.history.history["val_accuracy"]) for g in runs]
    ```
    """
    from keras_tfkd import recipes

    if not callable(build_student):
        raise TypeError(
            "`build_student` must be a function returning a new keras.Model, got "
            f"build_student={build_student!r}."
        )
    if (
        not isinstance(generations, (int, np.integer))
        or isinstance(generations, bool)
        or generations < 0
    ):
        raise ValueError(
            f"`generations` must be an integer >= 0, got generations={generations!r}."
        )
    recipe = recipes.tfkd_self if recipe is None else recipe
    first = recipes.baseline if first is None else first
    fit_kwargs = dict(fit_kwargs or {})
    callbacks = fit_kwargs.pop("callbacks", None)

    results, teacher = [], None
    for index in range(int(generations) + 1):
        student = build_student()
        if not isinstance(student, keras.Model):
            raise TypeError(
                f"`build_student()` must return a keras.Model, got {student!r}."
            )
        if index == 0:
            distiller = first(student)
        else:
            distiller = recipe(student, teacher, **(recipe_kwargs or {}))
        distiller.compile(**_fresh_compile_kwargs(compile_kwargs))
        snap = SelfTeacherSnapshot(monitor=monitor, mode=mode)
        extra = callbacks(index) if callable(callbacks) else callbacks
        history = distiller.fit(**fit_kwargs, callbacks=[*(extra or []), snap])
        teacher = snap.teacher
        results.append(Generation(index, distiller, history, teacher))
    return results


# ------------------------------------------------------------------ monitors


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
            values["teacher_accuracy"] = float(
                (self._logits.argmax(axis=-1) == self.y).mean()
            )
        return values

    def on_epoch_end(self, epoch, logs=None):
        for key, value in self.compute().items():
            name = f"{self.prefix}{key}"
            self.history.setdefault(name, []).append(value)
            if logs is not None:
                logs[name] = value


# ---------------------------------------------------------------- checkpoints


class _StudentView:
    """The Distiller as `ModelCheckpoint` sees it, with saving redirected.

    Everything (metrics for ``mode="auto"``, JAX state sync before saving)
    goes to the Distiller; only `save` and `save_weights` act on the student.
    """

    def __init__(self, distiller):
        self._distiller = distiller

    def __getattr__(self, name):
        if name == "_distiller":  # not set yet (e.g. during copy): no recursion
            raise AttributeError(name)
        return getattr(self._distiller, name)

    def save(self, filepath, *args, **kwargs):
        return self._distiller.student.save(filepath, *args, **kwargs)

    def save_weights(self, filepath, *args, **kwargs):
        return self._distiller.student.save_weights(filepath, *args, **kwargs)


class StudentCheckpoint(keras.callbacks.ModelCheckpoint):
    """`keras.callbacks.ModelCheckpoint` that saves the Distiller's student alone.

    Same arguments and behaviour as `ModelCheckpoint` (``monitor`` reads the
    Distiller's logs, e.g. ``"val_accuracy"`` of the student); the file holds
    the student only: a ``.keras`` model that `keras.saving.load_model` opens
    without keras_tfkd or the teacher, or ``.weights.h5`` weights that
    ``student.load_weights`` reads. On a plain model it is `ModelCheckpoint`.

    Example:

    ```python
    best = StudentCheckpoint("best_student.keras", monitor="val_accuracy",
                             save_best_only=True)
    distiller.fit(x, y, validation_data=(x_val, y_val), callbacks=[best])
    student = keras.saving.load_model("best_student.keras")
    ```
    """

    def set_model(self, model):
        if isinstance(getattr(model, "student", None), keras.Model):
            model = _StudentView(model)
        super().set_model(model)


# ------------------------------------------------------------ run safety


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf (raised by `NaNGuard`)."""


class NaNGuard(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN or Inf; name it.

    Like `keras.callbacks.TerminateOnNaN`, but the message says where it
    happened (epoch and batch, both counted from 1) and what to check, and a
    `RunBackup` placed after it in the ``callbacks`` list does not save the
    diverged weights: the last good backup stays on disk. A non-finite loss
    usually means NaN/Inf in the inputs or in the teacher's logits, or a
    learning rate that is too high.

    Args:
        raise_error: raise `NonFiniteLossError` (default) rather than only
            setting ``model.stop_training`` (then read `stopped_at`).
        log: called with the message when training stops (default: `warnings.warn`
            when not raising).

    Attributes:
        stopped_at: None, or ``{"epoch": e, "batch": b, "loss": value}``.
        message: the message, or None.

    Example:

    ```python
    guard = NaNGuard()
    distiller.fit(x, y, epochs=3, callbacks=[guard])  # NonFiniteLossError on NaN
    ```
    """

    def __init__(self, raise_error=True, log=None):
        super().__init__()
        self.raise_error = bool(raise_error)
        self.log = log
        self.stopped_at = None
        self.message = None
        self._epoch = 0

    @property
    def tripped(self):
        return self.stopped_at is not None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.tripped or not logs or "loss" not in logs:
            return
        loss = _as_float(logs["loss"])
        if loss is None or math.isfinite(loss):
            return
        self.stopped_at = {"epoch": self._epoch + 1, "batch": batch + 1, "loss": loss}
        self.message = (
            f"The training loss became {loss} at epoch {self._epoch + 1}, batch "
            f"{batch + 1}; training stopped. Check the inputs and the teacher's "
            "logits for NaN/Inf, or lower the learning rate. The last backup "
            "(if any) is from before this batch."
        )
        self.model.stop_training = True
        if self.raise_error:
            raise NonFiniteLossError(self.message)
        if self.log is not None:
            self.log(self.message)
        else:
            warnings.warn(self.message, RuntimeWarning, stacklevel=2)


def _write_atomic(path, write):
    """Call ``write(tmp_path)`` then move the result onto ``path`` atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = "".join(_suffixes(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _suffixes(path):
    name = os.path.basename(path)
    for ending in (".weights.h5", ".keras", ".json", ".npz"):
        if name.endswith(ending):
            return [ending]
    return []


class RunBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` made safe against a SIGKILL.

    At the end of every epoch it writes the Distiller's weights and optimizer
    state to a new ``epoch-<n>.weights.h5`` in `backup_dir`, then commits by
    atomically replacing ``backup.json`` (the finished epoch count, the weights
    file and the JSON-able ``state()`` of the caller); older weights files are
    removed after the commit. A run killed at any instant therefore finds
    either the previous backup or the new one, never a mix or a half-written
    file. On the first ``on_train_begin`` the weights of the backup (if any)
    are loaded; the caller reads `read_state` *before* ``fit`` to know where
    to start (``fit(..., initial_epoch=state["epoch"])``) and to restore its
    own state (best accuracy so far, history). Nothing is saved once a
    `NaNGuard` given as `guard` has tripped, so the backup stays the last good
    epoch. The folder is left in place at the end of training; delete it
    (`clear`) once the run's results are safely written.

    Args:
        backup_dir: the run's backup folder.
        state: optional callable returning a JSON-able dict saved with each
            backup (called at epoch end, after the callbacks before this one).
        guard: optional `NaNGuard`.

    Example:

    ```python
    backup = RunBackup("runs/demo/backup")
    start = (RunBackup.read_state("runs/demo/backup") or {}).get("epoch", 0)
    distiller.fit(x, y, epochs=10, initial_epoch=start, callbacks=[backup])
    backup.clear()
    ```
    """

    METADATA = "backup.json"

    def __init__(self, backup_dir, state=None, guard=None):
        super().__init__(
            os.fspath(backup_dir), save_freq="epoch", delete_checkpoint=False
        )
        self.state_fn = state
        self.guard = guard
        self._restored = False
        # Own state and saving only: every hook of BackupAndRestore is
        # overridden below, so none of its private state or files is used
        # (tests/test_keras_compat.py checks that no hook is left over).
        self._backup_epoch = 0

    @classmethod
    def read_state(cls, backup_dir):
        """The committed backup of `backup_dir` as a dict, or None if none.

        Raises a `ValueError` naming the file if it is not a backup.
        """
        path = os.path.join(os.fspath(backup_dir), cls.METADATA)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                meta = json.load(f)
            weights = os.path.join(os.fspath(backup_dir), meta["weights"])
            int(meta["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"The run backup {path!r} is unreadable ({e}). Delete the folder "
                f"{os.fspath(backup_dir)!r} to start this run again from scratch."
            ) from e
        if not os.path.exists(weights):
            raise ValueError(
                f"The run backup {path!r} names {weights!r}, which is missing. "
                f"Delete the folder {os.fspath(backup_dir)!r} to start this run "
                "again from scratch."
            )
        return meta

    def on_train_begin(self, logs=None):
        if self._restored:
            return
        self._restored = True
        meta = self.read_state(self.backup_dir)
        if meta is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        path = os.path.join(self.backup_dir, meta["weights"])
        try:
            self.model.load_weights(path)
        except Exception as e:
            raise ValueError(
                f"Cannot restore the run backup {path!r} ({type(e).__name__}: {e}). "
                f"Delete the folder {self.backup_dir!r} to start this run again "
                "from scratch."
            ) from e
        self._backup_epoch = int(meta["epoch"])

    def on_train_batch_end(self, batch, logs=None):
        pass  # epoch-end backups only: a resumed epoch must restart whole

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.tripped:
            return
        self._backup_epoch = epoch + 1
        self._save_backup()

    def _save_backup(self):
        epoch = self._backup_epoch
        name = f"epoch-{epoch}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        _write_atomic(path, lambda tmp: self.model.save_weights(tmp, overwrite=True))
        meta = {"epoch": epoch, "weights": name}
        if self.state_fn is not None:
            meta["state"] = self.state_fn()

        def dump(tmp):
            with open(tmp, "w") as f:
                json.dump(meta, f)

        _write_atomic(os.path.join(self.backup_dir, self.METADATA), dump)
        for other in os.listdir(self.backup_dir):
            if other.endswith(".weights.h5") and other != name:
                os.remove(os.path.join(self.backup_dir, other))

    def on_train_end(self, logs=None):
        pass

    def clear(self):
        """Delete the backup folder (call once the results are written)."""
        import shutil

        shutil.rmtree(self.backup_dir, ignore_errors=True)
