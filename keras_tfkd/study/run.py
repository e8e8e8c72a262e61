"""`run_study`: train (or resume) a study's runs and write its results."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from keras_tfkd.study import lm_config
from keras_tfkd.study import tune as tune_lib
from keras_tfkd.study.config import (
    METHOD_LABELS,
    TEACHER_METHODS,
    StudyConfig,
    _dekd_plan_line,
    _dekd_subset,
    _fraction_text,
    dekd_teacher_plan,
    plan,
)
from keras_tfkd.study.figure import plot
from keras_tfkd.study.report import _header, format_markdown, format_table, summarize


class _PartEpochTeacher:
    """The De-KD teacher of a one-epoch study: part of the epoch, cached."""

    def __init__(self, experiment, dataset, seed, dplan, out, train_config):
        from keras_tfkd import runs

        self.subset = _dekd_subset(dataset, dplan["train_examples"], seed)
        # One epoch of a `schedule_epochs`-epoch run on the subset: the steps
        # and learning rates of the first part of the full one-epoch run.
        self.experiment = experiment.replace(
            epochs=dplan["schedule_epochs"], teacher_epochs=1
        )
        self.info = {
            "fraction": dplan["fraction"],
            "train_examples": dplan["train_examples"],
            "full_train_examples": dplan["full_train_examples"],
            "steps": dplan["steps"],
            "kd_teacher_steps": dplan["kd_teacher_steps"],
        }
        # Planned on the subset: its checkpoint is what the De-KD run loads.
        self.plan = runs.plan_run(
            self.experiment,
            self.subset,
            seed=seed,
            output_dir=out,
            config=train_config,
        ).teacher
        self.path = self.plan.checkpoint

    def train(self, store, log):
        """Train (or reuse) the teacher; return its record, annotated."""
        from keras_tfkd import runs

        record = runs.execute(self.plan.run, self.subset, store=store, log=log)
        if record.get("dekd_teacher") != self.info:
            record = {**record, "dekd_teacher": self.info}
            store.add(record)
        return record


def run_study(config=None, log=print, dataset=None):
    """Run (or resume) a study; write results.json/.md/.png; return a summary.

    `dataset` is a loaded `keras_tfkd.data.Dataset` to use instead of
    loading ``config.dataset`` (e.g. `keras_tfkd.data.from_arrays`); one
    that already holds out a validation split keeps it.

    Returns a dict with ``records`` (this study's runs, teachers included),
    ``rows`` (`summarize`), ``table`` (the printed text), ``seconds`` and the
    paths written.
    """
    from keras_tfkd import data, runs

    config = config or StudyConfig()
    if lm_config.is_text_dataset(config.dataset):  # keras_tfkd.study.lm
        from keras_tfkd.study.lm import run_lm_study

        return run_lm_study(config, log=log, dataset=dataset)
    start = time.perf_counter()
    models = [m for m in (config.student, config.teacher) if m is not None]
    for name in models:
        runs.check_model_name(name)
    if dataset is None:
        load_kw = {} if config.limit is None else {"limit": config.limit}
        dataset = data.load(config.dataset, config.data_dir, **load_kw)
    if config.validation_fraction and dataset.validation is None:
        dataset = data.holdout(dataset, config.validation_fraction, seed=0)
    if config.tune:  # before any folder or run is made
        tune_lib.check_tunable(dataset)
    needs = [m for m in TEACHER_METHODS if m in config.methods]
    for role, name in (("student", config.student), ("teacher", config.teacher)):
        if name is None or (role == "teacher" and not needs):
            continue
        try:  # each model takes the data and returns K logits, before training
            runs.check_model(name, dataset)
        except runs.ModelCheckError as e:
            if role == "student":
                raise
            raise runs.ModelCheckError(
                f"{e} It is the teacher of {', '.join(needs)}: give a teacher that "
                "fits the data, or leave those methods out."
            ) from None
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if config.compilation_cache:
            stack.enter_context(runs.compilation_cache(out / ".jax_cache"))
        return _run_jobs(config, dataset, out, start, log)


def _run_jobs(config, dataset, out, start, log):
    import keras

    from keras_tfkd import runs

    store = runs.ResultsStore(out / runs.RESULTS_FILE)
    train_config = config.train_config()
    jobs = plan(config)
    log(
        f"Study: {len(config.methods)} methods x {len(config.seeds)} seeds on "
        f"{dataset.name} (K={dataset.num_classes}, {dataset.num_examples('train')} "
        f"train{_validation_text(dataset)} / {dataset.num_examples('test')} test), "
        f"{config.epochs} epochs, "
        f"backend {keras.backend.backend()} -> {out}"
    )
    dplan = dekd_teacher_plan(config, dataset.num_examples("train"))
    if "dekd" in config.methods:
        log(_dekd_plan_line(config, dplan))

    def run_one(exp, seed, job_config, label):
        record, _ = _run_one(
            exp, seed, dataset, out, store, job_config, dplan, log, label
        )
        return record

    tuning = None
    if config.tune:
        tuning = tune_lib.search(
            config,
            jobs,
            run_one=run_one,
            train_config=train_config,
            store=store,
            log=log,
        )
    keys = []
    for i, (exp, seed, job_config, unit) in enumerate(
        tune_lib.tuned_jobs(jobs, tuning or {}, train_config), 1
    ):
        label = f"[{i}/{len(jobs)}] {_run_label(exp, dplan)}, seed {seed}"
        before = time.perf_counter()
        record, done = _run_one(
            exp, seed, dataset, out, store, job_config, dplan, log, label
        )
        if unit is not None and record.get("tuned") != tune_lib.annotation(
            tuning[unit]
        ):
            record = store.add({**record, "tuned": tune_lib.annotation(tuning[unit])})
        keys.append(record["key"])
        if record.get("teacher_key"):
            keys.append(record["teacher_key"])
        status = "skipped (already in results.json)" if done else "done"
        took = time.perf_counter() - before
        log(
            f"{label}: {status}; test acc {_pct(record['test_accuracy'])} (best "
            f"{_pct(record['best_test_accuracy'])}) [{took:.1f} s]"
        )
        for line in runs.explain_accuracy(record):
            log(f"    note: {line}")
    by_key = {r["key"]: r for r in store.records}
    records = [by_key[k] for k in dict.fromkeys(keys) if k in by_key]
    rows = summarize(tune_lib.reported(records) if tuning else records)
    rate = tune_lib.study_train_config(tuning, train_config).learning_rate
    header = _header(config, dataset, rate)
    table = format_table(rows, header)
    markdown = format_markdown(rows, header, config)
    if tuning:
        markdown += "\n" + tune_lib.format_markdown(tuning, config)
    (out / "results.md").write_text(markdown)
    paths = {
        "results.json": out / runs.RESULTS_FILE,
        "results.md": out / "results.md",
    }
    if config.plot:
        paths["results.png"] = plot(rows, out / "results.png", title=header)
    seconds = time.perf_counter() - start
    log("")
    log(table)
    log(f"\nWrote {', '.join(str(p) for p in paths.values())} ({seconds:.0f} s)")
    return {
        "tuning": tuning,
        "records": records,
        "rows": rows,
        "table": table,
        "seconds": seconds,
        "paths": paths,
    }


def _run_one(exp, seed, dataset, out, store, train_config, dplan, log, label):
    """Train (or find in results.json) one run of the study; (record, done)."""
    from keras_tfkd import runs

    teacher = None
    if exp.method == "dekd" and dplan["fraction"] is not None:
        teacher = _PartEpochTeacher(exp, dataset, seed, dplan, out, train_config)
    run_plan = runs.plan_run(
        exp,
        dataset,
        seed=seed,
        output_dir=out,
        config=train_config,
        teacher_checkpoint=None if teacher is None else teacher.path,
    )
    done = store.get(run_plan.key)
    if done is None:
        log(f"{label} ...")
    teacher_record = None
    if teacher is not None and done is None:
        teacher_record = teacher.train(store, log)
    record = runs.execute(run_plan, dataset, store=store, log=log)
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
    return record, done is not None


def _validation_text(dataset):
    held = getattr(dataset, "validation", None)
    return "" if held is None else f" + {held.num_examples('test')} validation"


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
