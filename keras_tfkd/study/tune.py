"""Tuning inside the protocol: every method at its best setting, chosen on validation.

With ``StudyConfig(tune=N)`` (``keras-tfkd study --tune N``,
``keras_tfkd.compare(..., tune=N)``) a study first searches, for every
method, N settings of its search space (`keras_tfkd.search_spaces`): trial
1 is the method's untuned setting (the one a study without tuning runs),
the others points of its grid drawn without replacement by a generator
seeded with ``(tune_seed, method)``. Each trial is one run of the study on
the tuning seed ``tune_seed``, and is scored by `SCORE`, the validation
accuracy at its validation-selected epoch; the best score wins (ties: the
earliest trial, so the untuned setting unless another beats it). Nothing
of a trial's test split is read. The chosen setting then runs on every
study seed and is reported on test, paired with the baseline as without
tuning. The baseline is tuned first, with the same budget, over its own
knob, the learning rate, and the rate it chooses is the study's from then
on: every other method's trials and runs train at it (teachers included),
so a method and the baseline of a seed differ only in the method.

Every trial is a run like any other: a key in results.json (a rerun skips
the finished trials and resumes an interrupted one from its last epoch),
marked ``"tuning_trial"``; the runs of the chosen settings carry
``"tuned"`` (the chosen values and every trial's values and score), and
results.md gets a tuning table (`format_markdown`).

Why our own search rather than KerasTuner: see docs/tuning.md (in short,
each trial must be one of the study's resumable, keyed runs, which leaves a
tuner nothing to do but draw from a grid, and KerasTuner would add grpcio
and protobuf to every install).

>>> trial_values("ols", {"alpha": 0.5}, 3, seed=100)
[{'alpha': 0.5}, {'alpha': 0.25}, {'alpha': 0.75}]
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from keras_tfkd import search_spaces
from keras_tfkd.study.config import METHOD_LABELS

__all__ = [
    "ACCURACY",
    "NoValidationError",
    "Objective",
    "PERPLEXITY",
    "SCORE",
    "apply",
    "choose",
    "default_values",
    "format_markdown",
    "search",
    "search_unit",
    "trial_values",
    "tuned_jobs",
    "reported",
]


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a trial is scored by: the one `field` of its run's record that
    the choice reads (a validation metric at the run's validation-selected
    epoch), the `name` it is kept under in a trial, whether larger is better
    (`maximize`), and how results.md names (`label`, `description`) and
    writes it (`percent`)."""

    field: str
    name: str
    maximize: bool
    label: str
    description: str
    percent: bool

    def text(self, value, diverged=False):
        """`value` as results.md writes it ("diverged" or "n/a" when unscored)."""
        if value is None or not math.isfinite(value):
            return "diverged" if diverged else "n/a"
        text = f"{100 * value:.2f}%" if self.percent else f"{value:.3f}"
        return text + (" (diverged)" if diverged else "")


#: The image study's objective: the validation accuracy (higher is better).
ACCURACY = Objective(
    "selected_val_accuracy",
    "val_accuracy",
    True,
    "Val. acc.",
    "validation accuracy",
    percent=True,
)
#: The language-modelling study's: the validation perplexity (lower is better).
PERPLEXITY = Objective(
    "selected_val_perplexity",
    "val_perplexity",
    False,
    "Val. ppl.",
    "validation perplexity",
    percent=False,
)
#: The one field of an image trial's record that the choice reads.
SCORE = ACCURACY.field


class NoValidationError(ValueError):
    """Tuning was asked for, and the study has no validation split to score on."""


def check_tunable(dataset):
    """A `NoValidationError` unless `dataset` holds a validation split."""
    if getattr(dataset, "validation", None) is None:
        raise NoValidationError(
            "Tuning (tune > 0) chooses each setting on a validation split, and "
            "this study has none: give validation data or a validation_fraction "
            "> 0."
        )


def default_values(experiment, train_config):
    """The untuned setting of `experiment`'s search space, as ``{field: value}``."""
    fields = search_spaces.space(experiment.method)
    return {
        f: (
            train_config.learning_rate
            if f in search_spaces.TRAIN_FIELDS
            else getattr(experiment, f)
        )
        for f in fields
    }


def trial_values(method, default, n, seed, spaces=None):
    """The settings of `n` trials of `method`: `default` first, then grid points.

    The others are drawn without replacement from the grid (less the
    default) by a generator seeded with ``(seed, method)``: the same seed
    gives the same trials; at most the grid's size plus one. `spaces` is the
    table of search spaces (`search_spaces.SEARCH_SPACES` when None).
    """
    points = [p for p in search_spaces.grid(method, spaces) if p != default]
    rng = np.random.default_rng([int(seed) % 2**32, zlib.crc32(method.encode())])
    order = rng.permutation(len(points))
    return [dict(default), *(points[i] for i in order[: max(int(n) - 1, 0)])]


def train_values(values):
    """The optimizer's fields of a setting (`search_spaces.TRAIN_FIELDS`)."""
    return {k: v for k, v in values.items() if k in search_spaces.TRAIN_FIELDS}


def apply(experiment, train_config, values):
    """The experiment and train config of one setting (`values`)."""
    train = train_values(values)
    fields = {k: v for k, v in values.items() if k not in train}
    if fields:
        experiment = experiment.replace(**fields)
    if train:
        train_config = dataclasses.replace(train_config, **train)
    return experiment, train_config


def choose(trials, objective=ACCURACY):
    """The index of the best trial by `objective` (the earliest of ties).

    A diverged or unscored trial (None, NaN, ``diverged``) never wins; if
    none is scored, the first (the untuned setting) is kept.
    """
    sign = 1.0 if objective.maximize else -1.0
    scores = [None if t.get("diverged") else t.get(objective.name) for t in trials]
    finite = [
        sign * s if s is not None and math.isfinite(s) else -math.inf for s in scores
    ]
    return int(np.argmax(finite)) if finite else 0


def _units(config, jobs):
    """The experiments to tune: each method of the jobs once, the baseline of
    the study's student first (its learning rate is then the study's);
    another architecture's baseline is the KD teacher, shared, and is not
    tuned."""
    units = {}
    for exp, _ in jobs:
        if exp.method == "baseline" and exp.student != config.student:
            continue
        units.setdefault(exp.id, exp)
    return sorted(units.values(), key=lambda e: e.method != "baseline")


def _values_text(values):
    return ", ".join(f"{k}={v:g}" for k, v in values.items())


def search_unit(
    unit,
    method,
    student,
    settings,
    run_trial,
    *,
    tune_seed,
    objective=ACCURACY,
    store=None,
    log=print,
    title="",
    position="",
):
    """Run the trials of one tuned unit and choose; return its result.

    `settings` are the trials' values (`trial_values`), and
    ``run_trial(values, label)`` trains (or finds in results.json) one
    trial on the tuning seed and returns its record, of which only
    ``objective.field``, ``key``, ``selected_epoch`` and ``diverged`` are
    read. The result holds ``method``, ``student``, ``values`` (the chosen
    setting), ``trial`` (its number), ``trials`` (``[{trial, values,
    <objective.name>, val_epoch, diverged, key, train_seconds}]``) and
    ``tune_seed``. With
    a `store`, each trial's record is marked ``"tuning_trial"``. `title`
    (the method and model) and `position` (``"u/n"``) label the log lines.
    """
    trials = []
    for i, values in enumerate(settings, 1):
        text = (
            f"[tune {position} {title}, trial {i}/{len(settings)}] "
            f"{_values_text(values)}, seed {tune_seed}"
        )
        record = run_trial(dict(values), text)
        score = record.get(objective.field)
        if score is None and not record.get("diverged"):
            raise NoValidationError(
                "Tuning scores each trial on the validation split, but this "
                "run has none: give validation data or a validation_fraction "
                "> 0."
            )
        trials.append(
            {
                "trial": i,
                "values": dict(values),
                objective.name: score,
                "val_epoch": record.get("selected_epoch"),
                "diverged": bool(record.get("diverged", False)),
                "key": record["key"],
                "train_seconds": record.get("train_seconds"),
            }
        )
        mark = {"unit": unit, "trial": i, "values": dict(values)}
        if store is not None and record.get("tuning_trial") != mark:
            store.add({**record, "tuning_trial": mark})
        log(f"{text}: {objective.description} {objective.text(score)}")
    best = choose(trials, objective)
    log(
        f"    {title}: chose trial {best + 1} ({_values_text(settings[best])}) "
        "on validation"
    )
    return {
        "method": method,
        "student": student,
        "values": dict(settings[best]),
        "trial": best + 1,
        "trials": trials,
        "tune_seed": tune_seed,
    }


def search(config, jobs, *, run_one, train_config, store=None, log=print):
    """Tune every method of `jobs` on ``config.tune_seed``; ``{exp.id: result}``.

    `run_one(experiment, seed, train_config, label)` trains (or finds in
    results.json) one run and returns its record (`search_unit` says what
    is read and what a result holds). The baseline is tuned first; the
    learning rate it chooses is every later trial's.
    """
    results = {}
    units = _units(config, jobs)
    for u, exp in enumerate(units, 1):
        name = METHOD_LABELS.get(exp.method, exp.method)
        default = default_values(exp, train_config)
        settings = trial_values(exp.method, default, config.tune, config.tune_seed)

        def run_trial(values, label, exp=exp, base=train_config):
            t_exp, t_config = apply(exp, base, values)
            return run_one(t_exp, config.tune_seed, t_config, label)

        results[exp.id] = search_unit(
            exp.id,
            exp.method,
            exp.student,
            settings,
            run_trial,
            tune_seed=config.tune_seed,
            store=store,
            log=log,
            title=f"{name} {exp.student}",
            position=f"{u}/{len(units)}",
        )
        train_config = study_train_config({exp.id: results[exp.id]}, train_config)
    return results


def chosen_train_values(tuning):
    """The optimizer's fields the tuned baseline chose (``{}`` untuned): every
    run of a tuned study trains at them."""
    for result in (tuning or {}).values():
        if result["method"] == "baseline":
            return train_values(result["values"])
    return {}


def study_train_config(tuning, train_config):
    """`train_config` at the learning rate the tuned baseline chose (if any)."""
    train = chosen_train_values(tuning)
    return dataclasses.replace(train_config, **train) if train else train_config


def tuned_jobs(jobs, tuning, train_config):
    """The jobs at the chosen settings: ``[(experiment, seed, config, unit)]``.

    Every job trains at the tuned baseline's learning rate
    (`study_train_config`); ``unit`` is the tuned experiment's id, None for
    one not tuned.
    """
    train_config = study_train_config(tuning, train_config)
    out = []
    for exp, seed in jobs:
        result = tuning.get(exp.id)
        if result is None:
            out.append((exp, seed, train_config, None))
            continue
        t_exp, t_config = apply(exp, train_config, result["values"])
        out.append((t_exp, seed, t_config, exp.id))
    return out


def reported(records):
    """`records` without the untuned baselines that only served as teachers.

    Tf-KD_self's and Re-KD's teacher is the student's baseline of the same
    seed. Since the baseline's tuned rate is every run's, that teacher is
    the tuned baseline itself; in results written before (the teacher at
    the untuned rate) the baseline *row* is the tuned baseline
    (``"tuned"``), and its untuned twin of the same student, epochs and
    seed is left out of the rows and of the pairing, which would otherwise
    hold both (n doubled, and the deltas paired with either).
    """

    def twin(r):
        return (r["student"], r["epochs"], r["seed"])

    tuned = {
        twin(r)
        for r in records
        if r["method"] == "baseline" and r.get("role", "run") == "run" and "tuned" in r
    }
    return [
        r
        for r in records
        if not (
            r["method"] == "baseline"
            and r.get("role", "run") == "run"
            and "tuned" not in r
            and twin(r) in tuned
        )
    ]


def annotation(result):
    """What a run of a chosen setting carries in results.json: ``"tuned"``."""
    return {
        "values": result["values"],
        "trial": result["trial"],
        "tune_seed": result["tune_seed"],
        "trials": result["trials"],
    }


def format_markdown(tuning, config, objective=ACCURACY, labels=METHOD_LABELS):
    """The tuning section of results.md: each method's trials and its choice.

    `objective` is what the trials were scored by, `labels` the methods'
    names (`METHOD_LABELS`, or the language-modelling study's).
    """
    n = config.tune
    lines = [
        "## Tuning",
        "",
        f"Each method's setting was chosen among up to {n} trials of its search "
        "space (trial 1 is the untuned setting) by the "
        f"{objective.description} of one run on seed {config.tune_seed} (at its "
        "validation-selected epoch); no test metric was read. The baseline was "
        "tuned first, over its learning rate with the same budget, and every "
        "other run trained at the rate it chose. The table above reports the "
        "chosen setting on every seed.",
        "",
        f"| Method | Chosen | Trial | {objective.label} | Trials (setting: "
        f"{objective.label.lower()}) |",
        "|---|---|---:|---:|---|",
    ]
    for result in tuning.values():
        trials = result["trials"]
        chosen = trials[result["trial"] - 1]
        cells = "; ".join(
            f"{_values_text(t['values'])}: "
            f"{objective.text(t.get(objective.name), t['diverged'])}"
            for t in trials
        )
        label = labels.get(result["method"], result["method"])
        score = objective.text(chosen.get(objective.name), chosen["diverged"])
        lines.append(
            f"| {label} {result['student']} | {_values_text(result['values'])} | "
            f"{result['trial']}/{len(trials)} | {score} | {cells} |"
        )
    return "\n".join(lines) + "\n"
