"""A run is planned once (`runs.plan_run`) and a CLI flag reaches the loss downward."""

import dataclasses
import sys
from pathlib import Path

import pytest

from keras_tfkd import data, experiments, runs
from keras_tfkd.cli import main

# Backend-independent (the run's plan and keys; training is covered on every
# backend elsewhere): one session.
pytestmark = pytest.mark.one_backend


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", limit=(64, 32))


def _exp(exp_id, **overrides):
    base = dict(student="cnn_tiny", dataset="digits", epochs=3, batch_size=16)
    if experiments.get(exp_id).teacher_source is not None:
        base["teacher"] = "cnn_small" if "tfkd_self" not in exp_id else "cnn_tiny"
    return experiments.get(exp_id).replace(**{**base, **overrides})


def test_a_plan_holds_every_decision_and_is_immutable(tmp_path, digits):
    exp = _exp("kd/mobilenet_v2_from_resnet18")
    plan = runs.plan_run(exp, digits, seed=4, output_dir=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 5
    with pytest.raises(TypeError):  # the hyper-parameters are read-only too
        plan.hyperparameters["alpha"] = 0.1
    assert (plan.seed, plan.epochs, plan.num_classes) == (4, 3, 10)
    assert plan.key == runs.planned_key(exp, digits, 4)
    assert plan.backup_dir.parent == Path(tmp_path) / runs.BACKUPS_DIR
    record = plan.record()
    assert record["key"] == plan.key and record["kl"] == "batchmean"
    assert record["kl_weight"] == pytest.approx(exp.kl_weight(10))
    assert record["hyperparameters"]["multiplier"] == exp.multiplier == 0.01
    # The teacher: a normal run of the teacher model, planned with the student.
    teacher = plan.teacher
    assert teacher.source == "trained" and teacher.run.normal
    assert teacher.run.experiment.student == "cnn_small"
    assert teacher.checkpoint == teacher.run.folder / "best.keras"
    assert teacher.run.folder.parent == Path(tmp_path) / runs.CHECKPOINTS_DIR


def test_teacher_plans_of_each_source(tmp_path, digits):
    dekd = runs.plan_run(
        _exp("dekd/mobilenet_v2_from_resnet18", teacher_epochs=1),
        digits,
        seed=0,
        output_dir=tmp_path,
    )
    assert dekd.teacher.source == "early" and dekd.teacher.run.epochs == 1
    assert dekd.teacher.run.role == "teacher"
    assert dekd.teacher.checkpoint.name == "final.keras"
    assert dekd.teacher.accuracy_field == "test_accuracy"
    given = tmp_path / "t.keras"
    kd = runs.plan_run(
        _exp("kd/mobilenet_v2_from_resnet18"),
        digits,
        seed=0,
        output_dir=tmp_path,
        teacher_checkpoint=given,
    )
    assert kd.teacher.source == "checkpoint" and kd.teacher.run is None
    assert kd.teacher.checkpoint == given
    assert kd.hyperparameters["teacher_checkpoint"] == str(given)
    reg = runs.plan_run(_exp("tfkd_reg/resnet18"), digits, seed=0, output_dir=tmp_path)
    assert reg.teacher is None and not reg.normal
    with pytest.raises(ValueError, match="takes no teacher model"):
        runs.plan_run(
            _exp("tfkd_reg/resnet18"),
            digits,
            seed=0,
            output_dir=tmp_path,
            teacher_checkpoint=given,
        )
    base = runs.plan_run(_exp("baseline/resnet18"), digits, seed=0, output_dir=tmp_path)
    assert base.normal and base.teacher is None
    assert base.backup_dir == base.folder / "backup"


def test_the_kl_setting_enters_the_key(tmp_path, digits):
    exp = _exp("tfkd_reg/resnet18")
    reference = exp.replace(kl="reference", multiplier=exp.published_multiplier)
    keys = {
        runs.plan_run(e, digits, seed=0, output_dir=tmp_path).key
        for e in (exp, reference)
    }
    assert len(keys) == 2
    assert reference.kl_weight(10) == pytest.approx(10 * exp.kl_weight(10))


# Layers, top to bottom: a flag may only travel downward on its way to the loss.
_LAYERS = ["cli", "runs", "experiments", "recipes", "losses"]


class _LossBuilt(Exception):
    pass


def test_a_run_flag_reaches_the_loss_without_climbing_back(tmp_path):
    """`keras-tfkd run --alpha --temperature`: the stack at the loss's constructor."""
    seen = {}

    def profile(frame, event, arg):
        if event != "call" or frame.f_code.co_name != "__init__":
            return
        if not frame.f_code.co_filename.endswith("keras_tfkd/losses.py"):
            return
        stack, f = [], frame
        while f is not None:
            name = f.f_globals.get("__name__", "")
            if name.startswith("keras_tfkd"):
                stack.append((name, f.f_code.co_name, f.f_locals.get("temperature")))
            f = f.f_back
        seen["stack"] = stack[::-1]
        raise _LossBuilt

    argv = ["run", "--experiment", "kd/resnet18_from_resnet50", "--student"]
    argv += ["cnn_tiny", "--teacher", "cnn_small", "--dataset", "digits"]
    argv += ["--limit", "64", "--epochs", "1", "--alpha", "0.5"]
    argv += ["--temperature", "3", "--teacher-checkpoint", str(_teacher(tmp_path))]
    argv += ["--output-dir", str(tmp_path / "out"), "--quiet"]
    sys.setprofile(profile)
    try:
        with pytest.raises(_LossBuilt):
            main(argv)
    finally:
        sys.setprofile(None)
    modules = []
    for name, _, _ in seen["stack"]:
        layer = name.split(".")[1]
        if not modules or modules[-1] != layer:
            modules.append(layer)
    assert modules == _LAYERS, seen["stack"]
    # ... and the value given on the command line is the one the loss gets.
    assert seen["stack"][-1][2] == 3.0


def _teacher(tmp_path):
    from keras_tfkd import models

    path = tmp_path / "teacher.keras"
    models.get_model("cnn_small", 10, input_shape=(8, 8, 1)).save(path)
    return path
