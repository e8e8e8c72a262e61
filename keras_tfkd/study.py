"""The paper's whole comparison, small: every method on an offline data set.

`run_study` trains baseline, LSR, KD, Re-KD, De-KD, Tf-KD_self and Tf-KD_reg
over several seeds, then writes ``results.json`` (every run),
``results.md`` (the paper-style table) and ``results.png`` (accuracy bars
and test-accuracy curves) to the output folder. With the defaults it runs on
scikit-learn's ``digits`` (8x8 images, K = 10, no download) in a few minutes
on two CPU cores.

The models play the paper's roles: the student ``cnn_tiny`` stands for
MobileNetV2 (the weak model) and the teacher ``cnn_small`` for ResNet18 (the
strong one). Each method takes the published hyper-parameters of the
matching registry row (`STUDY_SOURCES`), carried to K = 10 with unchanged
meaning (see `keras_tfkd.experiments`):

=========  ==========================================  ========================
method     runs                                        hyper-parameters of
=========  ==========================================  ========================
baseline   student and teacher, normally               --
lsr        student, eps = 0.1                          lsr/mobilenet_v2
kd         student <- teacher (best checkpoint)        kd/mobilenet_v2_from_resnet18
rekd       teacher <- student: the weak model teaches  rekd/resnet18_from_mobilenet_v2
dekd       student <- teacher after 1 epoch            dekd/mobilenet_v2_from_resnet18
tfkd_self  student <- its own best normal checkpoint   tfkd_self/mobilenet_v2_from_...
tfkd_reg   student, virtual teacher                    tfkd_reg/mobilenet_v2
=========  ==========================================  ========================

The baseline runs are also the teachers (KD uses the teacher's baseline run,
Re-KD and Tf-KD_self the student's), so every comparison with the baseline is
paired: same seed, same initial weights, same batches. Training is Adam at a
learning rate of 1e-2 decayed to 0 along a cosine over the run (batch 64),
with the data set's reference augmentation (a random 1-pixel shift for
digits); the last partial batch of each epoch is dropped (one batch shape,
one compilation per model on JAX). The test accuracy is measured after every
epoch. Re-running into the same folder skips the finished runs and reuses
the teacher checkpoints.

Example:

```python
from keras_tfkd import study
summary = study.run_study(study.StudyConfig(epochs=5, seeds=(0,),
                                            output_dir="runs/quick"))
print(summary["table"])
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from keras_tfkd import experiments as experiments_lib

__all__ = [
    "STUDY_SOURCES",
    "StudyConfig",
    "format_markdown",
    "format_table",
    "plan",
    "plot",
    "run_study",
    "summarize",
]

#: The registry row whose published hyper-parameters each method uses.
STUDY_SOURCES = {
    "baseline": "baseline/mobilenet_v2",
    "lsr": "lsr/mobilenet_v2",
    "kd": "kd/mobilenet_v2_from_resnet18",
    "rekd": "rekd/resnet18_from_mobilenet_v2",
    "dekd": "dekd/mobilenet_v2_from_resnet18",
    "tfkd_self": "tfkd_self/mobilenet_v2_from_mobilenet_v2",
    "tfkd_reg": "tfkd_reg/mobilenet_v2",
}

METHOD_LABELS = {
    "baseline": "Baseline",
    "lsr": "LSR",
    "kd": "KD",
    "rekd": "Re-KD",
    "dekd": "De-KD",
    "tfkd_self": "Tf-KD_self",
    "tfkd_reg": "Tf-KD_reg",
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What `run_study` runs (the defaults are those of ``keras-tfkd study``).

    Args:
        output_dir: folder of results.json, results.md, results.png and the
            cached checkpoints.
        dataset: a `keras_tfkd.data` name (``digits`` needs no download).
        epochs: epochs of every run (the De-KD teacher stops after
            `dekd_teacher_epochs`).
        seeds: one run of every method per seed.
        methods: a subset of `experiments.METHODS`.
        student / teacher: the weak and the strong model (Re-KD swaps them).
        batch_size, learning_rate: batch size and Adam's initial learning
            rate (decayed to 0 along a cosine over `epochs`).
        dekd_teacher_epochs: epochs of normal training of the De-KD teacher.
        translation: ``"auto"`` (keep the K = 100 meaning) or ``"none"``.
        data_dir, limit: passed to `keras_tfkd.data.load`.
        compilation_cache: on JAX, reuse XLA compilations across runs
            (`workflows.compilation_cache`), kept in the output folder.
        plot: write results.png.
    """

    output_dir: str = "runs/study"
    dataset: str = "digits"
    epochs: int = 12
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = experiments_lib.METHODS
    student: str = "cnn_tiny"
    teacher: str = "cnn_small"
    batch_size: int = 64
    learning_rate: float = 1e-2
    dekd_teacher_epochs: int = 1
    translation: str = "auto"
    data_dir: str | None = None
    limit: int | None = None
    compilation_cache: bool = True
    plot: bool = True

    def __post_init__(self):
        methods = tuple(self.methods)
        for m in methods:
            if m not in experiments_lib.METHODS:
                raise experiments_lib.UnknownNameError(
                    f"Unknown method {m!r}; valid methods: "
                    f"{', '.join(experiments_lib.METHODS)}.",
                    m,
                    experiments_lib.METHODS,
                )
        if not methods:
            raise ValueError("`methods` is empty: name at least one method.")
        object.__setattr__(self, "methods", methods)
        seeds = tuple(self.seeds)
        if not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds
        ):
            raise ValueError(
                f"`seeds` must be a non-empty list of ints, got {seeds!r}."
            )
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"`seeds` has duplicates: seeds={seeds!r}.")
        object.__setattr__(self, "seeds", seeds)
        for name in ("epochs", "batch_size", "dekd_teacher_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if self.student == self.teacher and {"kd", "rekd", "dekd"} & set(methods):
            raise ValueError(
                f"`student` and `teacher` are both {self.student!r}: KD, Re-KD and "
                "De-KD need two different models (a weak and a strong one)."
            )

    def train_config(self):
        from keras_tfkd import workflows

        return workflows.TrainConfig(
            optimizer="adam",
            learning_rate=self.learning_rate,
            lr_schedule="cosine",
            translation=self.translation,
            drop_remainder=True,
        )


def _study_experiment(config, method):
    """The registry row of `method`, moved onto the study's models and data."""
    base = experiments_lib.get(STUDY_SOURCES[method])
    student, teacher = config.student, config.teacher
    if method == "rekd":
        student, teacher = teacher, student
    elif method == "tfkd_self":
        teacher = student
    elif method in experiments_lib.ONE_MODEL_METHODS:
        teacher = None
    overrides = dict(
        student=student,
        teacher=teacher,
        dataset=config.dataset,
        epochs=config.epochs,
        batch_size=config.batch_size,
    )
    if base.teacher_source is not None:
        overrides["teacher_batch_size"] = config.batch_size
    if method == "dekd":
        overrides["teacher_epochs"] = config.dekd_teacher_epochs
    return base.replace(**overrides)


def plan(config):
    """The runs of a study, in order: ``[(experiment, seed), ...]``.

    Per seed: the baselines (the student, and the teacher when KD or Re-KD
    need it), then every other method. Teachers not planned here (e.g. the
    De-KD teacher) are trained on demand by `workflows.train`.
    """
    methods = config.methods
    experiments = [
        _study_experiment(config, m) for m in experiments_lib.METHODS if m in methods
    ]
    jobs = []
    baselines = []
    if "baseline" in methods:
        students = [e.student for e in experiments]
        for name in dict.fromkeys([config.student, *students]):
            baselines.append(
                _study_experiment(config, "baseline").replace(student=name)
            )
    others = [e for e in experiments if e.method != "baseline"]
    for seed in config.seeds:
        jobs += [(e, seed) for e in baselines]
        jobs += [(e, seed) for e in others]
    return jobs


def run_study(config=None, log=print):
    """Run (or resume) a study; write results.json/.md/.png; return a summary.

    Returns a dict with ``records`` (this study's runs, teachers included),
    ``rows`` (`summarize`), ``table`` (the printed text), ``seconds`` and the
    paths written.
    """
    from keras_tfkd import data, workflows

    config = config or StudyConfig()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name in (config.student, config.teacher):
        workflows.check_model_name(name)
    load_kw = {} if config.limit is None else {"limit": config.limit}
    dataset = data.load(config.dataset, config.data_dir, **load_kw)
    with contextlib.ExitStack() as stack:
        if config.compilation_cache:
            stack.enter_context(workflows.compilation_cache(out / ".jax_cache"))
        return _run_jobs(config, dataset, out, start, log)


def _run_jobs(config, dataset, out, start, log):
    import keras

    from keras_tfkd import workflows

    store = workflows.ResultsStore(out / workflows.RESULTS_FILE)
    train_config = config.train_config()
    jobs = plan(config)
    log(
        f"Study: {len(config.methods)} methods x {len(config.seeds)} seeds on "
        f"{dataset.name} (K={dataset.num_classes}, {dataset.num_examples('train')} "
        f"train / {dataset.num_examples('test')} test), {config.epochs} epochs, "
        f"backend {keras.backend.backend()} -> {out}"
    )
    keys = []
    for i, (exp, seed) in enumerate(jobs, 1):
        label = f"[{i}/{len(jobs)}] {_run_label(exp)}, seed {seed}"
        before = time.perf_counter()
        done = store.get(workflows.planned_key(exp, dataset, seed, train_config))
        if done is None:
            log(f"{label} ...")
        record = workflows.train(
            exp,
            dataset,
            seed=seed,
            output_dir=out,
            config=train_config,
            store=store,
            log=log,
        )
        keys.append(record["key"])
        if record.get("teacher_key"):
            keys.append(record["teacher_key"])
        status = "skipped (already in results.json)" if done else "done"
        took = time.perf_counter() - before
        log(
            f"{label}: {status}; test acc {_pct(record['test_accuracy'])} (best "
            f"{_pct(record['best_test_accuracy'])}) [{took:.1f} s]"
        )
    by_key = {r["key"]: r for r in store.records}
    records = [by_key[k] for k in dict.fromkeys(keys) if k in by_key]
    rows = summarize(records)
    header = _header(config, dataset)
    table = format_table(rows, header)
    (out / "results.md").write_text(format_markdown(rows, header, config))
    paths = {
        "results.json": out / workflows.RESULTS_FILE,
        "results.md": out / "results.md",
    }
    if config.plot:
        paths["results.png"] = plot(rows, out / "results.png", title=header)
    seconds = time.perf_counter() - start
    log("")
    log(table)
    log(f"\nWrote {', '.join(str(p) for p in paths.values())} ({seconds:.0f} s)")
    return {
        "records": records,
        "rows": rows,
        "table": table,
        "seconds": seconds,
        "paths": paths,
    }


def _run_label(exp):
    name = METHOD_LABELS[exp.method]
    if exp.teacher is None:
        return f"{name} {exp.student}"
    teacher = exp.teacher
    if exp.method == "dekd":
        teacher += f"@{exp.teacher_epochs}ep"
    return f"{name} {exp.student} <- {teacher}"


def _pct(value):
    return "n/a" if value is None else f"{100 * value:.2f}%"


# ------------------------------------------------------------------ summary
def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    arr = np.asarray(values, dtype="float64") * 100
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return float(arr.mean()), std


def summarize(records):
    """Rows of the paper-style table, one per (method, student, teacher).

    Accuracies are in %, mean and sample standard deviation over seeds;
    ``delta_*`` is the difference of the means with the baseline of the same
    student (None where that baseline is missing). Teacher-only runs (the
    De-KD teacher) become rows with ``role == "teacher"``.
    """
    groups = {}
    for r in records:
        role = r.get("role", "run")
        teacher_epochs = r.get("hyperparameters", {}).get("teacher_epochs")
        key = (
            r["method"],
            r["student"],
            r["teacher"],
            teacher_epochs,
            r["epochs"],
            role,
        )
        groups.setdefault(key, []).append(r)
    rows = []
    for (method, student, teacher, t_epochs, epochs, role), group in groups.items():
        best, best_std = _mean_std([r["best_test_accuracy"] for r in group])
        final, final_std = _mean_std([r["test_accuracy"] for r in group])
        t_acc, t_std = _mean_std([r.get("teacher_test_accuracy") for r in group])
        rows.append(
            {
                "method": method,
                "label": METHOD_LABELS.get(method, method),
                "student": student,
                "teacher": teacher,
                "teacher_epochs": t_epochs,
                "epochs": epochs,
                "role": role,
                "seeds": sorted(r["seed"] for r in group),
                "best": best,
                "best_std": best_std,
                "final": final,
                "final_std": final_std,
                "teacher_accuracy": t_acc,
                "teacher_accuracy_std": t_std,
                "diverged": sum(bool(r.get("diverged")) for r in group),
                "kl_note": group[0].get("kl_translation", {}).get("note"),
                "train_seconds": float(sum(r.get("train_seconds", 0) for r in group)),
                "curve": _mean_curve(group),
            }
        )
    baselines = {
        (r["student"], r["epochs"]): r
        for r in rows
        if r["method"] == "baseline" and r["role"] == "run"
    }
    order = {m: i for i, m in enumerate(experiments_lib.METHODS)}
    for row in rows:
        base = baselines.get((row["student"], row["epochs"]))
        for field in ("best", "final"):
            ok = base is not None and row[field] is not None and row["role"] == "run"
            row[f"delta_{field}"] = row[field] - base[field] if ok else None
    rows.sort(
        key=lambda r: (r["role"] != "run", order.get(r["method"], 99), r["student"])
    )
    return rows


def _mean_curve(group):
    curves = [r.get("history", {}).get("test_accuracy") for r in group]
    curves = [c for c in curves if c]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [float(v) * 100 for v in np.mean([c[:n] for c in curves], axis=0)]


def _fmt(mean, std):
    if mean is None:
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}"


def _fmt_delta(delta):
    return "" if delta is None else f"{delta:+.2f}"


def _teacher_cell(row):
    if row["teacher"] is None:
        return "-"
    name = row["teacher"]
    if row["teacher_epochs"]:
        name += f" @{row['teacher_epochs']}ep"
    if row["teacher_accuracy"] is not None:
        name += f" ({row['teacher_accuracy']:.1f}%)"
    return name


def _table_cells(rows):
    head = [
        "method",
        "student",
        "teacher (test acc)",
        "best acc %",
        "Δ best",
        "final acc %",
        "Δ final",
        "seeds",
    ]
    body = []
    for row in rows:
        if row["role"] != "run":
            continue
        body.append(
            [
                row["label"] + (" (diverged)" if row["diverged"] else ""),
                row["student"],
                _teacher_cell(row),
                _fmt(row["best"], row["best_std"]),
                _fmt_delta(row["delta_best"]),
                _fmt(row["final"], row["final_std"]),
                _fmt_delta(row["delta_final"]),
                str(len(row["seeds"])),
            ]
        )
    return head, body


def _header(config, dataset):
    import keras

    return (
        f"{dataset.name} (K={dataset.num_classes}), {config.epochs} epochs, "
        f"seeds {' '.join(map(str, config.seeds))}, Adam lr {config.learning_rate:g} "
        "(cosine), "
        f"batch {config.batch_size}, backend {keras.backend.backend()}"
    )


def format_table(rows, header=""):
    """The paper-style table as aligned text (mean ± std over seeds, Δ vs baseline).

    "best" is the best test accuracy over epochs (what the paper reports),
    "final" the accuracy after the last epoch; Δ is against the baseline of
    the same student.
    """
    head, body = _table_cells(rows)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [header] if header else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for cells in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    lines += _teacher_notes(rows)
    return "\n".join(lines)


def _teacher_notes(rows):
    notes = []
    for row in rows:
        if row["role"] == "teacher":
            notes.append(
                f"De-KD teacher: {row['student']} after {row['epochs']} epoch(s) of "
                f"normal training: {_fmt(row['final'], row['final_std'])} % test acc."
            )
    return notes


def format_markdown(rows, header, config):
    """results.md: settings, the table, the K-translation used, the plot."""
    head, body = _table_cells(rows)
    lines = [
        "# Tf-KD study",
        "",
        header + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines.append("")
    lines += [f"- {note}" for note in _teacher_notes(rows)]
    lines += [
        "- best: best test accuracy over epochs (as the paper reports); final: "
        "after the last epoch; mean ± sample std over seeds; Δ: against the "
        "baseline of the same student (same seeds, same initial weights).",
        f"- Student `{config.student}` plays MobileNetV2 and teacher "
        f"`{config.teacher}` ResNet18; hyper-parameters from: "
        + ", ".join(
            f"{METHOD_LABELS[m]} `{STUDY_SOURCES[m]}`"
            for m in config.methods
            if m != "baseline"
        )
        + ".",
    ]
    notes = {row["kl_note"] for row in rows if row["kl_note"] and row["role"] == "run"}
    notes.discard(None)
    for note in sorted(n for n in notes if "no KL term" not in n):
        lines.append(f"- KL term: {note}.")
    if config.plot:
        lines += ["", "![results](results.png)"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- plot
def plot(rows, path, title=""):
    """results.png: best accuracy per method (mean ± std) and mean test curves.

    Drawn on a `matplotlib.figure.Figure` with the Agg canvas, so it never
    touches pyplot's global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if r["role"] == "run" and r["best"] is not None]
    fig = Figure(figsize=(12, 4.8))
    FigureCanvasAgg(fig)
    bars, curves = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    labels = [
        f"{r['label']}\n{r['student']}"
        + (f"\n<- {r['teacher']}" if r["teacher"] else "")
        for r in rows
    ]
    x = np.arange(len(rows))
    colors = [f"C{i % 10}" for i in range(len(rows))]
    bars.bar(
        x,
        [r["best"] for r in rows],
        yerr=[r["best_std"] for r in rows],
        color=colors,
        capsize=3,
    )
    for r in rows:
        if r["method"] == "baseline":
            bars.axhline(r["best"], color="grey", lw=0.8, ls="--")
    lows = [r["best"] - (r["best_std"] or 0) for r in rows]
    highs = [r["best"] + (r["best_std"] or 0) for r in rows]
    if rows:
        span = max(highs) - min(lows)
        bars.set_ylim(
            max(0.0, min(lows) - 0.5 * span - 0.5), min(100.0, max(highs) + 0.5)
        )
    bars.set_xticks(x, labels, fontsize=7)
    bars.set_ylabel("best test accuracy (%)")
    bars.set_title("best test accuracy, mean ± std over seeds", fontsize=10)
    for r, color in zip(rows, colors):
        if r["curve"]:
            epochs = np.arange(1, len(r["curve"]) + 1)
            name = f"{r['label']} {r['student']}"
            curves.plot(epochs, r["curve"], color=color, label=name, lw=1.2)
    curves.set_xlabel("epoch")
    curves.set_ylabel("test accuracy (%)")
    curves.set_title("test accuracy per epoch (mean over seeds)", fontsize=10)
    if any(r["curve"] for r in rows):
        finals = [c for r in rows for c in r["curve"][len(r["curve"]) // 2 :]]
        if finals and math.isfinite(min(finals)):
            curves.set_ylim(max(0.0, min(finals) - 5), min(100.0, max(finals) + 1))
        curves.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
