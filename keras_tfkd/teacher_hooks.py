"""The hooks a `Distiller` runs for its weight schedules and stateful teachers.

Some methods need more than a loss per step: PS-KD's ramp and DKD's warm-up
change a weight every epoch (`keras_tfkd.weight_schedules`), and the online
teachers of `keras_tfkd.online` (PS-KD, OLS, CS-KD) keep state that they
update after every training step from the student's logits and at epoch
ends. `Distiller.fit` adds `EpochHooks` itself, first in the callback list,
so none of this needs anything from the user; a resumed fit
(``initial_epoch``) sees the same schedule.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_tfkd._batches import INPUTS_KEY, is_packed

__all__ = [
    "EpochHooks",
    "add_epoch_hooks",
    "add_nan_guard",
    "fit_callbacks",
    "update_after_step",
    "student_inputs",
]


class EpochHooks(keras.callbacks.Callback):
    """Sets the scheduled loss weights and runs the teachers' epoch hooks.

    The ``E`` of the schedules is the Distiller's `schedule_epochs` when set,
    else `fit`'s ``epochs``.
    """

    def __init__(self, distiller):
        super().__init__()
        self._distiller = distiller

    def _epochs(self):
        planned = self._distiller.schedule_epochs
        if planned is not None:
            return int(planned)
        return int((self.params or {}).get("epochs") or 1)

    def on_epoch_begin(self, epoch, logs=None):
        distiller = self._distiller
        weighting = distiller.loss_weighting
        weighting.apply_schedules(epoch, self._epochs())
        if weighting.step_schedules:
            steps = (self.params or {}).get("steps")
            if not steps:
                names = ", ".join(weighting.step_schedules)
                raise ValueError(
                    f"The warm-up of {names} (warmup_fraction) is a share of the "
                    "run's steps, but fit does not know the steps per epoch (a "
                    "dataset of unknown length): give fit steps_per_epoch=, or "
                    "use warmup_epochs."
                )
            weighting.set_run_steps(int(steps) * self._epochs())
        for teacher in distiller.hooked_teachers:
            teacher.on_epoch_begin(epoch, self._epochs())

    def on_epoch_end(self, epoch, logs=None):
        distiller = self._distiller
        for teacher in distiller.hooked_teachers:
            teacher.on_epoch_end(epoch)
        if logs is not None:
            distiller.loss_weighting.log(logs)


def add_epoch_hooks(distiller, kwargs):
    """`fit`'s keyword arguments with `EpochHooks` first among the callbacks.

    Only when there is something to run: a scheduled weight or a teacher with
    epoch hooks.
    """
    if not distiller.loss_weighting.schedules and not any(
        t.has_epoch_hooks for t in distiller.hooked_teachers
    ):
        return kwargs
    callbacks = kwargs.get("callbacks")
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.callbacks.insert(0, EpochHooks(distiller))
        callbacks.set_model(distiller)
    else:
        callbacks = [] if callbacks is None else list(callbacks)
        kwargs["callbacks"] = [EpochHooks(distiller), *callbacks]
    return kwargs


def fit_callbacks(distiller, kwargs):
    """`fit`'s keyword arguments with the epoch hooks and a NaN guard added."""
    return add_nan_guard(add_epoch_hooks(distiller, kwargs))


def add_nan_guard(kwargs):
    """`fit`'s keyword arguments with a `NaNGuard` last, unless one is there.

    A plain `fit` then stops at the first NaN/Inf loss with
    `keras_tfkd.callbacks.NonFiniteLossError`, whose message names the term
    that turned non-finite and its weights (`keras_tfkd.loss_report.explain`),
    instead of training on. Pass your own ``NaNGuard(raise_error=False)`` to
    stop without raising (as `keras_tfkd.runs` does); with Keras's
    `keras.callbacks.TerminateOnNaN` in the list no guard is added (it stops
    on its own terms).
    """
    from keras_tfkd.callbacks.safety import NaNGuard

    callbacks = kwargs.get("callbacks")
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return kwargs
    callbacks = [] if callbacks is None else list(callbacks)
    own = (NaNGuard, keras.callbacks.TerminateOnNaN)
    if not any(isinstance(c, own) for c in callbacks):
        kwargs["callbacks"] = [*callbacks, NaNGuard(raise_error=True)]
    return kwargs


def update_after_step(teachers, x, labels, logits):
    """Per-step state (PS-KD's predictions, OLS's class sums) from the student's
    gradient-stopped logits of this forward pass, before the weight update.

    Called by `Distiller.compute_loss` in training only: `evaluate` and
    `fit(validation_data=...)` never change a teacher's state.
    """
    if not teachers:
        return
    logits = ops.stop_gradient(ops.convert_to_tensor(logits))
    for teacher in teachers:
        teacher.update(x, labels, logits)


def student_inputs(teachers, inputs):
    """The part of a batch the student sees (a stateful teacher may pack more).

    A packed batch, ``{"inputs": x, "example_index": i, ...}``, gives the
    student ``x`` even when no teacher reads the rest (KD fed by
    ``data.pipeline(..., example_index=True)``: the indices are dropped).
    """
    if teachers:
        return teachers[0].student_inputs(inputs)
    return inputs[INPUTS_KEY] if is_packed(inputs) else inputs
