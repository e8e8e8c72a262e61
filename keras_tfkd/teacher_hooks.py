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

__all__ = ["EpochHooks", "add_epoch_hooks", "update_after_step", "student_inputs"]


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
        distiller.loss_weighting.apply_schedules(epoch, self._epochs())
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
    """The part of a batch the student sees (a stateful teacher may pack more)."""
    return teachers[0].student_inputs(inputs) if teachers else inputs
