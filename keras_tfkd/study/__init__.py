"""The paper's whole comparison, small: every method on an offline data set.

`run_study` trains baseline, LSR, KD, Re-KD, De-KD, Tf-KD_self and Tf-KD_reg,
then PS-KD, CS-KD, OLS and DKD, over several seeds, then writes
``results.json`` (every run), ``results.md`` (the paper-style table, the
paired claims and calibration) and ``results.png`` (the headline accuracy on
its 0-100 scale, the difference with the baseline in accuracy points, the
paired intervals and the test-accuracy curves) to the output folder.
`StudyConfig.from_preset` names a study (`PRESETS`); `compare` runs one on
your own model and data. Accuracies are
the mean over seeds, with the sample standard deviation (``ddof=1``) when
there are several; with one seed no spread is shown (n = 1). With the
defaults it runs on scikit-learn's ``digits`` (8x8 images, K = 10, no
download) in a few minutes on two CPU cores.

The models play the paper's roles: the student ``cnn_tiny`` stands for
MobileNetV2 (the weak model) and the teacher ``cnn_small`` for ResNet18 (the
strong one). Each method takes the published hyper-parameters of the
matching registry row (`STUDY_SOURCES`), carried to K = 10 with unchanged
meaning (see `keras_tfkd.experiments`):

=========  ==========================================  ========================
method     runs                                        hyper-parameters of
=========  ==========================================  ========================
baseline   student and teacher, normally               --
lsr        student, eps = 0.1                          lsr/mobilenet_v2
kd         student <- teacher (best checkpoint)        kd/mobilenet_v2_from_resnet18
rekd       teacher <- student: the weak model teaches  rekd/resnet18_from_mobilenet_v2
dekd       student <- teacher after 1 epoch (*)        dekd/mobilenet_v2_from_resnet18
tfkd_self  student <- its own best normal checkpoint   tfkd_self/mobilenet_v2_from_...
tfkd_reg   student, virtual teacher                    tfkd_reg/mobilenet_v2
=========  ==========================================  ========================

(*) ``dekd_teacher_epochs`` epochs; in a one-epoch study, where a whole
epoch of training *is* the KD teacher, the first ``dekd_teacher_fraction``
(1/4) of that epoch instead (see `StudyConfig`).

The baseline runs are also the teachers (KD uses the teacher's baseline run,
Re-KD and Tf-KD_self the student's), so every comparison with the baseline is
paired: same seed, same initial weights, same batches. Training is Adam at a
learning rate of 1e-2 decayed to 0 along a cosine over the run (batch 64),
with the data set's reference augmentation (a random 1-pixel shift for
digits); the last partial batch of each epoch is dropped (one batch shape,
one compilation per model on JAX). The test accuracy is measured after every
epoch. Re-running into the same folder skips the finished runs and reuses
the teacher checkpoints. A run that ends near chance, or diverges, gets a
note in the log and in results.md saying why (`runs.explain_accuracy`).

The package: `config` (`StudyConfig`, `plan`, the De-KD teacher's plan),
`run` (`run_study`), `report` (`summarize`, the tables) and `figure`
(`plot`).

Example:

```python
from keras_tfkd import study
summary = study.run_study(study.StudyConfig(epochs=5, seeds=(0,),
                                            output_dir="runs/quick"))
print(summary["table"])
```
"""

from keras_tfkd.presets import PRESETS, Preset, preset
from keras_tfkd.study.compare import compare
from keras_tfkd.study.config import (  # METHOD_LABELS: public, not in __all__
    METHOD_LABELS,  # noqa: F401
    STUDY_SOURCES,
    TEACHER_FREE_METHODS,
    TEACHER_METHODS,
    StudyConfig,
    dekd_teacher_plan,
    plan,
)
from keras_tfkd.study.figure import plot
from keras_tfkd.study.report import format_markdown, format_table, summarize
from keras_tfkd.study.run import run_study

__all__ = [
    "PRESETS",
    "Preset",
    "STUDY_SOURCES",
    "StudyConfig",
    "TEACHER_FREE_METHODS",
    "TEACHER_METHODS",
    "compare",
    "dekd_teacher_plan",
    "format_markdown",
    "format_table",
    "plan",
    "plot",
    "preset",
    "run_study",
    "summarize",
]
