"""Normal runs cached on disk, and the teachers loaded from them.

A normal run (a baseline, or the teacher of another method) keeps
``best.keras`` and ``final.keras`` (``student.save``) and ``run.json`` in its
plan's folder under ``<output_dir>/checkpoints/``, so every method and every
later run that needs the same teacher reuses it. A cache whose files are
truncated or corrupt is reported and trained again, never reused.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras

from keras_tfkd import _io, distribution
from keras_tfkd.runs import loop
from keras_tfkd.runs.config import TrainConfig
from keras_tfkd.runs.models import (
    build_model,
    check_model,
    checkpoint_name,
    is_custom_model,
)
from keras_tfkd.runs.plan import CHECKPOINTS_DIR, plan_run

__all__ = [
    "CorruptCheckpointError",
    "check_keras_file",
    "normal_run",
    "teacher_checkpoint",
]


class CorruptCheckpointError(ValueError):
    """A ``.keras`` file that is truncated or damaged."""


def check_keras_file(path, argument="checkpoint"):
    """Raise `CorruptCheckpointError` if `path` is not an intact ``.keras`` file.

    A ``.keras`` file is a zip archive: a truncated one has no central
    directory and a damaged one fails its CRC checks; both are caught here,
    before Keras tries to load it. The message names the file and says what
    to do.

    >>> check_keras_file("runs/x/checkpoints/.../best.keras")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{argument} not found: {argument}={str(path)!r}.")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        bad, names = f"not a complete .keras (zip) archive: {e}", None
    else:
        if bad is not None:
            bad = f"member {bad!r} is damaged"
        elif not {"config.json", "model.weights.h5"} <= names:
            bad = "config.json or model.weights.h5 is missing"
    if bad is not None:
        raise CorruptCheckpointError(
            f"The {argument} {str(path)!r} is truncated or corrupt ({bad}). "
            "Delete it and train it again (or pass another file)."
        )


def _check_checkpoint(path, argument):
    """`check_keras_file` for a ``.keras`` file; a weights file must be HDF5."""
    if path.suffix == ".keras":
        return check_keras_file(path, argument)
    with open(path, "rb") as f:
        if f.read(8) != b"\x89HDF\r\n\x1a\n":
            raise CorruptCheckpointError(
                f"The {argument} {str(path)!r} is truncated or corrupt (not an "
                "HDF5 weights file). Delete it and train it again."
            )


def _cached_record(folder, log, names):
    """The cached record of a finished normal run, or None (then: retrain)."""
    run_file = folder / "run.json"
    if not (run_file.exists() and all((folder / n).exists() for n in names)):
        return None
    try:
        record = json.loads(run_file.read_text())
    except json.JSONDecodeError:
        log(f"  {run_file} is not valid JSON: training this run again.")
        return None
    for name in names:
        try:
            _check_checkpoint(folder / name, "cached checkpoint")
        except CorruptCheckpointError as e:
            log(f"  {e} Training this run again.")
            _io.remove_file(run_file)
            return None
    return record


def _save_model(model, path):
    if str(path).endswith(".weights.h5"):
        _io.write_atomic(path, model.save_weights)
    else:
        _io.write_atomic(path, model.save)


def normal_run(plan, dataset, *, store=None, log=loop.default_log):
    """Execute a normal run's plan (or reuse its cache); return its record."""
    folder = plan.folder
    names = {w: checkpoint_name(plan.experiment.student, w) for w in ("best", "final")}
    cached = _cached_record(folder, log, names.values())
    if cached is not None and cached["key"] == plan.key:
        if store is not None and store.get(cached["key"]) is None:
            store.add(cached)
        return cached
    exp = plan.experiment
    what = f"{exp.student} ({plan.dataset}, seed {plan.seed}, {plan.epochs} epochs"
    what += f" of {exp.epochs})" if plan.role == "teacher" else ")"
    log(f"  training {what} normally ...")
    student, tracker, info = loop.fit(plan, dataset, keep_best_weights=True, log=log)
    folder.mkdir(parents=True, exist_ok=True)
    _save_model(student, folder / names["final"])
    if tracker.best_weights is not None:
        student.set_weights(tracker.best_weights)
    _save_model(student, folder / names["best"])
    record = loop.finish(plan.record(), info)
    record["checkpoints"] = {
        w: str(Path(CHECKPOINTS_DIR) / folder.name / names[w])
        for w in ("best", "final")
    }
    _io.write_json_atomic(folder / "run.json", record)
    if store is not None:
        store.add(record)
    _io.remove_tree(plan.backup_dir)
    # Several processes: the others read the teacher process 0 has just written.
    distribution.barrier("keras_tfkd.normal_run")
    return record


def teacher_checkpoint(
    experiment,
    dataset,
    *,
    seed,
    output_dir,
    config=None,
    store=None,
    log=loop.default_log,
):
    """Path of the teacher checkpoint of `experiment` (training it if needed).

    Returns ``(path, teacher_record)``: the best checkpoint of the teacher's
    normal run for kd/rekd/tfkd_self, the checkpoint after
    ``teacher_epochs`` epochs for dekd. Normal runs are cached in
    ``output_dir`` and reused by every run that needs the same one.
    """
    if experiment.teacher_source is None:
        raise ValueError(f"Experiment {experiment.id!r} has no teacher model.")
    plan = plan_run(
        experiment,
        dataset,
        seed=seed,
        output_dir=output_dir,
        config=config or TrainConfig(),
    )
    record = normal_run(plan.teacher.run, dataset, store=store, log=log)
    return plan.teacher.checkpoint, record


def load_teacher(path, dataset, model=None):
    """The trained teacher at `path`, checked: intact, one output, K classes.

    `model` names the checkpoint's model when it is one of yours
    (`runs.register_model`): it is then built by its function and the
    weights are loaded into it, so its custom layers need no registration.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Teacher checkpoint not found: teacher={str(path)!r}.")
    _check_checkpoint(path, "teacher checkpoint")
    custom = model is not None and is_custom_model(model)
    if custom:  # its output was checked when it was built (`check_model`)
        check_model(model, dataset)
    try:  # safe_mode=True (the default): no lambda/code from the file runs
        if custom:
            built = build_model(model, dataset.num_classes, dataset.input_shape)
            built.load_weights(path)
            return built
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        raise CorruptCheckpointError(
            f"Cannot load the teacher checkpoint {str(path)!r} "
            f"({type(e).__name__}: {e}). Delete it and train it again (or pass "
            "another file)."
        ) from e
    if not isinstance(model, keras.Model) or len(model.outputs or ()) != 1:
        raise ValueError(
            f"The teacher checkpoint {str(path)!r} is not a one-output logits model."
        )
    classes = model.output_shape[-1]
    if classes != dataset.num_classes:
        raise ValueError(
            f"The teacher checkpoint {str(path)!r} predicts {classes} classes but "
            f"{dataset.name!r} has {dataset.num_classes}."
        )
    return model


def test_accuracy(model, dataset, config):
    """A model's accuracy on the data set's test split."""
    return loop.split_accuracy(model, dataset, "test", config.eval_batch_size)
