"""The `keras-tfkd` command: a tiny study end to end, reruns, `run`, `list`, errors."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_tfkd import data, experiments
from keras_tfkd import runs as runs_lib
from keras_tfkd.cli import main

# The command's plumbing (a study on digits, reruns, run, list): one session;
# every method trains on every backend in its own tests.
pytestmark = pytest.mark.one_backend

# Small and fast: an MLP student and the conv net `cnn_tiny` as the strong model,
# 400 digits per split, 2 epochs (the De-KD teacher stops after 1), one seed.
STUDY_ARGS = [
    "study",
    "--epochs",
    "2",
    "--seeds",
    "0",
    "--student",
    "mlp",
    "--teacher",
    "cnn_tiny",
    "--limit",
    "400",
]
REQUIRED = {
    "method",
    "student",
    "teacher",
    "dataset",
    "seed",
    "epochs",
    "test_accuracy",
    "best_test_accuracy",
    "train_seconds",
    "backend",
    "hyperparameters",
    "experiment",
    "history",
    "key",
}


def _main(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    code, output = _main([*STUDY_ARGS, "--output-dir", str(folder)])
    assert code == 0
    return folder, output


def _records(folder):
    return json.loads((folder / "results.json").read_text())


def _by_method(records):
    return {(r["method"], r.get("role", "run")): r for r in records}


@pytest.mark.slow
def test_study_writes_every_method_and_the_outputs(study_dir):
    folder, output = study_dir
    records = _records(folder)
    runs = _by_method(records)
    assert {m for m, role in runs if role == "run"} == set(experiments.METHODS)
    for record in records:
        assert REQUIRED <= set(record), REQUIRED - set(record)
        if record["method"] in experiments.KL_FORM_METHODS:  # the KL, said once
            assert {"kl", "kl_weight", "kl_note"} <= set(record), record["method"]
        assert record["dataset"] == "digits" and record["seed"] == 0
        assert record["backend"] == keras.backend.backend()
        curve = record["history"]["test_accuracy"]
        assert len(curve) == record["epochs"]
        assert record["test_accuracy"] == curve[-1]
        assert record["best_test_accuracy"] == max(curve)
        assert 0.0 <= record["test_accuracy"] <= 1.0
        # The headline: test accuracy at the epoch of best validation accuracy.
        val = record["history"]["val_accuracy"]
        assert record["selected_epoch"] == len(val) - val[::-1].index(max(val))
        assert record["selected_test_accuracy"] == curve[record["selected_epoch"] - 1]
        assert record["hyperparameters"]["validation_examples"] == 40  # 10% of 400
    assert len({r["key"] for r in records}) == len(records)
    # 11 methods, the strong model's baseline, the De-KD teacher stopped early.
    assert len(records) == 13
    assert runs[("baseline", "run")]["epochs"] == 2
    dekd_teacher = runs[("baseline", "teacher")]
    assert (dekd_teacher["student"], dekd_teacher["epochs"]) == ("cnn_tiny", 1)
    assert dekd_teacher["hyperparameters"]["schedule_epochs"] == 2
    # Roles of the models: KD and De-KD teach the MLP with cnn_tiny; Re-KD
    # reverses them; Tf-KD_self distils the MLP into itself.
    pairs = {m: (r["student"], r["teacher"]) for (m, role), r in runs.items()}
    assert pairs["kd"] == pairs["dekd"] == ("mlp", "cnn_tiny")
    assert pairs["rekd"] == ("cnn_tiny", "mlp")
    assert pairs["tfkd_self"] == ("mlp", "mlp")
    assert pairs["tfkd_reg"] == pairs["lsr"] == ("mlp", None)
    # The published hyper-parameters of the source rows, carried to K = 10.
    kd = runs[("kd", "run")]
    assert kd["experiment"] == "kd/mobilenet_v2_from_resnet18"
    assert (kd["hyperparameters"]["alpha"], kd["hyperparameters"]["temperature"]) == (
        0.95,
        20.0,
    )
    assert kd["kl"] == "batchmean"
    assert kd["hyperparameters"]["multiplier"] == pytest.approx(0.01)
    assert runs[("tfkd_reg", "run")]["kl_weight"] == pytest.approx(0.95 * 1 / 100)
    assert runs[("lsr", "run")]["hyperparameters"]["epsilon"] == 0.1
    assert "kl" not in runs[("lsr", "run")]
    # Each teacher accuracy is that of the checkpoint it came from.
    teachers = {r["key"]: r for r in records}
    assert (
        kd["teacher_test_accuracy"] == teachers[kd["teacher_key"]]["best_test_accuracy"]
    )
    dekd = runs[("dekd", "run")]
    assert dekd["teacher_key"] == dekd_teacher["key"]
    assert dekd["teacher_test_accuracy"] == dekd_teacher["test_accuracy"]
    # Outputs: the printed table, results.md and a PNG.
    for label in ("Baseline", "LSR", "KD", "Re-KD", "De-KD", "Tf-KD_self", "Tf-KD_reg"):
        assert f"\n{label} " in output
    assert "De-KD teacher: cnn_tiny after 1 epoch" in output
    markdown = (folder / "results.md").read_text()
    table = markdown.split("\n## ", 1)[0]  # the main table, before the sections
    assert table.count("\n| ") == 1 + 12  # header + one row per (method, student)
    assert "## Does it help? (paired over seeds)" in markdown
    assert "| val-selected acc % | Δ val-selected |" in table
    assert "val-selected: mean Δ [95% CI]" in markdown
    assert "## Calibration (test set, after the last epoch)" in markdown
    assert (
        "KL term of KD: batch-mean KL, multiplier 0.01 (paper: 1 with KL/K at K=100)"
        in markdown
    )
    png = (folder / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_table_deltas_are_against_the_same_students_baseline(study_dir):
    folder, output = study_dir
    runs = _by_method(_records(folder))
    strong = [
        r
        for r in _records(folder)
        if r["method"] == "baseline" and r["student"] == "cnn_tiny"
    ]
    strong = next(r for r in strong if r.get("role", "run") == "run")
    delta = 100 * (
        runs[("rekd", "run")]["best_test_accuracy"] - strong["best_test_accuracy"]
    )
    line = next(line for line in output.splitlines() if line.startswith("Re-KD "))
    assert f"{delta:+.2f}" in line


@pytest.mark.slow
def test_best_checkpoint_is_the_best_epoch(study_dir):
    folder, _ = study_dir
    baseline = _by_method(_records(folder))[("baseline", "run")]
    model = keras.saving.load_model(folder / baseline["checkpoints"]["best"])
    dataset = data.load("digits", limit=400)
    logits = model.predict(data.pipeline(dataset, "test", 512), verbose=0)
    accuracy = float(np.mean(np.argmax(logits, -1) == dataset.labels("test")))
    assert accuracy == pytest.approx(baseline["best_test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_rerun_skips_finished_runs(study_dir):
    folder, _ = study_dir
    before = (folder / "results.json").read_text()
    checkpoints = sorted((folder / "checkpoints").rglob("*.keras"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    code, output = _main([*STUDY_ARGS, "--output-dir", str(folder), "--no-plot"])
    assert code == 0
    assert output.count("skipped (already in results.json)") == 12
    assert "  training " not in output and "normally ..." not in output
    assert (folder / "results.json").read_text() == before
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    # A new seed adds its runs; the finished ones stay, nothing is duplicated.
    new_seed = list(STUDY_ARGS)
    new_seed[new_seed.index("--seeds") + 1] = "1"  # the study ran seed 0
    code, output = _main(
        [*new_seed, "--output-dir", str(folder), "--no-plot", "--methods", "baseline"]
    )
    assert code == 0
    assert "[1/1] Baseline mlp, seed 1 ..." in output and "skipped" not in output
    records = _records(folder)
    assert records[:13] == json.loads(before)  # the finished runs are untouched
    assert len(records) == 14 and len({r["key"] for r in records}) == 14
    added = records[13]
    assert (added["method"], added["student"], added["seed"]) == ("baseline", "mlp", 1)
    assert added["epochs"] == 2 and "role" not in added


@pytest.mark.slow
def test_run_with_a_given_teacher_checkpoint(study_dir, tmp_path):
    folder, _ = study_dir
    teacher_run = next(
        r
        for r in _records(folder)
        if r["method"] == "baseline" and r["student"] == "cnn_tiny" and "role" not in r
    )
    checkpoint = folder / teacher_run["checkpoints"]["best"]
    argv = [
        "run",
        "--experiment",
        "kd/mobilenet_v2_from_resnet18",
        "--dataset",
        "digits",
        "--limit",
        "400",
        "--student",
        "mlp",
        "--teacher",
        "cnn_tiny",
        "--teacher-checkpoint",
        str(checkpoint),
        "--epochs",
        "1",
        "--optimizer",
        "adam",
        "--seed",
        "3",
        "--output-dir",
        str(tmp_path),
    ]
    code, output = _main(argv)
    assert code == 0
    (record,) = _records(tmp_path)
    assert record["experiment"] == "kd/mobilenet_v2_from_resnet18"
    assert (record["student"], record["teacher"], record["seed"]) == (
        "mlp",
        "cnn_tiny",
        3,
    )
    assert record["teacher_checkpoint"] == str(checkpoint)
    # Evaluated afresh: the same accuracy the study recorded for that checkpoint.
    assert record["teacher_test_accuracy"] == pytest.approx(
        teacher_run["best_test_accuracy"], abs=1e-6
    )
    assert record["kl"] == "batchmean" and record["kl_note"].startswith("batch-mean")
    assert "epoch 1/1" in output and "batch-mean KL" in output
    assert not (tmp_path / "checkpoints").exists()  # no teacher was trained


def _error(argv, capsys):
    """Exit status 2 and one or two lines, no traceback; the message."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("keras-tfkd: error: ") and err.count("\n") in (1, 2), err
    assert "Traceback" not in err
    return err


def test_unknown_names_exit_2_with_the_valid_list(capsys, tmp_path):
    out = ["--output-dir", str(tmp_path)]
    err = _error(["study", "--student", "resnet19", *out], capsys)
    assert "--student: unknown model 'resnet19'" in err and "Closest: resnet18" in err
    assert "`keras-tfkd list models`" in err
    err = _error(["study", "--dataset", "mnist", *out], capsys)
    assert "'mnist'" in err and "digits, fashion_mnist, cifar10" in err
    err = _error(["study", "--methods", "kd", "distill", *out], capsys)
    assert "'distill'" in err and "tfkd_reg" in err
    err = _error(["run", "--experiment", "tfkd_reg/resnet19", *out], capsys)
    assert "Closest: tfkd_reg/resnet18" in err
    assert "`keras-tfkd list experiments`" in err and len(err) < 400
    err = _error(
        ["run", "--experiment", "tfkd_reg/resnet18", "--teacher", "x", *out], capsys
    )
    assert "teacher" in err
    err = _error(
        ["run", "--experiment", "kd/cnn5_from_resnet18", "--alpha", "2", *out], capsys
    )
    assert "alpha=2.0" in err
    err = _error(
        ["run", "--experiment", "kd/cnn5_from_resnet18", "--student", "nope", *out],
        capsys,
    )
    assert "--student: unknown model 'nope'. No close match." in err
    assert f"prints the {len(runs_lib.model_names())} valid models." in err
    assert not any(tmp_path.iterdir())  # nothing was trained or written


def test_backend_already_imported_is_an_error(capsys, tmp_path):
    other = next(
        b for b in ("jax", "torch", "tensorflow") if b != keras.backend.backend()
    )
    err = _error(["study", "--backend", other, "--output-dir", str(tmp_path)], capsys)
    assert f"KERAS_BACKEND={other}" in err
    assert os.environ.get("KERAS_BACKEND") != other


def test_list(capsys):
    assert main(["list", "experiments"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == experiments.available()
    assert "alpha=0.1 T=20 m=1 (paper m=100)" in next(
        line for line in lines if "tfkd_reg/resnet18" in line
    )
    assert main(["list", "models"]) == 0
    assert capsys.readouterr().out.split() == runs_lib.model_names()
    assert main(["list", "datasets"]) == 0
    assert capsys.readouterr().out.split() == data.available()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "experiments:" in out and "imagenet_resnet50" in out and "  digits" in out


def test_results_store_merges_by_key_and_writes_atomically(tmp_path):
    store = runs_lib.ResultsStore(tmp_path / "results.json")
    store.add({"key": "a", "value": 1})
    store.add({"key": "b", "value": 2})
    store.add({"key": "a", "value": 3})
    assert store.records == [{"key": "a", "value": 3}, {"key": "b", "value": 2}]
    assert store.get("b") == {"key": "b", "value": 2} and store.get("c") is None
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp files
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o666 & ~umask
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="not a keras-tfkd results file"):
        runs_lib.ResultsStore(tmp_path / "bad.json").get("a")


def test_run_keys_change_with_every_identity_field():
    hp = {"alpha": 0.9, "batch_size": 64}
    key = runs_lib.run_key("kd", "a", "b", "digits", 0, 5, hp)
    variants = [
        runs_lib.run_key("lsr", "a", "b", "digits", 0, 5, hp),
        runs_lib.run_key("kd", "c", "b", "digits", 0, 5, hp),
        runs_lib.run_key("kd", "a", None, "digits", 0, 5, hp),
        runs_lib.run_key("kd", "a", "b", "cifar10", 0, 5, hp),
        runs_lib.run_key("kd", "a", "b", "digits", 1, 5, hp),
        runs_lib.run_key("kd", "a", "b", "digits", 0, 6, hp),
        runs_lib.run_key("kd", "a", "b", "digits", 0, 5, {**hp, "alpha": 0.8}),
    ]
    assert len({key, *variants}) == 8
    assert key == runs_lib.run_key(
        "kd", "a", "b", "digits", 0, 5, dict(reversed(hp.items()))
    )


def test_python_dash_m_help():
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "keras_tfkd", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for command in ("study", "run", "list"):
        assert command in done.stdout
    assert done.stdout.startswith("usage: keras-tfkd")


def test_missing_data_exits_1_with_where_to_put_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_TFKD_OFFLINE", "1")
    try:
        data.load("cifar10", tmp_path)
        pytest.skip("CIFAR-10 is installed on this machine")
    except data.DatasetNotFoundError:
        pass
    argv = ["run", "--experiment", "tfkd_reg/resnet18", "--dataset", "cifar10"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--data-dir", str(tmp_path), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 1
    assert err.startswith("keras-tfkd: error: ") and str(tmp_path) in err
    assert "Traceback" not in err


def test_study_command_defaults_are_the_study_defaults(monkeypatch, tmp_path):
    """`keras-tfkd study` with no flag runs StudyConfig() (the digits preset)."""
    from keras_tfkd import cli, study

    args = cli.build_parser().parse_args(["study"])
    assert args.preset == "digits" and args.methods is None
    seen = {}

    def fake_run_study(config, log=print, dataset=None):
        seen["config"] = config
        return {"table": ""}

    monkeypatch.setattr(study, "run_study", fake_run_study)
    out = str(tmp_path / "out")
    assert (
        cli.main(["study", "--backend", keras.backend.backend(), "--output-dir", out])
        == 0
    )
    config = seen["config"]
    assert config == study.StudyConfig(output_dir=out, preset="digits")
    assert config.seeds == (0, 1, 2, 3, 4) and config.methods == experiments.METHODS


@pytest.mark.parametrize(
    "given",
    [["kd,lsr"], ["kd", "lsr"], ["kd,", "lsr"]],
    ids=["commas", "spaces", "both"],
)
def test_study_methods_by_spaces_or_commas(given, monkeypatch, tmp_path):
    """`--methods kd,lsr` (as `--seeds 0,1`) is `--methods kd lsr`."""
    from keras_tfkd import cli, study

    seen = {}
    monkeypatch.setattr(
        study, "run_study", lambda config, **_: seen.update(c=config) or {"table": ""}
    )
    out = str(tmp_path / "out")
    argv = ["study", "--methods", *given, "--output-dir", out]
    assert cli.main([*argv, "--backend", keras.backend.backend()]) == 0
    assert seen["c"].methods == ("kd", "lsr")


def _flag(field):
    return "--" + field.replace("_", "-")


def test_run_field_flags_come_from_one_table_and_win_over_config(
    tmp_path, monkeypatch, capsys
):
    import dataclasses

    from keras_tfkd import cli

    table = cli.parser._RUN_FIELD_FLAGS
    fields = {f.name for f in dataclasses.fields(experiments.Experiment) if f.init}
    assert set(table) <= fields
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    run_help = capsys.readouterr().out
    for field in table:
        assert f"{_flag(field)} " in run_help, field
    seen = []

    def fake_execute(plan, dataset, **kwargs):
        seen.append(plan.experiment)
        raise SystemExit(0)

    monkeypatch.setattr(runs_lib, "execute", fake_execute)
    from_config = {"epochs": 2, "batch_size": 16, "alpha": 0.5, "temperature": 4.0}
    from_config.update(multiplier=2.0, correct_prob=0.9, epsilon=0.2)
    from_config.update(teacher_epochs=1, student="mlp", teacher="cnn_tiny")
    from_config.update(dataset="digits", kl="reference", teacher_batch_size=32)
    from_config.update(tckd_weight=2.0, nckd_weight=4.0, warmup_epochs=3)
    from_config.update(warmup_fraction=None)
    from_flags = {"epochs": 3, "batch_size": 8, "alpha": 0.25, "temperature": 2.0}
    from_flags.update(multiplier=3.0, correct_prob=0.8, epsilon=0.05)
    from_flags.update(teacher_epochs=2, student="cnn_tiny", teacher="mlp")
    from_flags.update(dataset="digits", kl="batchmean", teacher_batch_size=24)
    # warmup_fraction replaces warmup_epochs (which must then be 0)
    from_flags.update(tckd_weight=0.5, nckd_weight=6.0, warmup_epochs=0)
    from_flags.update(warmup_fraction=0.2)
    assert set(from_config) == set(from_flags) == set(table)
    config = tmp_path / "exp.json"
    config.write_text(json.dumps(from_config))
    argv = ["run", "--experiment", "kd/mobilenet_v2_from_resnet18"]
    argv += ["--config", str(config), "--limit", "50", "--output-dir", str(tmp_path)]
    flags = [a for k, v in from_flags.items() for a in (_flag(k), str(v))]
    for extra, expected in (([], from_config), (flags, from_flags)):
        with pytest.raises(SystemExit) as info:
            main([*argv, *extra])
        assert info.value.code == 0
        got = seen.pop()
        assert {k: getattr(got, k) for k in table} == expected
    capsys.readouterr()
