"""`benchmarks/results_tables.py`: a study's tables into README.md and
docs/results.md, between markers, from the study's own results.md and
results.json; and the links of the README and the docs resolve."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from keras_tfkd import data
from keras_tfkd.study import report
from keras_tfkd.study.config import StudyConfig

# Backend-independent (reports and statistics on constructed records): one session.
pytestmark = pytest.mark.one_backend

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location(
    "keras_tfkd_results_tables", ROOT / "benchmarks" / "results_tables.py"
)
tables = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tables)

SEEDS = (0, 1, 2, 3, 4)  # the digits preset's
#: Val-selected test accuracy per seed: Tf-KD_reg ahead of the baseline by
#: +2, +3, +2.5, +2, +3 points (improves: supported) and of KD by 3, 2, 2.5,
#: 2, 3 (comparable within 1 point: not supported).
ACCURACY = {
    "baseline": (0.90, 0.91, 0.92, 0.90, 0.92),
    "tfkd_reg": (0.92, 0.94, 0.945, 0.92, 0.95),
    "kd": (0.89, 0.92, 0.92, 0.90, 0.92),
}


def _record(method, seed):
    acc = ACCURACY[method][seed]
    teacher = "cnn_small" if method == "kd" else None
    return {
        "key": f"{method}/cnn_tiny/{teacher or '-'}/digits/seed{seed}/epochs12/x",
        "method": method,
        "experiment": f"{method}/mobilenet_v2",
        "student": "cnn_tiny",
        "teacher": teacher,
        "dataset": "digits",
        "seed": seed,
        "epochs": 12,
        "num_classes": 10,
        "selected_test_accuracy": acc,
        "best_test_accuracy": acc + 0.01,
        "test_accuracy": acc - 0.005,
        "teacher_test_accuracy": 0.97 if teacher else None,
        "train_eval_accuracy": acc + 0.02,
        "test_ece": 0.05,
        "test_nll": 0.2,
        "test_brier": 0.1,
        "history": {"val_accuracy": [acc], "test_accuracy": [acc]},
        "hyperparameters": {"batch_size": 64, "train_examples": 27},
        "backend": "jax",
        "keras_version": "3.15.1",
        "finished": f"2026-12-0{seed + 1}T10:00:00+00:00",
        "train_seconds": 30.0,
    }


def _study_folder(folder, epochs=12, seeds=SEEDS):
    """A study's output folder written by the study's own report writer."""
    records = [_record(m, s) for s in seeds for m in ACCURACY]
    config = StudyConfig.from_preset(
        "digits", methods=tuple(ACCURACY), epochs=epochs, seeds=seeds, plot=False
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8, 8, 1)), np.tile(np.arange(10), 4)
    arrays = data.from_arrays((x[:30], y[:30]), (x[30:], y[30:]), name="digits")
    dataset = data.holdout(arrays, 0.1)
    header = report._header(config, dataset)
    folder.mkdir()
    rows = report.summarize(records)
    (folder / "results.md").write_text(report.format_markdown(rows, header, config))
    # The folder also holds a run of another study (1 epoch, on torch).
    other = {**_record("baseline", 0), "epochs": 1, "backend": "torch", "key": "o"}
    (folder / "results.json").write_text(json.dumps([*records, other]))
    return records


def _pages(tmp_path):
    readme = tmp_path / "README.md"
    doc = tmp_path / "results.md"
    readme.write_text(
        "# Project\n\nintro\n\n<!-- results:digits:begin -->\nold table\n"
        "<!-- results:digits:end -->\n\n## After\nkept as is\n"
    )
    doc.write_text(
        "# Results\n\n<!-- results:digits:begin -->\nold full\n"
        "<!-- results:digits:end -->\n<!-- results:other:begin -->\nx\n"
        "<!-- results:other:end -->\ntail\n"
    )
    return readme, doc


def _write(tmp_path, folder, readme, doc, **kwargs):
    return tables.write(
        folder,
        readme=readme,
        results_doc=doc,
        host="2 CPUs (test CPU)",
        today="2026-12-05",
        code=("abc1234", True, None),
        **kwargs,
    )


def test_blocks_are_replaced_and_nothing_else_changes(tmp_path):
    folder = tmp_path / "study"
    records = _study_folder(folder)
    readme, doc = _pages(tmp_path)
    before_readme, before_doc = readme.read_text(), doc.read_text()
    assert _write(tmp_path, folder, readme, doc) == "digits"  # from results.md

    after = readme.read_text()
    head, rest = before_readme.split("<!-- results:digits:begin -->")
    tail = rest.split("<!-- results:digits:end -->")[1]
    assert after.startswith(head + "<!-- results:digits:begin -->\n")
    assert after.endswith("<!-- results:digits:end -->" + tail)
    block = after[len(head) : -len(tail)]
    assert "old table" not in block
    # Provenance: command, date, commit and dirty tree, runs, machine.
    assert f"`keras-tfkd study --backend jax --output-dir {folder.as_posix()}`" in block
    assert "2026-12-05" in block and "commit abc1234 with uncommitted" in block
    assert "15 runs finished 2026-12-01 10:00 to 2026-12-05 10:00 UTC" in block
    assert "backend jax, Keras 3.15.1" in block and "7.5 min of training" in block
    assert "2 CPUs (test CPU)" in block
    # The claims on the headline accuracy, each with the study's own verdict.
    assert "| Tf-KD_reg improves over the baseline | +2.50 [" in block
    claims = report.claims(records, "selected_test_accuracy")
    assert len(claims) == 2  # Tf-KD_reg vs baseline, Tf-KD_reg vs KD
    for claim in claims:
        row = next(line for line in block.splitlines() if claim["claim"] in line)
        verdict = claim["verdict"]
        if verdict != "inconclusive":
            verdict = f"**{verdict}**"
        interval = f"{claim['mean']:+.2f} [{claim['low']:+.2f}, {claim['high']:+.2f}]"
        robust = "**fragile**" if claim["fragile"] else "holds"
        assert row.endswith(
            f"| {interval} | {claim['improved']}/{claim['n']} | {verdict} | "
            f"{robust} | {claim['seeds_needed']} |"
        )
    assert "supported" in {c["verdict"] for c in claims}
    assert "| verdict | leave-one-seed-out | seeds for a stable verdict |" in block
    assert "Baseline cnn_tiny: 91.00 ± 1.00 % val-selected" in block

    # docs: the whole results.md under the same provenance; the other study's
    # block and the text around are untouched.
    full = doc.read_text()
    assert full.startswith("# Results\n\n<!-- results:digits:begin -->\nWritten by")
    assert full.endswith(
        "<!-- results:digits:end -->\n<!-- results:other:begin -->\nx\n"
        "<!-- results:other:end -->\ntail\n"
    )
    assert "#### Does it help? (paired over seeds)" in full
    assert "#### Calibration (test set, after the last epoch)" in full
    assert "| Tf-KD_reg | cnn_tiny | - | 93.50 ± 1.41 | +2.50 ± 0.50 |" in full
    assert "old full" not in full and "# Tf-KD study" not in full
    assert before_doc != full

    # Writing again from the same folder changes nothing more.
    _write(tmp_path, folder, readme, doc)
    assert readme.read_text() == after and doc.read_text() == full


def test_a_study_unlike_its_preset_needs_the_command(tmp_path):
    folder = tmp_path / "study"
    _study_folder(folder, epochs=2, seeds=(0, 1))
    readme, doc = _pages(tmp_path)
    with pytest.raises(ValueError, match=r"models and epochs, seeds.*--command"):
        _write(tmp_path, folder, readme, doc)
    command = "keras-tfkd study --epochs 2 --seeds 0,1"
    _write(tmp_path, folder, readme, doc, command=command)
    assert f"- command: `{command}`" in readme.read_text()


def test_missing_or_doubled_markers_change_no_file(tmp_path):
    folder = tmp_path / "study"
    _study_folder(folder)
    readme, doc = _pages(tmp_path)
    doc.write_text("# Results\n\nno markers\n")
    before = readme.read_text()
    with pytest.raises(ValueError, match="0 copies of '<!-- results:digits:begin"):
        _write(tmp_path, folder, readme, doc)
    assert readme.read_text() == before  # checked before either is written
    text = "<!-- results:a:begin -->\n<!-- results:a:end -->\n"
    with pytest.raises(ValueError, match="2 copies"):
        tables.replace_marked(text * 2, "a", "body")
    with pytest.raises(ValueError, match="comes before"):
        tables.replace_marked(
            "<!-- results:a:end -->\n<!-- results:a:begin -->", "a", ""
        )


def test_a_folder_without_a_study_is_one_line(tmp_path, capsys):
    assert tables.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "results.md not found" in err and "keras-tfkd study" in err


def _anchors(markdown):
    """GitHub's anchors of a page's headings (code blocks skipped)."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]
)
def test_links_point_to_files_and_headings_in_the_repository(page):
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an external address
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{page}: {target} is not a file"
        if anchor and linked.suffix == ".md":
            anchors = _anchors(linked.read_text(encoding="utf-8"))
            assert anchor in anchors, f"{page}: no heading for {target}"


# ----------------------------------------------- a language-modelling study
#: Test perplexity per seed of the fortunes_lm preset's seeds: KD below the
#: baseline on every seed (its claim supported), LSR on both sides.
PERPLEXITY = {"baseline": (10.0, 10.4, 10.2), "kd": (9.5, 9.8, 9.7)}
PERPLEXITY["lsr"] = (10.3, 10.1, 10.4)


def _lm_record(method, seed, role="student", model="lm_tiny"):
    ppl = 8.0 if role == "teacher" else PERPLEXITY[method][seed]
    preset = StudyConfig.from_preset("fortunes_lm")
    return {
        "key": f"{role}/{method}/{seed}",
        "study": "lm",
        "role": role,
        "method": method,
        "student": model,
        "teacher": None,
        "dataset": "fortunes",
        "seed": seed,
        "epochs": 3 * preset.epochs if role == "teacher" else preset.epochs,
        "selected_epoch": 2,
        "selected_test_perplexity": ppl,
        "selected_test_accuracy": 0.4 - ppl / 100,
        "selected_test_ece": 0.01,
        "selected_test_nll": float(np.log(ppl)),
        "hyperparameters": {"limit": list(preset.limit)},
        "backend": "jax",
        "keras_version": "3.15.1",
        "finished": f"2026-12-0{seed + 1}T10:00:00+00:00",
        "train_seconds": 40.0,
    }


def _lm_folder(tmp_path, records, tuning=None, trials=(), name="fortunes_lm"):
    """An LM study's folder written by its own report writer, and the pages."""
    import types

    from keras_tfkd.study import lm_report

    config = StudyConfig.from_preset("fortunes_lm", tune=3 if tuning else 0)
    dataset = types.SimpleNamespace(
        name="fortunes",
        vocabulary_size=258,
        sequence_length=64,
        fortunes={"train": 10, "validation": 2, "test": 2},
        num_windows=lambda split: 100,
        num_tokens=lambda split: 6400,
    )
    folder = tmp_path / "lm"
    folder.mkdir()
    rows = lm_report.summarize(records)
    markdown = lm_report.format_markdown(rows, config, dataset, tuning)
    (folder / "results.md").write_text(markdown)
    (folder / "results.json").write_text(json.dumps([*records, *trials]))
    readme, doc = tmp_path / "README.md", tmp_path / "results.md"
    for page in (readme, doc):
        page.write_text(
            f"head\n<!-- results:{name}:begin -->\nold\n"
            f"<!-- results:{name}:end -->\ntail\n"
        )
    return folder, readme, doc


def test_a_language_modelling_study_gets_its_own_tables(tmp_path):
    records = [_lm_record("baseline", 0, "teacher", "lm_small")]
    records += [_lm_record(m, s) for s in range(3) for m in PERPLEXITY]
    folder, readme, doc = _lm_folder(tmp_path, records)
    assert _write(tmp_path, folder, readme, doc) == "fortunes_lm"
    short = readme.read_text()
    assert short.startswith("head\n") and short.endswith("tail\n")
    assert "`keras-tfkd study --preset fortunes_lm --backend jax --output-dir" in short
    rows = {
        line.split(" | ")[0].lstrip("| "): line
        for line in short.splitlines()
        if line.startswith("| ")
    }
    assert "10.200 ± 0.200" in rows["Baseline"]
    assert "-0.533 [" in rows["KD (forward KL)"]
    assert "| **supported** |" in rows["KD (forward KL)"]
    assert "| inconclusive |" in rows["LSR"]
    full = doc.read_text()
    assert "#### Calibration" in full and "Teacher `lm_small`" in full
    # Another number of seeds than the preset's needs the command.
    records = [r for r in records if r["seed"] != 2]
    (folder / "results.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="seeds"):
        _write(tmp_path, folder, readme, doc)


def test_a_tuned_study_states_its_settings_trials_and_command(tmp_path):
    """A tuned LM study's block shows each method's chosen setting, counts
    the tuning trials in its cost, and is not stated as the untuned command."""
    chosen = {"baseline": {"learning_rate": 0.01}, "kd": {"alpha": 0.8}}
    chosen["lsr"] = {"epsilon": 0.05}
    records = [_lm_record("baseline", 0, "teacher", "lm_small")]
    for seed in range(3):
        for method in PERPLEXITY:
            r = _lm_record(method, seed)
            r["hyperparameters"].update(chosen[method])
            r["tuned"] = {"values": chosen[method], "trial": 2}
            records.append(r)
    trials = []
    for method in PERPLEXITY:
        r = _lm_record(method, 0)
        trials.append({**r, "seed": 100, "key": f"trial/{method}"})
        trials[-1]["tuning_trial"] = {"unit": method, "trial": 1}
    tuning = {
        m: {
            "method": m,
            "student": "lm_tiny",
            "values": v,
            "trial": 1,
            "trials": [{"values": v, "val_perplexity": 9.0, "diverged": False}],
            "tune_seed": 100,
        }
        for m, v in chosen.items()
    }
    # The folder also holds an untuned run of another study (seed 0).
    trials.append({**_lm_record("kd", 0), "key": "untuned/kd/0"})
    folder, readme, doc = _lm_folder(
        tmp_path, records, tuning, trials, name="fortunes_lm_tuned"
    )
    with pytest.raises(ValueError, match="was tuned"):
        _write(tmp_path, folder, readme, doc)  # the untuned preset's command
    assert _write(tmp_path, folder, readme, doc, study_name="fortunes_lm_tuned")
    short = readme.read_text()
    assert "--preset fortunes_lm --tune 3 --backend jax" in short
    assert "13 runs (3 of them tuning trials)" in short
    assert "| setting (tuned) |" in short
    kd = next(line for line in short.splitlines() if line.startswith("| KD"))
    assert "alpha=0.8" in kd
    assert "Adam at 0.01 (the tuned baseline's; untuned 0.003)" in short
    assert "#### Tuning" in doc.read_text()
