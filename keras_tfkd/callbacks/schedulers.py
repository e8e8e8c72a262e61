"""`AlphaScheduler` and `TemperatureScheduler`: a Distiller knob per epoch.

Both set a non-trainable variable of the Distiller at each epoch begin, like
`keras.callbacks.LearningRateScheduler` sets the learning rate: the compiled
train step reads the new value at its next call on every backend (no
retrace, no recompile), and the value in use is logged as ``alpha`` /
``temperature``.
"""

from __future__ import annotations

import inspect
import math

import keras
from keras import ops

from keras_tfkd.callbacks._common import as_float

__all__ = ["AlphaScheduler", "TemperatureScheduler", "WeightScheduler"]


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
        value = as_float(raw)
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
        value = as_float(raw)
        if value is None or not math.isfinite(value) or value <= 0.0:
            raise ValueError(
                f"TemperatureScheduler: schedule(epoch={epoch}) returned "
                f"temperature={raw!r}; the temperature must be a finite number > 0."
            )
        return value


class WeightScheduler(_VariableScheduler):
    """Sets one loss weight of the Distiller, by name, at each epoch begin.

    `weight` is one of the Distiller's `weight_names`: ``"alpha"``,
    ``"hard_weight"``, ``"soft_weight"`` or, for a Distiller built with
    ``terms=[...]``, ``"<term name>_weight"``. As for `AlphaScheduler`, the
    compiled step reads the weight's variable, so the new value takes effect
    at the next step without retracing, and the value in use is logged per
    epoch under the weight's name.

    Args:
        weight: the weight's name.
        schedule: ``schedule(epoch) -> value`` (or ``schedule(epoch,
            current)``), a number >= 0 (in [0, 1] for ``alpha``).
        verbose: 1 prints the new value at each epoch begin.

    Example:

    ```python
    # Feature term: off for 2 epochs, then 0.1.
    warm = WeightScheduler("fitnet_weight", lambda epoch: 0.0 if epoch < 2 else 0.1)
    distiller.fit(x, y, epochs=10, callbacks=[warm])
    distiller.history.history["fitnet_weight"]  # [0.0, 0.0, 0.1, ...]
    ```
    """

    def __init__(self, weight, schedule, verbose=0):
        if not isinstance(weight, str):
            raise TypeError(
                "WeightScheduler's first argument is the weight's name (e.g. "
                f'"hard_weight" or "<term>_weight"), got weight={weight!r}.'
            )
        self.key = weight
        super().__init__(schedule, verbose=verbose)

    def _variable(self):
        names = getattr(self.model, "weight_names", None)
        if names is None:
            raise ValueError(
                "WeightScheduler needs a keras_tfkd.Distiller, got "
                f"model={self.model!r}."
            )
        if self.key not in names:
            raise ValueError(
                f"WeightScheduler: the Distiller has no weight {self.key!r}; its "
                f"weights are {list(names)}."
            )
        return self.model.weight_variable(self.key)

    def _check(self, epoch, raw):
        value = as_float(raw)
        upper = 1.0 if self.key == "alpha" else math.inf
        if value is None or not math.isfinite(value) or not 0.0 <= value <= upper:
            bound = "in [0, 1]" if self.key == "alpha" else "a finite number >= 0"
            raise ValueError(
                f"WeightScheduler: schedule(epoch={epoch}) returned "
                f"{self.key}={raw!r}; it must be {bound}."
            )
        return value
