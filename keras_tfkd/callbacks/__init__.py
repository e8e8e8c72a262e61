"""Keras callbacks for distillation: schedules, self-teacher snapshots, monitors.

What is where (every name is importable from `keras_tfkd.callbacks`):

* `schedulers` - `AlphaScheduler` / `TemperatureScheduler` /
  `WeightScheduler`: change the Distiller's ``alpha``, temperature or any
  loss weight by name at each epoch begin, like
  `keras.callbacks.LearningRateScheduler`, without retracing the train step;
  the value in use is logged as ``alpha`` / ``temperature`` / its name.
* `self_teacher` - `SelfTeacherSnapshot` keeps a frozen copy of the student
  (the best by a monitored metric, or the last) as the teacher of the next
  stage; `freeze_copy` is a frozen clone of a model with its current weights;
  `Generation` is one stage of `keras_tfkd.born_again.born_again`.
* `monitors` - `SoftTargetMonitor` logs what the paper plots to argue that KD
  is a learned label smoothing: the mean probability the soft targets put on
  the true class and their mean entropy, at the current temperature, plus the
  teacher's accuracy.
* `checkpoint` - `StudentCheckpoint`: `keras.callbacks.ModelCheckpoint` that
  saves the student alone (the deployable model) rather than the Distiller.
* `safety` - `NaNGuard` (raising `NonFiniteLossError`) stops training at the
  first non-finite loss and names the epoch and batch; `RunBackup` is
  `keras.callbacks.BackupAndRestore` with atomic epoch-end backups and extra
  JSON state, so a killed run resumes where it stopped.

`born_again`, the multi-generation training loop, is a workflow rather than a
callback: it is `keras_tfkd.born_again.born_again`.

Put the schedulers and monitors *before* `keras.callbacks.CSVLogger` or
`TensorBoard` in the ``callbacks`` list: callbacks run in list order, and the
loggers only see the keys written into the epoch logs before them (Keras's
`History` and progress bar always run last, so they see everything).
"""

from __future__ import annotations

from keras_tfkd.callbacks.checkpoint import StudentCheckpoint
from keras_tfkd.callbacks.monitors import SoftTargetMonitor
from keras_tfkd.callbacks.safety import NaNGuard, NonFiniteLossError, RunBackup
from keras_tfkd.callbacks.schedulers import (
    AlphaScheduler,
    TemperatureScheduler,
    WeightScheduler,
)
from keras_tfkd.callbacks.self_teacher import (
    Generation,
    SelfTeacherSnapshot,
    freeze_copy,
)

__all__ = [
    "AlphaScheduler",
    "WeightScheduler",
    "TemperatureScheduler",
    "SelfTeacherSnapshot",
    "SoftTargetMonitor",
    "StudentCheckpoint",
    "Generation",
    "freeze_copy",
    "NaNGuard",
    "NonFiniteLossError",
    "RunBackup",
]
