"""A study's table: `summarize` the records into rows, then text or Markdown.

Accuracies are in %, the mean over seeds with the sample standard deviation
(``ddof=1``), none with one seed; Δ is against the baseline of the same
student, its ± the sample std of the paired (per-seed) differences.
"""

from __future__ import annotations

import numpy as np

from keras_tfkd import data as data_lib
from keras_tfkd import experiments as experiments_lib
from keras_tfkd.study.config import METHOD_LABELS, STUDY_SOURCES, _fraction_text
from keras_tfkd.study.stats import LEAVE_ONE_OUT, SEEDS_NEEDED, stability_cells


def _mean_std(values):
    """Mean and sample standard deviation (``ddof=1``) in %, of fractions.

    None values are left out; the std is None with fewer than two values
    (one seed has no spread), and both are None with none.
    """
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    arr = np.asarray(values, dtype="float64") * 100
    std = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return float(arr.mean()), std


def _teacher_epochs(record):
    """The De-KD teacher's training, as the row shows it: epochs or a fraction."""
    part = record.get("dekd_teacher") or {}
    if part.get("fraction") is not None:
        return part["fraction"]
    return record.get("hyperparameters", {}).get("teacher_epochs")


def summarize(records):
    """Rows of the paper-style table, one per (method, student, teacher).

    Accuracies are in %: the mean over seeds and the sample standard
    deviation (``ddof=1``; None with one seed, which has no spread); ``n`` is
    the number of seeds. ``delta_*`` is the difference of the means with the
    baseline of the same student (None where that baseline is missing) and
    ``delta_*_std`` the sample std of the per-seed (paired: same seed, same
    initial weights) differences, None with fewer than two pairs. ``notes``
    are `runs.explain_accuracy` lines, with the seeds they hold for.
    Teacher-only runs (the De-KD teacher) become rows with
    ``role == "teacher"``.
    """
    groups = {}
    for r in records:
        groups.setdefault(_group_key(r), []).append(r)
    paired = {
        (r["student"], r["epochs"], r["seed"]): r
        for r in records
        if r["method"] == "baseline" and r.get("role", "run") == "run"
    }
    rows = [
        {**_row(key, group), **_paired_deltas(group, paired, role=key[-1])}
        for key, group in groups.items()
    ]
    _add_mean_deltas(rows)
    order = {m: i for i, m in enumerate(experiments_lib.METHODS)}
    rows.sort(
        key=lambda r: (r["role"] != "run", order.get(r["method"], 99), r["student"])
    )
    return rows


def _group_key(record):
    """The row of a record: (method, student, teacher, teacher epochs, epochs, role)."""
    return (
        record["method"],
        record["student"],
        record["teacher"],
        _teacher_epochs(record),
        record["epochs"],
        record.get("role", "run"),
    )


def _row(key, group):
    """The row of one group (its seeds): means and stds in %, notes, curve."""
    method, student, teacher, t_epochs, epochs, role = key
    best, best_std = _mean_std([r["best_test_accuracy"] for r in group])
    final, final_std = _mean_std([r["test_accuracy"] for r in group])
    selected, selected_std = _mean_std([r.get("selected_test_accuracy") for r in group])
    t_acc, t_std = _mean_std([r.get("teacher_test_accuracy") for r in group])
    fit, _ = _mean_std([r.get("train_eval_accuracy") for r in group])
    val, _ = _mean_std(
        [(r.get("history", {}).get("val_accuracy") or [None])[-1] for r in group]
    )
    first = group[0]
    hp = first.get("hyperparameters", {})
    return {
        "method": method,
        "label": METHOD_LABELS.get(method, method),
        "student": student,
        "teacher": teacher,
        "teacher_epochs": t_epochs,
        "epochs": epochs,
        "role": role,
        "seeds": sorted(r["seed"] for r in group),
        "n": len(group),
        "num_classes": first.get("num_classes"),
        "test_examples": hp.get("test_examples"),
        "schedule_epochs": hp.get("schedule_epochs"),
        "dekd_teacher": first.get("dekd_teacher"),
        "best": best,
        "best_std": best_std,
        "final": final,
        "final_std": final_std,
        "selected": selected,
        "selected_std": selected_std,
        "teacher_accuracy": t_acc,
        "teacher_accuracy_std": t_std,
        "train_eval": fit,
        "val_final": val,
        "diverged": sum(bool(r.get("diverged")) for r in group),
        # 0.1.0 records: kl_translation's note
        "kl_note": first.get("kl_note", first.get("kl_translation", {}).get("note")),
        "train_seconds": float(sum(r.get("train_seconds", 0) for r in group)),
        "curve": _mean_curve(group),
        "notes": _seed_notes(group),
        "seed_values": _seed_values(group),
    }


def _seed_values(group):
    """``{seed: {field: value}}``: every accuracy field (a number, or None,
    named ``*accuracy``) and calibration field (`CALIBRATION_FIELDS`) of each
    seed's record, as a fraction; what `claims` and the calibration table
    pair by seed."""
    calibration = {name for name, _ in CALIBRATION_FIELDS}
    return {
        r["seed"]: {
            k: v
            for k, v in r.items()
            if (k.endswith("accuracy") or k in calibration)
            and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
        }
        for r in group
    }


def _seed_notes(group):
    """`runs.explain_accuracy` lines of a group, each with its seeds."""
    from keras_tfkd import runs

    notes = {}
    for r in group:
        for line in runs.explain_accuracy(r):
            notes.setdefault(line, []).append(r["seed"])
    return [(line, sorted(seeds)) for line, seeds in notes.items()]


#: The accuracies of a row and their record fields: the test accuracy at the
#: epoch of best validation accuracy (with a validation split), the best
#: over epochs (selected on the test set, as the paper) and the final one.
_DELTA_FIELDS = (
    ("selected", "selected_test_accuracy"),
    ("best", "best_test_accuracy"),
    ("final", "test_accuracy"),
)


def _paired_deltas(group, paired, role):
    """``delta_*_seeds``: each seed minus the same seed's baseline, in points
    (none for a teacher row); ``delta_*_std``: their sample std."""
    deltas = {}
    for field, name in _DELTA_FIELDS:
        diffs = []
        for r in group:
            base = paired.get((r["student"], r["epochs"], r["seed"]))
            if role == "run" and base is not None:
                if r.get(name) is not None and base.get(name) is not None:
                    diffs.append(100 * (r[name] - base[name]))
        deltas[f"delta_{field}_seeds"] = diffs
        deltas[f"delta_{field}_std"] = (
            float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None
        )
    return deltas


def _add_mean_deltas(rows):
    """Set ``delta_best``/``delta_final`` of every run row: its mean minus the
    mean of the same student's baseline row (None without one)."""
    baselines = {
        (r["student"], r["epochs"]): r
        for r in rows
        if r["method"] == "baseline" and r["role"] == "run"
    }
    for row in rows:
        base = baselines.get((row["student"], row["epochs"]))
        for field, _ in _DELTA_FIELDS:
            ok = base is not None and row[field] is not None and row["role"] == "run"
            row[f"delta_{field}"] = row[field] - base[field] if ok else None


def _mean_curve(group):
    curves = [r.get("history", {}).get("test_accuracy") for r in group]
    curves = [c for c in curves if c]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [float(v) * 100 for v in np.mean([c[:n] for c in curves], axis=0)]


def _fmt(mean, std):
    """``97.78 ± 0.38``; without a spread (one seed) just ``97.78``."""
    if mean is None:
        return "n/a"
    if std is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def _fmt_delta(delta, std=None):
    if delta is None:
        return ""
    if std is None:
        return f"{delta:+.2f}"
    return f"{delta:+.2f} ± {std:.2f}"


def _spread_note(rows):
    """What the ± means (or that there is none), from the rows' seed counts."""
    counts = sorted({r["n"] for r in rows if r["role"] == "run"})
    if not counts or counts == [1]:
        return "n = 1 seed: no spread (one run per row, no standard deviation)"
    if len(counts) == 1:
        return f"mean ± sample std (ddof=1) over n = {counts[0]} seeds"
    return (
        "mean ± sample std (ddof=1) over the n seeds of each row (column n; "
        "rows with n = 1 have no spread)"
    )


def _teacher_epochs_text(teacher_epochs):
    if teacher_epochs is None:
        return ""
    if teacher_epochs < 1:
        return f"@{_fraction_text(teacher_epochs)}ep"
    return f"@{teacher_epochs}ep"


def _teacher_cell(row):
    if row["teacher"] is None:
        return "-"
    name = row["teacher"]
    if row["teacher_epochs"]:
        name += " " + _teacher_epochs_text(row["teacher_epochs"])
    if row["teacher_accuracy"] is not None:
        name += f" ({row['teacher_accuracy']:.1f}%)"
    return name


def _table_fields(rows):
    """The accuracy columns: val-selected first when the runs have it."""
    fields = ["best", "final"]
    if any(r.get("selected") is not None for r in rows if r["role"] == "run"):
        fields.insert(0, "selected")
    return fields


_COLUMN_NAMES = {"selected": "val-selected", "best": "best", "final": "final"}


def _table_cells(rows):
    fields = _table_fields(rows)
    head = ["method", "student", "teacher (test acc)"]
    for f in fields:
        head += [f"{_COLUMN_NAMES[f]} acc %", f"Δ {_COLUMN_NAMES[f]}"]
    head.append("n")
    body = []
    for row in rows:
        if row["role"] != "run":
            continue
        cells = [
            row["label"] + (" (diverged)" if row["diverged"] else ""),
            row["student"],
            _teacher_cell(row),
        ]
        for f in fields:
            delta = (
                "ref"
                if row["method"] == "baseline"
                else _fmt_delta(row[f"delta_{f}"], row[f"delta_{f}_std"])
            )
            cells += [_fmt(row[f], row[f"{f}_std"]), delta]
        cells.append(str(row["n"]))
        body.append(cells)
    return head, body


def _header(config, dataset, learning_rate=None):
    import keras

    epochs = f"{config.epochs} epoch{'s' if config.epochs > 1 else ''}"
    held = getattr(dataset, "validation", None)
    if held is not None:
        epochs += (
            f", {held.num_examples('test')} training examples held out for validation"
        )
    augment = config.augment or data_lib.reference_augmentation(dataset)
    preset = "" if config.preset is None else f"preset {config.preset}: "
    lr = f"{config.learning_rate:g}"
    if learning_rate is not None and learning_rate != config.learning_rate:
        lr = f"{learning_rate:g} (the tuned baseline's; untuned {lr})"
    return (
        f"{preset}{dataset.name} (K={dataset.num_classes}, "
        f"{dataset.num_examples('train')} train / {dataset.num_examples('test')} "
        f"test), {config.student}"
        f"{'' if config.teacher is None else ' <- ' + config.teacher}, {epochs}, "
        f"seeds {' '.join(map(str, config.seeds))}, Adam lr {lr} "
        "(cosine), "
        f"batch {config.batch_size}, augmentation {augment}, backend "
        f"{keras.backend.backend()}"
    )


def format_table(rows, header=""):
    """The paper-style table as aligned text (mean ± std over seeds, Δ vs baseline).

    "best" is the best test accuracy over epochs (what the paper reports),
    "final" the accuracy after the last epoch; Δ is against the baseline of
    the same student ("ref" on the baseline rows), ± the sample std over
    seeds of the paired differences; n is the number of seeds. With one seed
    there is no ± at all, and the line under the header says so.
    """
    head, body = _table_cells(rows)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [header] if header else []
    lines.append(_spread_note(rows))
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for cells in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    lines += _teacher_notes(rows)
    lines += _fit_notes(rows)
    lines += [f"Note: {note}" for note in _accuracy_notes(rows)]
    return "\n".join(lines)


def _teacher_notes(rows):
    notes = []
    for row in rows:
        if row["role"] != "teacher":
            continue
        acc = _fmt(row["final"], row["final_std"])
        part = row.get("dekd_teacher")
        if part and part.get("fraction") is not None:
            notes.append(
                f"De-KD teacher: {row['student']} after the first "
                f"{_fraction_text(part['fraction'])} of an epoch ({part['steps']} "
                f"steps against the KD teacher's {part['kd_teacher_steps']}, on a "
                f"random {part['train_examples']} of the "
                f"{part['full_train_examples']} training examples): {acc} % test "
                "acc. One whole epoch would be the KD teacher itself, and De-KD "
                "would equal KD."
            )
            continue
        e, run = row["epochs"], row.get("schedule_epochs")
        run = f" of its {run}-epoch run" if run else " of normal training"
        notes.append(
            f"De-KD teacher: {row['student']} after {e} epoch{'s' if e > 1 else ''}"
            f"{run}: {acc} % test acc."
        )
    return notes


def _fit_notes(rows):
    """How well each baseline fits its own training split against the
    validation split, after the last epoch: the regime the paper's claims
    need is one of models that fit their training set better than they
    generalise, where a regulariser has something to correct."""
    notes = []
    for row in rows:
        if (
            row["method"] != "baseline"
            or row["role"] != "run"  # De-KD's early teacher
            or None in (row["train_eval"], row["val_final"])
        ):
            continue
        gap = row["train_eval"] - row["val_final"]
        notes.append(
            f"Fit: Baseline {row['student']} classifies {row['train_eval']:.2f}% of "
            f"its own training images (unaugmented, after the last epoch) against "
            f"{row['val_final']:.2f}% of the validation split: a gap of {gap:+.2f} "
            "points (mean over seeds; a large gap is the regime where the paper's "
            "regularisers have something to correct)."
        )
    return notes


def _accuracy_notes(rows):
    """`runs.explain_accuracy` lines of the rows: near chance, diverged."""
    notes = []
    for row in rows:
        name = row["label"] + " " + row["student"]
        if row["role"] == "teacher":
            name = f"De-KD teacher {row['student']}"
        for line, seeds in row.get("notes", ()):
            which = "seed" if len(seeds) == 1 else "seeds"
            notes.append(f"{name} ({which} {', '.join(map(str, seeds))}): {line}.")
    return notes


def format_markdown(rows, header, config):
    """results.md: settings, the table, each method's KL term, the paired
    claims ("Does it help?", `claims` on each of `CLAIM_FIELDS`), the plot."""
    head, body = _table_cells(rows)
    lines = [
        "# Tf-KD study",
        "",
        header + ".",
        "",
        _spread_note(rows) + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines.append("")
    lines += [f"- {note}" for note in _teacher_notes(rows)]
    lines += [f"- {note}" for note in _fit_notes(rows)]
    lines += [f"- **Note:** {note}" for note in _accuracy_notes(rows)]
    counts = {r["n"] for r in rows if r["role"] == "run"}
    if counts <= {1}:
        spread = "one seed (n = 1), so no spread"
        paired = ""
    else:
        spread = "mean ± sample std (ddof=1) over the n seeds of each row"
        paired = ", ± the sample std of the per-seed differences"
    if "selected" in _table_fields(rows):
        lines.append(
            "- val-selected (the headline): the test accuracy at the epoch of best "
            "accuracy on the validation split (training examples held out, "
            "stratified; `--validation-fraction`), so no choice is made on the "
            "test set."
        )
    lines += [
        "- best: best test accuracy over epochs (as the paper reports); final: "
        f"after the last epoch; {spread}; Δ: against the baseline of the same "
        f"student (same seeds, same initial weights){paired}; n: seeds.",
        f"- Student `{config.student}` plays MobileNetV2"
        + (
            ""
            if config.teacher is None
            else f" and teacher `{config.teacher}` ResNet18"
        )
        + "; hyper-parameters from: "
        + ", ".join(
            f"{METHOD_LABELS[m]} `{STUDY_SOURCES[m]}`"
            for m in config.methods
            if m != "baseline"
        )
        + ".",
    ]
    kl_notes = {
        METHOD_LABELS.get(row["method"], row["method"]): row["kl_note"]
        for row in rows
        if row["role"] == "run"
        and row["kl_note"]
        and "no KL term" not in row["kl_note"]
    }
    for label, note in kl_notes.items():
        lines.append(f"- KL term of {label}: {note}.")
    section = _claims_markdown(rows)
    if section:
        lines += ["", *section]
    section = _calibration_markdown(rows)
    if section:
        lines += ["", *section]
    if config.plot:
        lines += ["", "![results](results.png)"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ claims
#: The accuracy fields the claims section reports, ``(name, record field)``;
#: the first is the headline. A new field (say a validation-selected test
#: accuracy) is one more entry here, or the `field` of `claims`.
CLAIM_FIELDS = (("final", "test_accuracy"), ("best", "best_test_accuracy"))

#: ``comparable`` claims: the band, in accuracy points, of `stats.verdict`.
COMPARABLE_MARGIN = 1.0

#: The methods that came after the paper, each tested against Tf-KD_reg.
_LATER_METHODS = ("pskd", "cskd", "ols", "dkd")


def _claim_list():
    """``(claim, method, reference method, kind)`` of the paper's claims and
    of each later method's, in the order of the table."""
    items = [
        ("Re-KD improves the strong model", "rekd", "baseline", "improves"),
        ("De-KD improves the student", "dekd", "baseline", "improves"),
        ("Tf-KD_self improves over the baseline", "tfkd_self", "baseline", "improves"),
        ("Tf-KD_reg improves over the baseline", "tfkd_reg", "baseline", "improves"),
        ("Tf-KD_reg is comparable to normal KD", "tfkd_reg", "kd", "comparable"),
    ]
    for m in _LATER_METHODS:
        label = METHOD_LABELS.get(m, m)
        items += [
            (f"{label} improves over Tf-KD_reg", m, "tfkd_reg", "improves"),
            (f"{label} improves over the baseline", m, "baseline", "improves"),
        ]
    return items


def claims(
    records_or_rows,
    field="test_accuracy",
    *,
    confidence=0.95,
    margin=COMPARABLE_MARGIN,
):
    """The paper's claims that the runs can test, paired over seeds.

    `records_or_rows` is a study's records (results.json) or the rows of
    `summarize`. For every claim whose method was run (one claim row per
    student of that method), the per-seed differences ``method - reference``
    in accuracy points of `field` (a record field: ``"test_accuracy"``, the
    final one, by default; ``"best_test_accuracy"``; ...) over the seeds both
    have, their `stats.paired_interval` and `stats.verdict`:

    * "Re-KD improves the strong model": Re-KD trains the strong model (the
      study's teacher) as a student of the weak one, so it is compared with
      the baseline of the strong model;
    * "De-KD improves the student", "Tf-KD_self / Tf-KD_reg improves over
      the baseline": against the baseline of the same student;
    * "Tf-KD_reg is comparable to normal KD": Tf-KD_reg - KD, claim
      ``"comparable"`` within +-`margin` points;
    * for PS-KD, CS-KD, OLS and DKD: "X improves over Tf-KD_reg" and "X
      improves over the baseline".

    Returns dicts with ``claim``, ``kind`` ("improves"/"comparable"),
    ``method``, ``reference``, ``student``, ``comparison`` (the method
    labels), ``field``, ``differences`` (per seed, in points), the interval's
    ``n``, ``mean``, ``low``, ``high``, ``improved``, ``dropped`` and
    ``confidence``, ``margin``, ``verdict``, and how the verdict would hold on
    a rerun (`stats.stability`): ``fragile`` (some one seed left out changes
    it) and ``seeds_needed`` (the seeds a stable verdict needs at this mean
    and spread). A claim whose reference run
    is missing (Re-KD without a baseline of the strong model) has
    ``verdict == "skipped"`` and a ``note`` saying why; ``note`` is None
    otherwise.
    """
    from keras_tfkd.study import stats

    items = list(records_or_rows)
    rows = summarize(items) if items and "seed" in items[0] else items
    runs = [r for r in rows if r["role"] == "run" and "seed_values" in r]
    if runs and not any(
        field in values for r in runs for values in r["seed_values"].values()
    ):
        raise ValueError(f"No run has the accuracy field {field!r}.")
    out = []
    for text, method, reference, kind in _claim_list():
        for row in (r for r in runs if r["method"] == method):
            student = row["student"]
            label = METHOD_LABELS.get(method, method)
            ref_label = METHOD_LABELS.get(reference, reference)
            claim = {
                "claim": text,
                "kind": kind,
                "method": method,
                "reference": reference,
                "student": student,
                "comparison": f"{label} vs {ref_label} ({student})",
                "field": field,
                "margin": margin if kind == "comparable" else None,
                "note": None,
            }
            ref = next(
                (
                    r
                    for r in runs
                    if (r["method"], r["student"], r["epochs"])
                    == (reference, student, row["epochs"])
                ),
                None,
            )
            if ref is None:
                why = f"no {ref_label} run of {student}"
                if method == "rekd":
                    why += " (the strong model, which Re-KD trains as the student)"
                interval = stats.paired_interval([], confidence)
                out.append(
                    {
                        **claim,
                        "differences": [],
                        **interval,
                        "verdict": "skipped",
                        "fragile": None,
                        "seeds_needed": None,
                        "note": why,
                    }
                )
                continue
            diffs = _paired_differences(row, ref, field)
            # The interval, its verdict and the verdict's stability.
            judged = stats.stability(diffs, kind, margin, confidence)
            out.append({**claim, "differences": diffs, **judged})
    return out


def _paired_differences(row, ref, field):
    """``100 * (row - ref)`` of `field` on every seed both rows have (NaN
    where either value is missing or not finite)."""
    diffs = []
    for seed in sorted(set(row["seed_values"]) & set(ref["seed_values"])):
        a = row["seed_values"][seed].get(field)
        b = ref["seed_values"][seed].get(field)
        diffs.append(float("nan") if a is None or b is None else 100 * (a - b))
    return diffs


def _fmt_interval(claim):
    """``+1.23 [+0.40, +2.06]``; without an interval (one seed) just the mean."""
    if claim["mean"] is None:
        return "n/a"
    if claim["low"] is None:
        return f"{claim['mean']:+.2f} (no interval)"
    return f"{claim['mean']:+.2f} [{claim['low']:+.2f}, {claim['high']:+.2f}]"


def _fmt_improved(claim):
    text = f"{claim['improved']}/{claim['n']}"
    if claim["dropped"]:
        text += f" ({claim['dropped']} NaN left out)"
    return text


def _claims_markdown(rows, fields=CLAIM_FIELDS, margin=COMPARABLE_MARGIN):
    """The "Does it help?" section of results.md (no lines without a claim)."""
    if not any(r["role"] == "run" and "seed_values" in r for r in rows):
        return []
    if any(r.get("selected") is not None for r in rows if r["role"] == "run"):
        fields = (("val-selected", "selected_test_accuracy"), *fields)
    by_field = [(name, claims(rows, field, margin=margin)) for name, field in fields]
    first = by_field[0][1]
    if not first:
        return []
    head = ["claim", "comparison", "n"]
    for name, _ in by_field:
        head += [f"{name}: mean Δ [95% CI]", f"{name}: improved", f"{name}: verdict"]
        if name == by_field[0][0]:
            head += [f"{name}: {LEAVE_ONE_OUT}", f"{name}: {SEEDS_NEEDED}"]
    lines = [
        "## Does it help? (paired over seeds)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for i, claim in enumerate(first):
        cells = [claim["claim"], claim["comparison"], str(claim["n"])]
        for j, (_, items) in enumerate(by_field):
            c = items[i]
            if c["verdict"] == "skipped":
                cells += ["", "", f"skipped: {c['note']}"]
            else:
                cells += [_fmt_interval(c), _fmt_improved(c), c["verdict"]]
            if j == 0:
                cells += stability_cells(c)
        lines.append("| " + " | ".join(cells) + " |")
    names = " and ".join(name for name, _ in by_field)
    lines += [
        "",
        f"- Δ: method − reference on each seed (same seed, same initial weights), "
        f"in accuracy points, of the {names} test accuracy; 95% CI: the Student "
        "t interval over seeds, mean − t·sd/√n to mean + t·sd/√n (sd with "
        "ddof=1, t the 97.5% quantile with n − 1 degrees of freedom); improved: "
        "seeds with Δ > 0.",
        "- Rule: *improves* is supported if the interval's low end is > 0, not "
        "supported if its high end is < 0, else inconclusive; *comparable* is "
        f"supported if the whole interval lies within -{margin:.2f} .. "
        f"+{margin:.2f} points, not supported if it lies wholly outside that "
        "band, else inconclusive; with fewer than 2 seeds every verdict is "
        "inconclusive.",
        f"- {LEAVE_ONE_OUT} (of the {by_field[0][0]} verdict): *fragile* when "
        "leaving out some one seed changes the verdict (a rerun can flip it), "
        f"*holds* when none does; {SEEDS_NEEDED}: the fewest seeds at which, "
        "at this mean and spread, the interval would clear 0 (or the band's "
        "edge) by one standard deviation of the gap between two such studies' "
        "means, (t + √2)·sd/√n < |edge distance|; for an inconclusive verdict, "
        "the seeds that would settle it if the mean and spread held.",
    ]
    if by_field[0][0] == "val-selected":
        lines.append(
            "- The headline is val-selected: the test accuracy at each run's "
            "epoch of best accuracy on held-out training examples; final is "
            "after the last epoch; best is the best epoch picked on the test set "
            "itself, an optimistic selection for every run."
        )
    elif len(by_field) > 1:
        lines.append(
            f"- The headline is {by_field[0][0]} (after the last epoch); best is "
            "the best epoch picked on the test set itself, an optimistic "
            "selection for every run."
        )
    return lines


# ------------------------------------------------------------- calibration
#: The calibration fields of a run record (the test predictions after the
#: last epoch) and how the table shows them: label, scale, decimals.
CALIBRATION_FIELDS = (
    ("test_ece", ("ECE %", 100.0, 2)),
    ("test_nll", ("NLL", 1.0, 3)),
    ("test_brier", ("Brier", 1.0, 4)),
)


def _calibration_cell(values, scale, digits):
    values = [v * scale for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _calibration_markdown(rows):
    """results.md's calibration table: final-epoch ECE, NLL and Brier per row,
    and the paired ECE difference with the same student's baseline."""
    from keras_tfkd.study import stats

    names = [name for name, _ in CALIBRATION_FIELDS]
    runs = [r for r in rows if r["role"] == "run" and r.get("seed_values")]
    if not any(
        seed.get(name) is not None
        for r in runs
        for seed in r["seed_values"].values()
        for name in names
    ):
        return []
    baselines = {
        (r["student"], r["epochs"]): r for r in runs if r["method"] == "baseline"
    }
    head = ["method", "student", *(spec[0] for _, spec in CALIBRATION_FIELDS)]
    head += ["Δ ECE [95% CI]", "ECE lower (k/n)"]
    lines = [
        "## Calibration (test set, after the last epoch)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for row in runs:
        seeds = row["seed_values"]
        cells = [row["label"], row["student"]]
        for name, (_, scale, digits) in CALIBRATION_FIELDS:
            values = [seeds[s].get(name) for s in sorted(seeds)]
            cells.append(_calibration_cell(values, scale, digits))
        base = baselines.get((row["student"], row["epochs"]))
        if base is None or row is base:
            cells += ["ref" if row is base else "-", "-"]
        else:
            diffs = _paired_differences(row, base, "test_ece")
            interval = stats.paired_interval(diffs)
            if interval["n"] == 0:
                cells += ["-", "-"]
            else:
                span = (
                    ""
                    if interval["low"] is None
                    else f" [{interval['low']:+.2f}, {interval['high']:+.2f}]"
                )
                lower = sum(d < 0 for d in diffs)  # NaN (a missing seed) is not
                cells += [
                    f"{interval['mean']:+.2f}{span}",
                    f"{lower}/{interval['n']}",
                ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "- ECE: expected calibration error with 15 equal-width confidence bins, "
        "`sum_b |B_b|/N |acc(B_b) - conf(B_b)|`, in points; NLL: mean `-log p_y`; "
        "Brier: mean `sum_k (p_k - onehot_k)^2`; lower is better for all three. "
        "Δ ECE: the paired per-seed difference with the same student's baseline, "
        "with its 95% Student t interval (none with one seed).",
    ]
    return lines
