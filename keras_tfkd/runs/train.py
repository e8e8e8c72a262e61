"""`train`: plan one run and execute it; `execute`: run a `RunPlan`."""

from __future__ import annotations

from keras_tfkd import _io
from keras_tfkd.runs import loop
from keras_tfkd.runs.loop import default_log, finish
from keras_tfkd.runs.models import check_model_name
from keras_tfkd.runs.plan import plan_run
from keras_tfkd.runs.teacher_cache import load_teacher, normal_run, test_accuracy

__all__ = ["execute", "train"]


def execute(plan, dataset, *, store=None, log=default_log):
    """Run a `RunPlan` on its loaded `dataset`; return the record (skip if done).

    A normal run reuses its cached checkpoints; any other run first obtains
    its teacher as ``plan.teacher`` says (training or reusing the teacher's
    normal run, or loading the given checkpoint), then trains with a backup
    in ``plan.backup_dir`` that a rerun resumes from.
    """
    if plan.normal:
        return normal_run(plan, dataset, store=store, log=log)
    if store is not None:
        done = store.get(plan.key)
        if done is not None:
            return done
    record = plan.record()
    teacher = None
    if plan.teacher is not None:
        teacher_acc = None
        if plan.teacher.run is not None:
            teacher_record = normal_run(plan.teacher.run, dataset, store=store, log=log)
            teacher_acc = teacher_record.get(plan.teacher.accuracy_field)
            record["teacher_key"] = teacher_record["key"]
        teacher = load_teacher(
            plan.teacher.checkpoint,
            dataset,
            model=None if plan.teacher.run is None else plan.experiment.teacher,
        )
        if teacher_acc is None:
            teacher_acc = test_accuracy(teacher, dataset, plan.config)
        record["teacher_checkpoint"] = str(plan.teacher.checkpoint)
        record["teacher_test_accuracy"] = teacher_acc
    _, _, info = loop.fit(plan, dataset, teacher, keep_best_weights=False, log=log)
    record = finish(record, info)
    if store is not None:
        store.add(record)
    _io.remove_tree(plan.backup_dir)
    return record


def train(
    experiment,
    dataset,
    *,
    seed,
    output_dir,
    config=None,
    store=None,
    teacher_checkpoint_path=None,
    log=default_log,
):
    """Run one experiment with one seed; return its record (skip if finished).

    ``execute(plan_run(experiment, dataset, ...), dataset)``.

    Args:
        experiment: an `Experiment` (from `experiments.get`, maybe replaced).
        dataset: a loaded `keras_tfkd.data.Dataset`.
        seed: seeds the model initialisation, the data order and augmentation.
        output_dir: folder of the cached teacher checkpoints and backups.
        config: a `TrainConfig` (default: the reference optimiser).
        store: a `ResultsStore`; a run whose key is already there is skipped
            and its record returned.
        teacher_checkpoint_path: a trained teacher (``.keras``) to use instead
            of training one (kd, rekd, dekd, tfkd_self).
        log: called with one line of progress at a time.

    Returns:
        The record: method, student, teacher, dataset, seed, epochs,
        test_accuracy (final), best_test_accuracy (best over epochs) and
        best_epoch (the first epoch that reached it), train_seconds (wall
        time of `fit`, compilation and the per-epoch evaluation included),
        backend, hyperparameters (the key's hash covers them), experiment
        (the registry id it started from), kl, kl_weight and kl_note (the KL
        term's form and weight), teacher_test_accuracy, history (per-epoch
        test accuracy and losses), diverged.
    """
    check_model_name(experiment.student, "student")
    if experiment.teacher is not None:
        check_model_name(experiment.teacher, "teacher")
    plan = plan_run(
        experiment,
        dataset,
        seed=seed,
        output_dir=output_dir,
        config=config,
        teacher_checkpoint=teacher_checkpoint_path,
    )
    return execute(plan, dataset, store=store, log=log)
