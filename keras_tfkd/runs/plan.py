"""A run planned once: everything about it decided before anything trains.

`plan_run` resolves an `Experiment`, a loaded data set, a seed, a
`TrainConfig` and an output folder into an immutable `RunPlan`: the
hyper-parameters (with the KL term's form and weight), the number of epochs,
the result key, the checkpoint and backup folders and, for the methods that
need one, the plan of the teacher (a `TeacherPlan`: the normal run that
produces it and the checkpoint the student loads). `keras_tfkd.runs.train`
executes a plan; the command line (``keras-tfkd run``), the study and a
resumed run all read the same plan, so a setting is resolved in one place
and reaches the loss through ``plan.experiment.build`` with no trip back.

Example:

```python
from keras_tfkd import data, experiments, runs
exp = experiments.get("tfkd_reg/resnet18").replace(
    student="cnn_tiny", dataset="digits", epochs=3)
plan = runs.plan_run(exp, data.load("digits"), seed=0, output_dir="runs/x")
plan.key, plan.backup_dir, plan.record()["kl_weight"]
```
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from pathlib import Path

from keras_tfkd import experiments as experiments_lib
from keras_tfkd.runs.config import TrainConfig
from keras_tfkd.runs.models import checkpoint_name, model_fingerprint
from keras_tfkd.runs.store import run_key

__all__ = [
    "BACKUPS_DIR",
    "CHECKPOINTS_DIR",
    "RunPlan",
    "TeacherPlan",
    "plan_run",
    "planned_key",
]

CHECKPOINTS_DIR = "checkpoints"
BACKUPS_DIR = "backups"


@dataclasses.dataclass(frozen=True)
class TeacherPlan:
    """Where a run's teacher comes from.

    * ``source``: ``"trained"``, ``"early"`` or ``"self"`` (see
      `keras_tfkd.experiments.TEACHER_SOURCE`), or ``"checkpoint"`` when the
      user gave a trained teacher.
    * ``run``: the `RunPlan` of the normal run that produces it (None for a
      given checkpoint).
    * ``checkpoint``: the ``.keras`` file the student's run loads (the best
      checkpoint of that run, the final one for De-KD's early teacher).
    * ``accuracy_field``: the field of the teacher's record that is its test
      accuracy (``"test_accuracy"`` for the early teacher, else the best).
    """

    source: str
    checkpoint: Path
    run: RunPlan | None = None
    accuracy_field: str = "best_test_accuracy"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One run, resolved: read by `train`, the command line and the study.

    ``normal`` runs (baselines and teachers) keep ``best.keras``,
    ``final.keras`` (``.weights.h5`` for a model of yours,
    `runs.checkpoint_name`) and ``run.json`` in `folder`, shared by every run that
    needs the same one; the others keep only a backup while they train.
    """

    experiment: experiments_lib.Experiment
    dataset: str
    num_classes: int
    seed: int
    epochs: int
    config: TrainConfig
    hyperparameters: Mapping
    key: str
    output_dir: Path
    folder: Path
    backup_dir: Path
    normal: bool
    role: str | None = None
    teacher: TeacherPlan | None = None

    @property
    def label(self):
        """How progress lines name the run: the model of a normal run, else the id."""
        return self.experiment.student if self.normal else self.experiment.id

    def record(self):
        """The run's record before it runs: its fields and its key (a new dict)."""
        exp = self.experiment
        record = {
            "key": self.key,
            "method": exp.method,
            "student": exp.student,
            "teacher": exp.teacher,
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "seed": self.seed,
            "epochs": self.epochs,
            "experiment": exp.based_on or exp.id,
            "id": exp.id,
            "hyperparameters": dict(self.hyperparameters),
            "published_accuracy": exp.published_accuracy,
        }
        if exp.method in experiments_lib.KL_FORM_METHODS:
            record["kl"] = exp.kl
            record["kl_weight"] = exp.kl_weight(self.num_classes)
            record["kl_note"] = exp.kl_note(self.num_classes)
        if self.role is not None:
            record["role"] = self.role
        return record


def _folder_name(dataset, student, epochs, seed, key):
    digest = key.rsplit("/", 1)[-1]
    student = student.replace(":", ".")  # package.module:function
    return f"{dataset}-{student}-e{epochs}-s{seed}-{digest}"


def plan_run(
    experiment,
    dataset,
    *,
    seed,
    output_dir,
    config=None,
    teacher_checkpoint=None,
    stop_after=None,
):
    """Resolve one run of `experiment` on a loaded `dataset` into a `RunPlan`.

    Args:
        experiment: an `Experiment` (from `experiments.get`, maybe replaced).
        dataset: a loaded `keras_tfkd.data.Dataset` (its name, number of
            classes and split sizes enter the plan).
        seed: seeds the model initialisation, the data order and augmentation.
        output_dir: folder of the results, cached checkpoints and backups.
        config: a `TrainConfig` (default: the reference optimiser).
        teacher_checkpoint: a trained teacher (``.keras``) to use instead of
            training one (kd, rekd, dekd, tfkd_self).
        stop_after: train only this many epochs of the experiment's schedule
            (De-KD's early teacher); the run is then a teacher run.
    """
    config = config or TrainConfig()
    output_dir = Path(output_dir)
    epochs = stop_after or experiment.epochs
    hp = experiment.hyperparameters()
    hp.update(config.hyperparameters())
    hp["train_examples"] = dataset.num_examples("train")
    hp["test_examples"] = dataset.num_examples("test")
    if getattr(dataset, "validation", None) is not None:
        # Model selection on held-out training examples (`data.holdout`).
        hp["validation_examples"] = dataset.validation.num_examples("test")
        hp["validation_source"] = dataset.validation.source
    if getattr(dataset, "fingerprint", None):
        hp["data_fingerprint"] = dataset.fingerprint
    for role, name in (
        ("student", experiment.student),
        ("teacher", experiment.teacher),
    ):
        fingerprint = name and model_fingerprint(name, dataset)
        if fingerprint:
            hp[f"{role}_fingerprint"] = fingerprint
    if stop_after is not None:
        hp["schedule_epochs"] = experiment.epochs
    if teacher_checkpoint is not None:
        hp["teacher_checkpoint"] = str(teacher_checkpoint)
    key = run_key(
        experiment.method,
        experiment.student,
        experiment.teacher,
        dataset.name,
        seed,
        epochs,
        hp,
    )
    name = _folder_name(dataset.name, experiment.student, epochs, seed, key)
    normal = experiment.method == "baseline"
    if normal:
        folder = output_dir / CHECKPOINTS_DIR / name
        backup_dir = folder / "backup"
    else:
        folder = (
            output_dir
            / BACKUPS_DIR
            / (
                f"{experiment.method}-"
                f"{(experiment.teacher or 'none').replace(':', '.')}-{name}"
            )
        )
        backup_dir = folder
    teacher = _plan_teacher(
        experiment, dataset, seed, output_dir, config, teacher_checkpoint
    )
    return RunPlan(
        experiment=experiment,
        dataset=dataset.name,
        num_classes=int(dataset.num_classes),
        seed=int(seed),
        epochs=int(epochs),
        config=config,
        hyperparameters=types.MappingProxyType(hp),
        key=key,
        output_dir=output_dir,
        folder=folder,
        backup_dir=backup_dir,
        normal=normal,
        role="teacher" if stop_after is not None else None,
        teacher=teacher,
    )


def _plan_teacher(experiment, dataset, seed, output_dir, config, checkpoint):
    source = experiment.teacher_source
    if source is None:
        if checkpoint is not None:
            raise ValueError(
                f"Experiment {experiment.id!r} takes no teacher model, got "
                f"teacher_checkpoint={str(checkpoint)!r}."
            )
        return None
    if checkpoint is not None:
        return TeacherPlan(source="checkpoint", checkpoint=Path(checkpoint))
    early = source == "early"
    run = plan_run(
        experiment.teacher_experiment(),
        dataset,
        seed=seed,
        output_dir=output_dir,
        config=config,
        stop_after=experiment.teacher_epochs if early else None,
    )
    return TeacherPlan(
        source=source,
        checkpoint=run.folder
        / checkpoint_name(run.experiment.student, "final" if early else "best"),
        run=run,
        accuracy_field="test_accuracy" if early else "best_test_accuracy",
    )


def planned_key(experiment, dataset, seed, config=None, teacher_checkpoint_path=None):
    """The key `train` will give this run (look it up in a `ResultsStore`)."""
    return plan_run(
        experiment,
        dataset,
        seed=seed,
        output_dir=".",
        config=config,
        teacher_checkpoint=teacher_checkpoint_path,
    ).key
