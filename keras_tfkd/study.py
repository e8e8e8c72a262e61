"""The paper's whole comparison, small: every method on an offline data set.

`run_study` trains baseline, LSR, KD, Re-KD, De-KD, Tf-KD_self and Tf-KD_reg
over several seeds, then writes ``results.json`` (every run),
``results.md`` (the paper-style table) and ``results.png`` (the best
accuracy on its 0-100 scale, the difference with the baseline in accuracy
points, and the test-accuracy curves) to the output folder. Accuracies are
the mean over seeds, with the sample standard deviation (``ddof=1``) when
there are several; with one seed no spread is shown (n = 1). With the
defaults it runs on scikit-learn's ``digits`` (8x8 images, K = 10, no
download) in a few minutes on two CPU cores.

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
dekd       student <- teacher after 1 epoch (*)        dekd/mobilenet_v2_from_resnet18
tfkd_self  student <- its own best normal checkpoint   tfkd_self/mobilenet_v2_from_...
tfkd_reg   student, virtual teacher                    tfkd_reg/mobilenet_v2
=========  ==========================================  ========================

(*) ``dekd_teacher_epochs`` epochs; in a one-epoch study, where a whole
epoch of training *is* the KD teacher, the first ``dekd_teacher_fraction``
(1/4) of that epoch instead (see `StudyConfig`).

The baseline runs are also the teachers (KD uses the teacher's baseline run,
Re-KD and Tf-KD_self the student's), so every comparison with the baseline is
paired: same seed, same initial weights, same batches. Training is Adam at a
learning rate of 1e-2 decayed to 0 along a cosine over the run (batch 64),
with the data set's reference augmentation (a random 1-pixel shift for
digits); the last partial batch of each epoch is dropped (one batch shape,
one compilation per model on JAX). The test accuracy is measured after every
epoch. Re-running into the same folder skips the finished runs and reuses
the teacher checkpoints. A run that ends near chance, or diverges, gets a
note in the log and in results.md saying why (`workflows.explain_accuracy`).

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
import time
from pathlib import Path

import numpy as np

from keras_tfkd import data as data_lib
from keras_tfkd import experiments as experiments_lib

__all__ = [
    "STUDY_SOURCES",
    "StudyConfig",
    "dekd_teacher_plan",
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
        dekd_teacher_epochs: epochs of normal training of the De-KD teacher
            (the checkpoint after that many epochs of its `epochs`-epoch run,
            where KD takes the best checkpoint of the whole run). It must be
            less than `epochs`: a De-KD teacher trained as long as the KD
            teacher *is* the KD teacher, and De-KD would silently equal KD
            (`ValueError` otherwise). The one exception is a one-epoch study
            with ``dekd_teacher_epochs=1`` (the default): there the De-KD
            teacher is trained for the first `dekd_teacher_fraction` of that
            epoch.
        dekd_teacher_fraction: the part of the single epoch the De-KD teacher
            sees when ``epochs == 1``, ``1/S`` for an integer ``S >= 2``
            (default 1/4). It is trained on a random ``1/S`` of the training
            set (drawn with the seed) for one epoch of an ``S``-epoch cosine
            schedule: the same number of steps, at the same learning rates,
            as the first ``1/S`` of the KD teacher's one epoch
            (`dekd_teacher_plan`).
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
    dekd_teacher_fraction: float = 0.25
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
        fraction = self.dekd_teacher_fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not 0 < fraction < 1
            or abs(round(1 / fraction) * fraction - 1) > 1e-6
        ):
            raise ValueError(
                "`dekd_teacher_fraction` must be 1/S for an integer S >= 2 (0.5, "
                f"0.25, 0.2, ...), got {fraction!r}."
            )
        if "dekd" in methods and (
            self.dekd_teacher_epochs > self.epochs
            or (self.dekd_teacher_epochs == self.epochs and self.epochs > 1)
        ):
            raise ValueError(
                "`dekd_teacher_epochs` must be less than `epochs`, got "
                f"dekd_teacher_epochs={self.dekd_teacher_epochs} with "
                f"epochs={self.epochs}: a De-KD teacher trained that long is the KD "
                "teacher (the whole run), so De-KD would silently equal KD. Use "
                "fewer De-KD teacher epochs, more epochs, or leave out dekd."
            )
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
    need it), then every other method. Teachers not planned here are trained
    on demand: the De-KD teacher by `workflows.train` (after
    ``dekd_teacher_epochs`` epochs) or, in a one-epoch study, by `run_study`
    on part of the epoch (`dekd_teacher_plan`).
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


def _steps(num_examples, batch_size):
    """Train steps per epoch of a study run (its last, smaller batch dropped)."""
    return data_lib.num_batches(num_examples, batch_size, drop_remainder=True)


def dekd_teacher_plan(config, num_train_examples):
    """How the De-KD teacher of a study is trained, against the KD teacher.

    Returns a dict: ``fraction`` (None, or the part of the single epoch of
    a one-epoch study, see `StudyConfig.dekd_teacher_fraction`), ``epochs``
    (epochs it is trained: ``dekd_teacher_epochs``, or 1 of its
    ``schedule_epochs``-epoch run on a part of the data), ``schedule_epochs``
    (the length of the cosine schedule it is stopped in), ``train_examples``
    (the size of the set it trains on), ``steps`` (its optimizer steps),
    ``schedule_steps`` (the steps its schedule spans) and
    ``kd_teacher_steps`` (the steps of the KD teacher, the whole run).

    >>> p = dekd_teacher_plan(StudyConfig(epochs=1), 1347)
    >>> p["fraction"], p["steps"], p["kd_teacher_steps"]
    (0.25, 5, 21)
    """
    n, bs = int(num_train_examples), config.batch_size
    full = _steps(n, bs)
    kd = {"kd_teacher_steps": config.epochs * full}
    if config.epochs > 1:
        return {
            **kd,
            "fraction": None,
            "epochs": config.dekd_teacher_epochs,
            "schedule_epochs": config.epochs,
            "train_examples": n,
            "steps": config.dekd_teacher_epochs * full,
            "schedule_steps": config.epochs * full,
        }
    parts = round(1 / config.dekd_teacher_fraction)
    subset = max(1, round(n / parts))
    steps = _steps(subset, bs)
    return {
        **kd,
        "fraction": config.dekd_teacher_fraction,
        "epochs": 1,
        "schedule_epochs": parts,
        "train_examples": subset,
        "full_train_examples": n,
        "steps": steps,
        "schedule_steps": parts * steps,
    }


def _fraction_text(fraction):
    return f"1/{round(1 / fraction)}"


def _dekd_plan_line(config, dplan):
    teacher = config.teacher
    if dplan["fraction"] is None:
        e = dplan["epochs"]
        return (
            f"De-KD teacher: {teacher} after {e} epoch{'s' if e > 1 else ''} of its "
            f"{dplan['schedule_epochs']}-epoch run ({dplan['steps']} of "
            f"{dplan['schedule_steps']} steps; the KD teacher is the best checkpoint "
            "of the whole run)."
        )
    frac = _fraction_text(dplan["fraction"])
    return (
        f"De-KD teacher: a one-epoch study, where one epoch of training is the KD "
        f"teacher itself, so the De-KD teacher is {teacher} after the first {frac} "
        f"of that epoch: {dplan['steps']} steps (the KD teacher: "
        f"{dplan['kd_teacher_steps']}) at the learning rates of the epoch's start, "
        f"on a random {dplan['train_examples']} of the "
        f"{dplan['full_train_examples']} training examples (drawn with the seed)."
    )


def _dekd_subset(dataset, size, seed):
    """`dataset` with a random `size` of its training examples (test unchanged)."""
    n = dataset.num_examples("train")
    keep = np.sort(np.random.RandomState(seed).permutation(n)[:size])
    if dataset.in_memory:
        return dataclasses.replace(
            dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep]
        )
    return dataclasses.replace(
        dataset, train_files=dataset.train_files[keep], y_train=dataset.y_train[keep]
    )


class _PartEpochTeacher:
    """The De-KD teacher of a one-epoch study: part of the epoch, cached."""

    def __init__(self, experiment, dataset, seed, dplan, out, train_config):
        from keras_tfkd import workflows

        self.subset = _dekd_subset(dataset, dplan["train_examples"], seed)
        # One epoch of a `schedule_epochs`-epoch run on the subset: the steps
        # and learning rates of the first part of the full one-epoch run.
        self.experiment = experiment.replace(
            epochs=dplan["schedule_epochs"], teacher_epochs=1
        )
        self.seed = seed
        self.info = {
            "fraction": dplan["fraction"],
            "train_examples": dplan["train_examples"],
            "full_train_examples": dplan["full_train_examples"],
            "steps": dplan["steps"],
            "kd_teacher_steps": dplan["kd_teacher_steps"],
        }
        record = workflows._planned_record(
            self.experiment.teacher_experiment(),
            self.subset,
            seed,
            train_config,
            stop_after=1,
        )
        self.path = (
            Path(out)
            / workflows.CHECKPOINTS_DIR
            / workflows._folder_name(record)
            / "final.keras"
        )

    def train(self, out, train_config, store, log):
        """Train (or reuse) the teacher; return its record, annotated."""
        from keras_tfkd import workflows

        path, record = workflows.teacher_checkpoint(
            self.experiment,
            self.subset,
            seed=self.seed,
            output_dir=out,
            config=train_config,
            store=store,
            log=log,
        )
        self.path = path
        if record.get("dekd_teacher") != self.info:
            record = {**record, "dekd_teacher": self.info}
            store.add(record)
        return record


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
    dplan = dekd_teacher_plan(config, dataset.num_examples("train"))
    if "dekd" in config.methods:
        log(_dekd_plan_line(config, dplan))
    keys = []
    for i, (exp, seed) in enumerate(jobs, 1):
        label = f"[{i}/{len(jobs)}] {_run_label(exp, dplan)}, seed {seed}"
        before = time.perf_counter()
        teacher = None
        if exp.method == "dekd" and dplan["fraction"] is not None:
            teacher = _PartEpochTeacher(exp, dataset, seed, dplan, out, train_config)
        path = None if teacher is None else teacher.path
        done = store.get(
            workflows.planned_key(
                exp, dataset, seed, train_config, teacher_checkpoint_path=path
            )
        )
        if done is None:
            log(f"{label} ...")
        teacher_record = None
        if teacher is not None and done is None:
            teacher_record = teacher.train(out, train_config, store, log)
        record = workflows.train(
            exp,
            dataset,
            seed=seed,
            output_dir=out,
            config=train_config,
            store=store,
            teacher_checkpoint_path=None if teacher is None else teacher.path,
            log=log,
        )
        if teacher_record is not None and (
            record.get("teacher_key") != teacher_record["key"]
            or record.get("dekd_teacher") != teacher.info
        ):
            record = {
                **record,
                "teacher_key": teacher_record["key"],
                "dekd_teacher": teacher.info,
            }
            store.add(record)
        keys.append(record["key"])
        if record.get("teacher_key"):
            keys.append(record["teacher_key"])
        status = "skipped (already in results.json)" if done else "done"
        took = time.perf_counter() - before
        log(
            f"{label}: {status}; test acc {_pct(record['test_accuracy'])} (best "
            f"{_pct(record['best_test_accuracy'])}) [{took:.1f} s]"
        )
        for line in workflows.explain_accuracy(record):
            log(f"    note: {line}")
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


def _run_label(exp, dplan=None):
    name = METHOD_LABELS[exp.method]
    if exp.teacher is None:
        return f"{name} {exp.student}"
    teacher = exp.teacher
    if exp.method == "dekd":
        if dplan is not None and dplan["fraction"] is not None:
            teacher += f"@{_fraction_text(dplan['fraction'])}ep"
        else:
            teacher += f"@{exp.teacher_epochs}ep"
    return f"{name} {exp.student} <- {teacher}"


def _pct(value):
    return "n/a" if value is None else f"{100 * value:.2f}%"


# ------------------------------------------------------------------ summary
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
    are `workflows.explain_accuracy` lines, with the seeds they hold for.
    Teacher-only runs (the De-KD teacher) become rows with
    ``role == "teacher"``.
    """
    from keras_tfkd import workflows

    groups = {}
    for r in records:
        role = r.get("role", "run")
        key = (
            r["method"],
            r["student"],
            r["teacher"],
            _teacher_epochs(r),
            r["epochs"],
            role,
        )
        groups.setdefault(key, []).append(r)
    paired = {
        (r["student"], r["epochs"], r["seed"]): r
        for r in records
        if r["method"] == "baseline" and r.get("role", "run") == "run"
    }
    rows = []
    for (method, student, teacher, t_epochs, epochs, role), group in groups.items():
        best, best_std = _mean_std([r["best_test_accuracy"] for r in group])
        final, final_std = _mean_std([r["test_accuracy"] for r in group])
        t_acc, t_std = _mean_std([r.get("teacher_test_accuracy") for r in group])
        notes = {}
        for r in group:
            for line in workflows.explain_accuracy(r):
                notes.setdefault(line, []).append(r["seed"])
        first = group[0]
        hp = first.get("hyperparameters", {})
        row = {
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
            "teacher_accuracy": t_acc,
            "teacher_accuracy_std": t_std,
            "diverged": sum(bool(r.get("diverged")) for r in group),
            "kl_note": first.get("kl_translation", {}).get("note"),
            "train_seconds": float(sum(r.get("train_seconds", 0) for r in group)),
            "curve": _mean_curve(group),
            "notes": [(line, sorted(seeds)) for line, seeds in notes.items()],
        }
        for field, name in (("best", "best_test_accuracy"), ("final", "test_accuracy")):
            diffs = []
            for r in group:
                base = paired.get((r["student"], r["epochs"], r["seed"]))
                if role == "run" and base is not None:
                    if r[name] is not None and base[name] is not None:
                        diffs.append(100 * (r[name] - base[name]))
            row[f"delta_{field}_seeds"] = diffs
            row[f"delta_{field}_std"] = (
                float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None
            )
        rows.append(row)
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


def _table_cells(rows):
    head = [
        "method",
        "student",
        "teacher (test acc)",
        "best acc %",
        "Δ best",
        "final acc %",
        "Δ final",
        "n",
    ]
    body = []
    for row in rows:
        if row["role"] != "run":
            continue
        if row["method"] == "baseline":
            deltas = ["ref", "ref"]
        else:
            deltas = [
                _fmt_delta(row[f"delta_{f}"], row[f"delta_{f}_std"])
                for f in ("best", "final")
            ]
        body.append(
            [
                row["label"] + (" (diverged)" if row["diverged"] else ""),
                row["student"],
                _teacher_cell(row),
                _fmt(row["best"], row["best_std"]),
                deltas[0],
                _fmt(row["final"], row["final_std"]),
                deltas[1],
                str(row["n"]),
            ]
        )
    return head, body


def _header(config, dataset):
    import keras

    epochs = f"{config.epochs} epoch{'s' if config.epochs > 1 else ''}"
    return (
        f"{dataset.name} (K={dataset.num_classes}), {epochs}, "
        f"seeds {' '.join(map(str, config.seeds))}, Adam lr {config.learning_rate:g} "
        "(cosine), "
        f"batch {config.batch_size}, backend {keras.backend.backend()}"
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


def _accuracy_notes(rows):
    """`workflows.explain_accuracy` lines of the rows: near chance, diverged."""
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
    """results.md: settings, the table, the K-translation used, the plot."""
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
    lines += [f"- **Note:** {note}" for note in _accuracy_notes(rows)]
    counts = {r["n"] for r in rows if r["role"] == "run"}
    if counts <= {1}:
        spread = "one seed (n = 1), so no spread"
        paired = ""
    else:
        spread = "mean ± sample std (ddof=1) over the n seeds of each row"
        paired = ", ± the sample std of the per-seed differences"
    lines += [
        "- best: best test accuracy over epochs (as the paper reports); final: "
        f"after the last epoch; {spread}; Δ: against the baseline of the same "
        f"student (same seeds, same initial weights){paired}; n: seeds.",
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
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")


def _plot_label(row):
    name = f"{row['label']} {row['student']}"
    if row["teacher"]:
        name += f" <- {row['teacher']}"
        if row["teacher_epochs"]:
            name += _teacher_epochs_text(row["teacher_epochs"])
    return name


def plot(rows, path, title=""):
    """results.png: accuracies on their real scale, Δ vs baseline, curves.

    Three panels: the best test accuracy of every (method, student) as bars
    on the full 0-100% axis, with chance (1/K) marked; its difference with
    the same student's baseline in accuracy points, around a zero line,
    with the per-seed (paired) differences as small marks and error bars of
    their sample std (none with one seed); and the mean test accuracy per
    epoch, one marker per epoch (so one epoch is one point), the legend
    outside the axes. Drawn on a `matplotlib.figure.Figure` with the Agg
    canvas, so it never touches pyplot's global backend.
    """
    fig = _figure(rows, title)
    fig.savefig(path, dpi=110)
    return Path(path)


def _figure(rows, title=""):
    """The `matplotlib.figure.Figure` of `plot`: axes absolute, delta, curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    spread = _spread_note(rows)
    rows = [r for r in rows if r["role"] == "run" and r["best"] is not None]
    fig = Figure(figsize=(13, 10), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1])
    absolute = fig.add_subplot(grid[0, 0])
    delta = fig.add_subplot(grid[0, 1], sharey=absolute)
    curves = fig.add_subplot(grid[1, :])
    y = np.arange(len(rows))
    colors = [f"C{i % 10}" for i in range(len(rows))]
    labels = [_plot_label(r) for r in rows]
    classes = {r["num_classes"] for r in rows if r.get("num_classes")}
    chance = 100 / classes.pop() if len(classes) == 1 else None
    several = any(r["n"] > 1 for r in rows)

    # 1. The best accuracy on its real scale.
    absolute.barh(
        y,
        [r["best"] for r in rows],
        xerr=[r["best_std"] or 0 for r in rows] if several else None,
        color=colors,
        height=0.65,
        capsize=3,
    )
    for yi, r in zip(y, rows):
        absolute.text(
            1,
            yi,
            _fmt(r["best"], r["best_std"]),
            va="center",
            ha="left",
            fontsize=8,
            color="white",
            fontweight="bold",
        )
    if chance is not None:
        absolute.axvline(chance, color="black", ls=":", lw=1)
        absolute.text(
            chance,
            0.005,
            f" chance (1/K = {chance:.0f}%)",
            fontsize=7,
            va="bottom",
            ha="left",
            transform=absolute.get_xaxis_transform(),
        )
    absolute.set_xlim(0, 100)
    absolute.set_yticks(y, labels, fontsize=8)
    absolute.invert_yaxis()
    absolute.set_xlabel("best test accuracy (%)")
    absolute.set_title(
        "best test accuracy (%), on the full 0-100 scale\n"
        + ("mean ± sample std over seeds" if several else "n = 1 seed: no spread"),
        fontsize=10,
    )
    absolute.grid(axis="x", alpha=0.3)

    # 2. The difference with the baseline, in accuracy points.
    reach = [1.0]
    for yi, r, color in zip(y, rows, colors):
        if r["method"] == "baseline":
            delta.plot(0, yi, marker="D", mfc="none", color="grey", ms=7)
            delta.text(0, yi - 0.3, "baseline", fontsize=7, ha="center", color="grey")
            continue
        if r["delta_best"] is None:
            delta.text(0, yi, "no baseline", fontsize=7, ha="center", va="center")
            continue
        std = r["delta_best_std"]
        seeds = r.get("delta_best_seeds") or []
        if len(seeds) > 1:
            delta.plot(
                seeds, [yi + 0.22] * len(seeds), "o", color=color, ms=3.5, alpha=0.7
            )
        delta.errorbar(
            r["delta_best"],
            yi,
            xerr=std,
            fmt="o",
            color=color,
            ms=7,
            capsize=4,
            elinewidth=1.5,
        )
        delta.text(
            r["delta_best"],
            yi - 0.3,
            _fmt_delta(r["delta_best"], std),
            fontsize=7,
            ha="center",
        )
        reach += [abs(r["delta_best"]) + (std or 0), *map(abs, seeds)]
    span = 1.2 * max(reach)
    delta.set_xlim(-span, span)
    delta.axvline(0, color="black", lw=1)
    delta.tick_params(labelleft=False)
    delta.grid(axis="x", alpha=0.3)
    tests = {r["test_examples"] for r in rows if r.get("test_examples")}
    image = f"; 1 test image = {100 / tests.pop():.2f}" if len(tests) == 1 else ""
    delta.set_xlabel(f"Δ best vs the same student's baseline (accuracy points{image})")
    bars = (
        "bars: sample std of the per-seed differences; small dots: each seed"
        if several
        else "n = 1 seed: no error bars"
    )
    delta.set_title(f"difference with the baseline, in points\n{bars}", fontsize=10)

    # 3. The test accuracy per epoch, every epoch a marker.
    values = []
    longest = max([len(r["curve"]) for r in rows] or [0])
    students = [r["student"] for r in rows]
    main = max(students, key=students.count) if students else None
    dodge = 0.25 / max(1, len(rows) - 1) if longest <= 3 else 0.0
    for i, (r, color) in enumerate(zip(rows, colors)):
        if not r["curve"]:
            continue
        epochs = np.arange(1, len(r["curve"]) + 1) + dodge * (i - (len(rows) - 1) / 2)
        curves.plot(
            epochs,
            r["curve"],
            color=color,
            marker=_MARKERS[i % len(_MARKERS)],
            ms=6,
            lw=1.4,
            ls="-" if r["student"] == main else "--",
            label=_plot_label(r),
        )
        values += r["curve"]
    if values:
        low, high = min(values), max(values)
        if chance is not None and chance < low:
            curves.axhline(chance, color="black", ls=":", lw=1, label="chance (1/K)")
            low = chance
        pad = max(1.0, 0.05 * (high - low))
        curves.set_ylim(max(0.0, low - pad), min(100.0, high + pad) + 0.5)
        curves.set_xlim(0.5, longest + 0.5)
        curves.legend(
            fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
        )
    if 0 < longest <= 20:
        curves.set_xticks(range(1, longest + 1))
    else:
        curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel("epoch")
    curves.set_ylabel("test accuracy (%)")
    curves.set_title(
        f"test accuracy after every epoch (mean over seeds; dashed: students "
        f"other than {main}"
        + ("; points moved sideways to be seen" if dodge else "")
        + ")",
        fontsize=10,
    )
    curves.grid(alpha=0.3)
    fig.suptitle("\n".join(t for t in (title, spread) if t), fontsize=10)
    return fig
