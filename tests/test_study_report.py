"""The study's report: spread (n = 1, sample std), the plot, De-KD, notes.

Everything but the last test runs on constructed records (no training); the
last one is a tiny real study (KD and De-KD, one epoch, one seed).
"""

import json
import math

import numpy as np
import pytest

from keras_tfkd import runs as runs_lib
from keras_tfkd import study

# Backend-independent (the study's report on constructed records and one tiny
# study): one session.
pytestmark = pytest.mark.one_backend

K = 10


def _record(method, student, teacher, seed, best, final=None, *, epochs=1, **extra):
    """A result record with the fields the study's report reads."""
    final = best if final is None else final
    curve = [final] * epochs
    if epochs > 1 and best != final:
        curve[0] = best
    if epochs > 2:  # a rising start, so the curve has a shape
        curve[0] = min(curve[0], 0.5 * final)
        if best != final:
            curve[1] = best
    role = extra.pop("role", None)
    hp = {"batch_size": 64, "test_examples": 450, "train_examples": 1347}
    hp.update(extra.pop("hyperparameters", {}))
    record = {
        "key": f"{method}/{student}/{teacher}/seed{seed}/epochs{epochs}/{role}",
        "method": method,
        "student": student,
        "teacher": teacher,
        "dataset": "digits",
        "num_classes": K,
        "seed": seed,
        "epochs": epochs,
        "experiment": study.STUDY_SOURCES.get(method, "baseline/mobilenet_v2"),
        "hyperparameters": hp,
        "best_test_accuracy": best,
        "test_accuracy": final,
        "best_epoch": curve.index(max(curve)) + 1,
        "history": {"test_accuracy": curve},
        "kl_note": "batch-mean KL, multiplier 0.01; weight 3.8",
        "diverged": False,
    }
    if role:
        record["role"] = role
    record.update(extra)
    return record


def _study_records(seeds, epochs=1, accuracies=None):
    """Baselines (both models), KD, De-KD and its teacher, Tf-KD_reg."""
    accuracies = accuracies or {}
    records = []
    for i, seed in enumerate(seeds):

        def acc(method, default, i=i):
            values = accuracies.get(method)
            return default + 0.01 * i if values is None else values[i]

        records += [
            _record(
                "baseline", "cnn_tiny", None, seed, acc("baseline", 0.90), epochs=epochs
            ),
            _record(
                "baseline", "cnn_small", None, seed, acc("small", 0.97), epochs=epochs
            ),
            _record(
                "kd",
                "cnn_tiny",
                "cnn_small",
                seed,
                acc("kd", 0.91),
                epochs=epochs,
                teacher_test_accuracy=acc("small", 0.97),
            ),
            _record(
                "dekd",
                "cnn_tiny",
                "cnn_small",
                seed,
                acc("dekd", 0.89),
                epochs=epochs,
                teacher_test_accuracy=0.6,
                hyperparameters={"teacher_epochs": 1},
            ),
            _record(
                "baseline",
                "cnn_small",
                None,
                seed,
                0.6,
                epochs=1,
                role="teacher",
                hyperparameters={"schedule_epochs": epochs},
            ),
            _record(
                "tfkd_reg", "cnn_tiny", None, seed, acc("tfkd_reg", 0.92), epochs=epochs
            ),
        ]
    return records


def _config(tmp_path, **kw):
    kw.setdefault("methods", ("baseline", "kd", "dekd", "tfkd_reg"))
    kw.setdefault("epochs", 4)
    return study.StudyConfig(output_dir=str(tmp_path), **kw)


def _row(rows, method, student="cnn_tiny", role="run"):
    return next(
        r
        for r in rows
        if (r["method"], r["student"], r["role"]) == (method, student, role)
    )


# ------------------------------------------------------------------ spread
def test_one_seed_shows_no_spread_and_says_n_is_1(tmp_path):
    rows = study.summarize(_study_records([1]))
    table = study.format_table(rows, "header")
    markdown = study.format_markdown(rows, "header", _config(tmp_path, seeds=(1,)))
    for text in (table, markdown):
        assert "±" not in text
        assert "n = 1 seed: no spread" in text
    assert _row(rows, "kd")["best_std"] is None
    assert _row(rows, "kd")["delta_best_std"] is None
    kd_line = next(line for line in table.splitlines() if line.startswith("KD "))
    assert kd_line.split()[-1] == "1"  # the n column
    assert "91.00" in kd_line and "+1.00" in kd_line
    assert (
        "| KD | cnn_tiny | cnn_small (97.0%) | 91.00 | +1.00 | 91.00 | +1.00 | 1 |"
        in (markdown)
    )


def test_mean_and_sample_std_over_three_seeds_known_answers(tmp_path):
    accuracies = {
        "baseline": [0.90, 0.92, 0.94],  # mean 92, sample std 2
        "kd": [0.91, 0.95, 0.96],  # mean 94, sample std sqrt(7)
        "small": [0.97, 0.97, 0.97],
        "dekd": [0.80, 0.80, 0.83],
        "tfkd_reg": [0.93, 0.93, 0.93],
    }
    rows = study.summarize(_study_records([0, 1, 2], accuracies=accuracies))
    base, kd = _row(rows, "baseline"), _row(rows, "kd")
    assert base["n"] == kd["n"] == 3
    assert base["best"] == pytest.approx(92.0)
    assert base["best_std"] == pytest.approx(2.0)  # ddof=1 (ddof=0 gives 1.633)
    assert kd["best"] == pytest.approx(94.0)
    assert kd["best_std"] == pytest.approx(math.sqrt(7))
    # Paired per-seed differences 1, 3, 2: mean 2, sample std 1.
    assert kd["delta_best"] == pytest.approx(2.0)
    assert kd["delta_best_seeds"] == pytest.approx([1.0, 3.0, 2.0])
    assert kd["delta_best_std"] == pytest.approx(1.0)
    # Constant differences have no spread; a constant row has a zero std.
    assert _row(rows, "baseline", "cnn_small")["best_std"] == pytest.approx(0.0)
    assert study.report._mean_std([0.5]) == (50.0, None)
    assert study.report._mean_std([None]) == (None, None)
    table = study.format_table(rows, "header")
    kd_line = next(line for line in table.splitlines() if line.startswith("KD "))
    assert "94.00 ± 2.65" in kd_line and "+2.00 ± 1.00" in kd_line
    assert kd_line.split()[-1] == "3"
    assert "mean ± sample std (ddof=1) over n = 3 seeds" in table
    markdown = study.format_markdown(rows, "header", _config(tmp_path))
    assert "mean ± sample std (ddof=1) over n = 3 seeds" in markdown
    assert "| Baseline | cnn_tiny | - | 92.00 ± 2.00 | ref |" in markdown
    assert "n = 1" not in markdown


# -------------------------------------------------------------------- plot
@pytest.mark.parametrize(("epochs", "seeds"), [(1, [1]), (1, [0, 1]), (4, [0, 1, 2])])
def test_plot_writes_a_png_with_markers_real_scale_and_outside_legend(
    tmp_path, epochs, seeds
):
    rows = study.summarize(_study_records(seeds, epochs=epochs))
    path = study.plot(rows, tmp_path / "results.png", title="title")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000

    fig = study.figure._figure(rows, "title")
    fig.canvas.draw()
    absolute, delta, curves = fig.axes[:3]
    assert absolute.get_xlim() == (0.0, 100.0)  # the real scale
    lines = [line for line in curves.get_lines() if line.get_label() != "chance (1/K)"]
    assert len(lines) == 5  # 5 (method, student) rows
    for line in lines:
        assert line.get_marker() not in (None, "", "None", " ")
        assert len(line.get_xdata()) == epochs
    low, high = curves.get_ylim()
    values = [v for line in lines for v in line.get_ydata()]
    assert low <= min(values) and max(values) <= high  # nothing clipped
    # Δ panel: a zero line, in accuracy points.
    assert any(list(line.get_xdata()) == [0, 0] for line in delta.get_lines())
    assert "points" in delta.get_xlabel()
    # The legend is outside (to the right of) the curves.
    legend = curves.get_legend().get_window_extent()
    assert legend.x0 >= curves.get_window_extent().x1
    errorbars = [c for c in delta.containers if hasattr(c, "has_xerr")]
    if len(seeds) == 1:
        assert not any(c.has_xerr for c in errorbars)
    else:
        assert any(c.has_xerr for c in errorbars)


def test_plot_of_no_run_still_writes(tmp_path):
    path = study.plot([], tmp_path / "empty.png")
    assert path.exists() and path.stat().st_size > 1000


# ------------------------------------------------------------------- De-KD
def test_dekd_teacher_at_one_epoch_is_part_of_the_epoch_not_the_kd_teacher():
    one = study.dekd_teacher_plan(study.StudyConfig(epochs=1), 1347)
    assert one["fraction"] == 0.25 and one["schedule_epochs"] == 4
    assert one["train_examples"] == 337 and one["full_train_examples"] == 1347
    assert one["steps"] == 5 < one["kd_teacher_steps"] == 21
    assert one["schedule_steps"] == 20  # ~ the one epoch's 21: same learning rates
    four = study.dekd_teacher_plan(study.StudyConfig(epochs=4), 1347)
    assert four["fraction"] is None and four["epochs"] == 1
    assert four["steps"] == 21 < four["kd_teacher_steps"] == 84
    half = study.dekd_teacher_plan(
        study.StudyConfig(epochs=1, dekd_teacher_fraction=0.5), 1347
    )
    assert (half["schedule_epochs"], half["steps"]) == (2, 10)


def test_dekd_teacher_and_kd_teacher_are_different_runs_at_one_epoch(tmp_path):
    from keras_tfkd import data

    config = study.StudyConfig(epochs=1, seeds=(0,), output_dir=str(tmp_path))
    dataset = data.load("digits")
    jobs = dict((e.method, e) for e, _ in study.plan(config))
    kd, dekd = jobs["kd"], jobs["dekd"]
    train_config = config.train_config()
    dplan = study.dekd_teacher_plan(config, dataset.num_examples("train"))
    teacher = study.run._PartEpochTeacher(
        dekd, dataset, 0, dplan, tmp_path, train_config
    )
    assert teacher.subset.num_examples("train") == 337
    assert teacher.subset.num_examples("test") == dataset.num_examples("test")
    assert teacher.experiment.teacher_experiment().epochs == 4
    kd_teacher = runs_lib.planned_key(kd.teacher_experiment(), dataset, 0, train_config)
    part = runs_lib.planned_key(
        teacher.experiment.teacher_experiment(), teacher.subset, 0, train_config
    )
    assert part != kd_teacher
    # ... and the De-KD run's key names its own teacher checkpoint.
    assert runs_lib.planned_key(
        dekd, dataset, 0, train_config, teacher_checkpoint_path=teacher.path
    ) != runs_lib.planned_key(kd, dataset, 0, train_config)
    # The seed draws the subset: the same seed, the same examples.
    again = study.config._dekd_subset(dataset, 337, 0)
    np.testing.assert_array_equal(again.y_train, teacher.subset.y_train)
    other = study.config._dekd_subset(dataset, 337, 1)
    assert not np.array_equal(other.x_train, teacher.subset.x_train)


def test_dekd_teacher_epochs_not_below_epochs_is_refused():
    for epochs, teacher_epochs in ((4, 4), (4, 5), (1, 2)):
        with pytest.raises(ValueError, match="dekd_teacher_epochs"):
            study.StudyConfig(epochs=epochs, dekd_teacher_epochs=teacher_epochs)
    # Without De-KD it does not matter; at one epoch the default is fine.
    study.StudyConfig(epochs=4, dekd_teacher_epochs=4, methods=("baseline", "kd"))
    study.StudyConfig(epochs=1, dekd_teacher_epochs=1)
    for bad in (0.3, 1.0, 0.0, True, "1/4"):
        with pytest.raises(ValueError, match="dekd_teacher_fraction"):
            study.StudyConfig(epochs=1, dekd_teacher_fraction=bad)


def test_fractional_dekd_teacher_row_and_note():
    records = _study_records([0])
    info = {
        "fraction": 0.25,
        "train_examples": 337,
        "full_train_examples": 1347,
        "steps": 5,
        "kd_teacher_steps": 21,
    }
    for r in records:
        if r["method"] == "dekd" or r.get("role") == "teacher":
            r["dekd_teacher"] = info
    rows = study.summarize(records)
    dekd = _row(rows, "dekd")
    assert dekd["teacher_epochs"] == 0.25
    table = study.format_table(rows)
    assert "cnn_small @1/4ep (60.0%)" in table
    assert "De-KD teacher: cnn_small after the first 1/4 of an epoch (5 steps" in table


# ------------------------------------------------------------------- notes
def test_explain_accuracy_on_constructed_records():
    fine = _record(
        "kd", "cnn_tiny", "cnn_small", 0, 0.95, hyperparameters={"alpha": 0.95}
    )
    assert runs_lib.explain_accuracy(fine) == []

    reg = _record(
        "tfkd_reg",
        "cnn_tiny",
        None,
        230,
        0.098,
        epochs=2,
        hyperparameters={"alpha": 0.95, "optimizer": "reference"},
        kl_weight=0.0095,
    )
    [line] = runs_lib.explain_accuracy(reg)
    # A 0.1.0 record (kl_translation's soft_weight) reads the same.
    old = {k: v for k, v in reg.items() if k != "kl_weight"}
    old["kl_translation"] = {"soft_weight": 0.0095}
    assert runs_lib.explain_accuracy(old) == [line]
    assert line.startswith(
        "near chance (1/K = 10.0%): alpha=0.95 leaves 5% of the loss"
    )
    assert "200-epoch schedule" in line and "--epochs 200 or --alpha 0.5" in line
    assert "17x smaller" in line  # 1 / (0.05 + 0.0095) with SGD
    # With Adam the scale of the loss does not set the step: no such claim.
    reg["hyperparameters"]["optimizer"] = "adam"
    [line] = runs_lib.explain_accuracy(reg)
    assert "x smaller" not in line and "200-epoch" in line

    diverged = _record("kd", "cnn_tiny", "cnn_small", 0, 0.4, epochs=5)
    diverged.update(
        diverged=True,
        stopped_at={"epoch": 3, "batch": 7, "loss": float("nan")},
        epochs_completed=2,
    )
    [line] = runs_lib.explain_accuracy(diverged)
    assert line.startswith("diverged at epoch 3 (batch 7, loss nan)")
    no_stop = dict(diverged, stopped_at=None)
    assert "after 2 of 5 epochs" in runs_lib.explain_accuracy(no_stop)[0]

    collapsed = _record("lsr", "cnn_tiny", None, 0, 0.8, 0.1, epochs=4)
    [line] = runs_lib.explain_accuracy(collapsed)
    assert "collapsed" in line and "10.0%" in line and "80.0%" in line

    bad_teacher = _record(
        "dekd",
        "cnn_tiny",
        "cnn_small",
        0,
        0.11,
        hyperparameters={"alpha": 0.5},
        teacher_test_accuracy=0.1,
    )
    [line] = runs_lib.explain_accuracy(bad_teacher)
    assert "its teacher is itself near chance (10.0%)" in line

    teacher = _record(
        "baseline",
        "cnn_small",
        None,
        0,
        0.12,
        role="teacher",
        hyperparameters={"schedule_epochs": 4},
    )
    assert (
        "De-KD teacher, stopped after 1 epoch(s) of its 4-epoch run"
        in (runs_lib.explain_accuracy(teacher)[0])
    )
    short = _record("baseline", "cnn_tiny", None, 0, 0.12, epochs=2)
    assert "only 2 epoch(s) of the published 200" in runs_lib.explain_accuracy(short)[0]
    # K = 100: 1.5% is near chance, 5% is not.
    assert (
        runs_lib.explain_accuracy(
            dict(short, num_classes=100, best_test_accuracy=0.05, test_accuracy=0.05)
        )
        == []
    )
    assert runs_lib.explain_accuracy({"num_classes": 10}) == []


def test_notes_reach_the_table_and_markdown(tmp_path):
    records = _study_records([0, 1])
    for r in records:
        if r["method"] == "tfkd_reg":
            r.update(best_test_accuracy=0.1, test_accuracy=0.1)
            r["hyperparameters"]["alpha"] = 0.95
    rows = study.summarize(records)
    table = study.format_table(rows)
    note = next(line for line in table.splitlines() if line.startswith("Note: "))
    assert note.startswith("Note: Tf-KD_reg cnn_tiny (seeds 0, 1): near chance (1/K")
    markdown = study.format_markdown(rows, "header", _config(tmp_path))
    assert "- **Note:** Tf-KD_reg cnn_tiny (seeds 0, 1): near chance" in markdown


# ------------------------------------------------------------- a real study
@pytest.mark.slow
def test_one_epoch_study_dekd_differs_from_kd(tmp_path):
    lines = []
    config = study.StudyConfig(
        output_dir=str(tmp_path),
        epochs=1,
        seeds=(0,),
        methods=("kd", "dekd"),
        compilation_cache=False,
    )
    summary = study.run_study(config, log=lines.append)
    log = "\n".join(lines)
    assert "the De-KD teacher is cnn_small after the first 1/4 of that epoch" in log
    records = json.loads((tmp_path / "results.json").read_text())
    runs = {(r["method"], r.get("role", "run")): r for r in records}
    kd, dekd, teacher = (
        runs[("kd", "run")],
        runs[("dekd", "run")],
        runs[("baseline", "teacher")],
    )
    kd_teacher = next(r for r in records if r["key"] == kd["teacher_key"])
    assert dekd["teacher_key"] == teacher["key"] != kd["teacher_key"]
    # 1211 training examples after the default 10% validation holdout (136).
    assert teacher["hyperparameters"]["validation_examples"] == 136
    assert teacher["hyperparameters"]["train_examples"] == 303  # 1/4 of 1211
    assert teacher["hyperparameters"]["schedule_epochs"] == 4
    assert (
        teacher["dekd_teacher"]["fraction"] == dekd["dekd_teacher"]["fraction"] == 0.25
    )
    assert kd_teacher["hyperparameters"]["train_examples"] == 1211
    assert dekd["teacher_test_accuracy"] == pytest.approx(teacher["test_accuracy"])
    assert dekd["teacher_test_accuracy"] != kd["teacher_test_accuracy"]
    table = summary["table"]
    assert "±" not in table and "n = 1 seed" in table
    assert "De-KD teacher: cnn_small after the first 1/4 of an epoch" in table
    markdown = (tmp_path / "results.md").read_text()
    assert "after the first 1/4 of an epoch" in markdown and "±" not in markdown
    assert (tmp_path / "results.png").stat().st_size > 20_000
    # A rerun trains nothing: the part-epoch teacher and both runs are found.
    lines.clear()
    study.run_study(config, log=lines.append)
    log = "\n".join(lines)
    assert log.count("skipped (already in results.json)") == 2
    assert "normally ..." not in log
    assert json.loads((tmp_path / "results.json").read_text()) == records
