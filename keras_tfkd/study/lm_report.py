"""The tables of a language-modelling study: `summarize`, `format_table`,
`format_markdown`.

A row per method (and one for the teacher): the test perplexity, next-token
accuracy (%) and token-level ECE (%) at each run's epoch of lowest
validation perplexity, the mean over seeds with the sample standard
deviation (``ddof=1``); and, against the baseline of the same seed (paired),
the mean difference with its 95% Student t interval over seeds
(`keras_tfkd.study.stats.paired_interval`) and the verdict on the claim
"the method does better" (`keras_tfkd.study.stats.verdict`). Perplexity is
better when *lower*: its claim is judged on ``baseline - method``.
"""

from __future__ import annotations

import datetime

import numpy as np

from keras_tfkd.study.lm_config import LM_HYPERPARAMETERS, LM_METHOD_LABELS
from keras_tfkd.study.report import _fmt
from keras_tfkd.study.stats import (
    LEAVE_ONE_OUT,
    SEEDS_NEEDED,
    paired_interval,
    stability,
    stability_cells,
)

__all__ = ["format_markdown", "format_table", "summarize"]

#: (record field, row name, scale): the headline metrics.
METRICS = (
    ("selected_test_perplexity", "perplexity", 1.0),
    ("selected_test_accuracy", "accuracy", 100.0),
    ("selected_test_ece", "ece", 100.0),
    ("selected_test_nll", "nll", 1.0),
)
#: Whether a larger value of each metric is better.
HIGHER_IS_BETTER = {"perplexity": False, "accuracy": True, "ece": False, "nll": False}


def _mean_std(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return None, None
    arr = np.asarray(values, dtype="float64")
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def summarize(records):
    """Rows, one per (role, method): ``label``, ``n`` (seeds), per metric
    ``<m>`` = (mean, std) and, for the student's methods other than the
    baseline, ``delta_<m>`` (the paired interval of ``method - baseline``)
    and ``verdict_<m>`` (on the claim that the method does better), with
    ``stability_<m>`` (`keras_tfkd.study.stats.stability` of that verdict)."""
    baseline = {
        r["seed"]: r
        for r in records
        if r["method"] == "baseline" and r.get("role") == "student"
    }
    groups = {}
    for r in records:
        groups.setdefault((r.get("role"), r["method"]), []).append(r)
    order = list(LM_METHOD_LABELS)
    keys = sorted(groups, key=lambda k: (k[0] != "teacher", order.index(k[1])))
    rows = []
    for role, method in keys:
        group = sorted(groups[(role, method)], key=lambda r: r["seed"])
        first = group[0]
        row = {
            "role": role,
            "method": method,
            "label": LM_METHOD_LABELS[method] if role != "teacher" else "Teacher",
            "model": first["student"],
            "teacher": first.get("teacher"),
            "n": len(group),
            "seeds": [r["seed"] for r in group],
            "selected_epochs": [r.get("selected_epoch") for r in group],
            "train_seconds": float(sum(r.get("train_seconds", 0.0) for r in group)),
            "hyperparameters": _method_hp(method, first.get("hyperparameters")),
        }
        for field, name, scale in METRICS:
            values = [None if r.get(field) is None else scale * r[field] for r in group]
            row[name] = _mean_std(values)
            if role == "student" and method != "baseline":
                diffs = []
                for r in group:
                    ref = baseline.get(r["seed"])
                    if ref is None or r.get(field) is None or ref.get(field) is None:
                        diffs.append(None)
                    else:
                        diffs.append(scale * (r[field] - ref[field]))
                interval = paired_interval(diffs)
                sign = 1.0 if HIGHER_IS_BETTER[name] else -1.0
                better = stability([None if d is None else sign * d for d in diffs])
                row[f"delta_{name}"] = interval
                row[f"verdict_{name}"] = better["verdict"]
                row[f"stability_{name}"] = better
        rows.append(row)
    return rows


def _fmt_interval(interval, digits=2):
    if interval is None or interval.get("mean") is None:
        return "n/a"
    text = f"{interval['mean']:+.{digits}f}"
    if interval.get("low") is not None:
        text += f" [{interval['low']:+.{digits}f}, {interval['high']:+.{digits}f}]"
    return text


def _fmt3(pair):
    mean, std = pair
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def format_table(rows):
    """Plain text: one line per row (perplexity, accuracy, ECE, Δ perplexity)."""
    lines = [
        f"{'method':<18} {'model':<10} {'n':>2}  {'test ppl':>15}  "
        f"{'acc %':>13}  {'ECE %':>12}  {'Δ ppl vs baseline [95% CI]':>28}"
    ]
    for r in rows:
        delta = (
            _fmt_interval(r.get("delta_perplexity"), 3)
            if "delta_perplexity" in r
            else ""
        )
        lines.append(
            f"{r['label']:<18} {r['model']:<10} {r['n']:>2}  "
            f"{_fmt3(r['perplexity']):>15}  {_fmt(*r['accuracy']):>13}  "
            f"{_fmt(*r['ece']):>12}  {delta:>28}"
        )
    return "\n".join(lines)


def _method_hp(method, recorded):
    """The method's hyper-parameters as its runs trained (a tuned setting's
    values included), ``LM_HYPERPARAMETERS``'s when the record has none."""
    recorded = recorded or {}
    return {k: recorded.get(k, v) for k, v in LM_HYPERPARAMETERS[method].items()}


def _hp_text(row):
    hp = row.get("hyperparameters") or LM_HYPERPARAMETERS[row["method"]]
    return ", ".join(f"{k}={v:g}" for k, v in hp.items()) or "-"


def format_markdown(rows, config, dataset, tuning=None):
    """results.md: what ran, the table, the paired claims and calibration
    (and, with `tuning`, `keras_tfkd.study.tune`'s section: each method's
    trials and the setting chosen on validation perplexity)."""
    import keras

    from keras_tfkd.study import tune

    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    # From the records, not this call's time: a finished study rerun into its
    # folder trains nothing and rewrites this file.
    train_minutes = sum(r["train_seconds"] for r in rows) / 60
    trials = [t for r in (tuning or {}).values() for t in r["trials"]]
    trial_minutes = sum(t.get("train_seconds") or 0.0 for t in trials) / 60
    cost = f"{train_minutes:.1f} min of training"
    if trials:
        cost = (
            f"{train_minutes + trial_minutes:.1f} min of training, "
            f"{trial_minutes:.1f} of it the {len(trials)} tuning trials"
        )
    preset = f" (preset `{config.preset}`)" if config.preset else ""
    rate = tune.chosen_train_values(tuning).get("learning_rate", config.learning_rate)
    rate_text = f"{rate:g}"
    if rate != config.learning_rate:
        rate_text += f" (the tuned baseline's; untuned {config.learning_rate:g})"
    out = [
        f"# Language-modelling study{preset}",
        "",
        f"Data: {dataset.name} (Debian's `fortunes` package), byte-level "
        f"(V = {dataset.vocabulary_size}: 256 bytes, BOS, PAD), windows of "
        f"L = {dataset.sequence_length} tokens; split by fortune "
        f"({dataset.fortunes['train']:,} / {dataset.fortunes['validation']:,} / "
        f"{dataset.fortunes['test']:,} fortunes), used: "
        f"{dataset.num_windows('train'):,} train / "
        f"{dataset.num_windows('validation'):,} validation / "
        f"{dataset.num_windows('test'):,} test windows "
        f"({dataset.num_tokens('test'):,} unmasked test tokens).",
        "",
        f"Models: student `{config.student}`, teacher `{config.teacher}` (trained "
        f"first, seed {config.seeds[0]}). {config.epochs} epochs, batch "
        f"{config.batch_size}, Adam at {rate_text} decayed to 0 along "
        f"a cosine; seeds {', '.join(map(str, config.seeds))}. Backend "
        f"{keras.backend.backend()}, {today}, {cost} "
        "(the sum of the runs' train_seconds, the teacher's included).",
        "",
        "Every metric is on the unmasked test tokens, at each run's epoch of "
        "lowest validation perplexity; mean ± sample std over seeds. Δ is "
        "method − baseline of the same seed (paired), the mean with its 95% "
        "Student t interval over seeds; *verdict* is on the claim that the "
        "method does better (lower perplexity, higher accuracy): supported "
        "when the whole interval is on the better side, not supported when it "
        "is on the worse side, inconclusive when it holds 0. Of the perplexity "
        f"verdict, {LEAVE_ONE_OUT}: *fragile* when leaving out some one seed "
        f"changes it, *holds* when none does; {SEEDS_NEEDED}: the fewest seeds "
        "at which, at this mean and spread, the interval would clear 0 by one "
        "standard deviation of the gap between two such studies' means, "
        "(t + √2)·sd/√n < |mean|.",
        "",
        "| method | hyper-parameters | n | test perplexity | Δ perplexity [95% CI] "
        f"| verdict (perplexity) | {LEAVE_ONE_OUT} | {SEEDS_NEEDED} "
        "| next-token acc % | Δ acc points [95% CI] | verdict (accuracy) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["label"] if r["role"] != "teacher" else f"Teacher `{r['model']}`"
        hp = "-" if r["role"] == "teacher" else _hp_text(r)
        out.append(
            f"| {name} | {hp} | {r['n']} | {_fmt3(r['perplexity'])} | "
            f"{_fmt_interval(r.get('delta_perplexity'), 3)} | "
            f"{r.get('verdict_perplexity', '')} | "
            + " | ".join(stability_cells(r.get("stability_perplexity")))
            + f" | {_fmt(*r['accuracy'])} | "
            f"{_fmt_interval(r.get('delta_accuracy'))} | "
            f"{r.get('verdict_accuracy', '')} |"
        )
    out += [
        "",
        "## Calibration",
        "",
        "Token-level ECE (15 equal-width bins of the top probability) and NLL "
        "(nats per token), at the same epochs; Δ ECE < 0 is better calibrated.",
        "",
        "| method | ECE % | Δ ECE points [95% CI] | NLL |",
        "|---|---|---|---|",
    ]
    for r in rows:
        name = r["label"] if r["role"] != "teacher" else f"Teacher `{r['model']}`"
        out.append(
            f"| {name} | {_fmt(*r['ece'])} | {_fmt_interval(r.get('delta_ece'))} | "
            f"{_fmt3(r['nll'])} |"
        )
    out += [
        "",
        "Selected epochs (per seed): "
        + "; ".join(
            f"{r['label']}: {', '.join(str(e) for e in r['selected_epochs'])}"
            for r in rows
        )
        + ".",
        "",
    ]
    if tuning:
        out.append(
            tune.format_markdown(tuning, config, tune.PERPLEXITY, LM_METHOD_LABELS)
        )
    return "\n".join(out)
