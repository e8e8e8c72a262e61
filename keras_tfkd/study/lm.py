"""A language-modelling study: distil a causal LM on real text, token by token.

`run_lm_study` runs a `StudyConfig` whose ``dataset`` is a text data set
(``fortunes``, `keras_tfkd.data.text`; `run_study` hands it here):

1. the **teacher** (``config.teacher``, e.g. ``lm_small``) is trained first,
   once, with the first seed, for `TEACHER_EPOCHS_FACTOR` times
   ``config.epochs`` epochs (a teacher clearly better than the student, as a
   trained LM teacher is); its checkpoint of lowest validation perplexity is
   the teacher;
2. per seed, the **student** (``config.student``, e.g. ``lm_tiny``) by every
   method of `LM_METHODS`: the baseline (also Tf-KD_self's teacher: its
   lowest-validation-perplexity checkpoint), LSR, Tf-KD_reg, Tf-KD_self, KD
   (forward KL), reverse KL and generalized JSD, each with the
   hyper-parameters of `LM_HYPERPARAMETERS`.

A teacher is frozen and the windows are not augmented, so its logits over
the training windows are computed once per teacher checkpoint
(`keras_tfkd.teachers.CachedTeacher`) and fed with the batches, instead of
running the teacher at every step of every run.

Every run of a seed starts from the same initial weights and sees the same
batches (shuffled with the seed and the epoch, the last partial batch
dropped), so every comparison with the baseline is paired. Every loss is a
mean over the unmasked tokens (the padding mask is the `sample_weight`).
After every epoch the student is evaluated on the validation and test
windows: **perplexity** ``exp(NLL)`` (the mean negative log-likelihood per
unmasked token), **next-token accuracy** and the token-level **ECE** (15
bins), all on unmasked tokens only. The headline of a run is its test
metrics at the epoch of lowest validation perplexity (the last of equal
ones). Results go to ``results.json`` (one record per run; a rerun into the
same folder skips finished runs and reuses the teacher checkpoints) and
``results.md`` (`keras_tfkd.study.lm_report`).

Left out, and why: Re-KD and De-KD (a weak or early teacher: the image study
covers that question), PS-KD (an ``N x L x V`` store), OLS (a ``V x V``
matrix), CS-KD (class pairs have no per-token meaning) and DKD.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import time
from pathlib import Path

import numpy as np

from keras_tfkd.study import tune
from keras_tfkd.study.lm_config import (
    LM_HYPERPARAMETERS,
    LM_METHOD_LABELS,
    LM_METHODS,
    LM_SEARCH_SPACES,
    LM_TEACHER_METHODS,
    check_lm_method,
)

__all__ = ["LM_METHODS", "evaluate_tokens", "run_lm_study"]

#: Windows per `predict` call of the evaluation.
EVAL_BATCH = 250
#: ECE bins (as the image study).
ECE_BINS = 15
#: The teacher trains this many times the students' epochs (on the same
#: windows, its cosine schedule as long): trained as long as a student, the
#: larger model is barely better yet (measured on 2 CPU cores: validation
#: perplexity 13.5 against the student's 14.4 after 225 steps). Twice as long
#: is enough at the preset's 9,600 windows: with three times (15 epochs) its
#: best epoch was the 11th, test perplexity 6.1 against the students' 9.1,
#: and the teacher was a third of the preset's time.
TEACHER_EPOCHS_FACTOR = 2


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def evaluate_tokens(model, x, y, w, batch_size=EVAL_BATCH):
    """NLL, perplexity, accuracy and ECE of `model` on the unmasked tokens.

    ``nll = sum_{n,l} w[n,l] (-log p[n,l,y[n,l]]) / sum w``, ``perplexity =
    exp(nll)``; the accuracy and the ECE (`ECE_BINS` equal-width bins of the
    top probability, as `keras_tfkd.metrics.expected_calibration_error`, here
    summed batch by batch) are weighted by ``w`` the same way. NaN for all of them
    when a logit is not finite (a diverged model).

    >>> evaluate_tokens(lm, x, y, w)["perplexity"]  # doctest: +SKIP
    4.92
    """
    from keras_tfkd import distribution

    nll_sum = correct = weight = 0.0
    gap = np.zeros(ECE_BINS)
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        z = distribution.predict(model, x[sl], batch_size=batch_size)
        keep = w[sl] > 0
        z, labels, weights = z[keep].astype(np.float64), y[sl][keep], w[sl][keep]
        if not np.all(np.isfinite(z)):
            nan = float("nan")
            return {"nll": nan, "perplexity": nan, "accuracy": nan, "ece": nan}
        log_p = _log_softmax(z)
        nll_sum += float(
            -(np.take_along_axis(log_p, labels[:, None], -1)[:, 0] * weights).sum()
        )
        hit = np.argmax(z, axis=-1) == labels
        correct += float((hit * weights).sum())
        weight += float(weights.sum())
        confidence = np.exp(log_p.max(axis=-1))
        bins = np.minimum(np.floor(confidence * ECE_BINS), ECE_BINS - 1).astype(int)
        gap += np.bincount(bins, weights * (hit - confidence), minlength=ECE_BINS)
    if not weight:
        nan = float("nan")
        return {"nll": nan, "perplexity": nan, "accuracy": nan, "ece": nan}
    nll = nll_sum / weight
    return {
        "nll": nll,
        "perplexity": math.exp(min(nll, 700.0)),
        "accuracy": correct / weight,
        "ece": float(np.abs(gap).sum() / weight),
    }


def _hyperparameters(config, method, dataset, teacher_key=None, values=None):
    """A run's hyper-parameters: the method's (`LM_HYPERPARAMETERS`, with
    `values` of a tuned setting over them) and the training's."""
    values = dict(values or {})
    learning_rate = values.pop("learning_rate", config.learning_rate)
    hp = {**LM_HYPERPARAMETERS[method], **values}
    hp.update(
        batch_size=config.batch_size,
        learning_rate=learning_rate,
        sequence_length=dataset.sequence_length,
        limit=list(config.limit) if isinstance(config.limit, tuple) else config.limit,
        train_windows=dataset.num_windows("train"),
    )
    if teacher_key is not None:
        hp["teacher_key"] = teacher_key
    return hp


def _build_distiller(method, student, teacher, vocabulary_size, hp):
    from keras_tfkd import divergences, recipes
    from keras_tfkd.distiller import Distiller

    hp = {k: hp[k] for k in LM_HYPERPARAMETERS[method]}
    if method == "baseline":
        return recipes.baseline(student)
    if method == "lsr":
        return recipes.label_smoothing(student, epsilon=hp["epsilon"])
    if method == "tfkd_reg":
        return recipes.tfkd_reg(student, vocabulary_size, **hp)
    if method == "tfkd_self":
        return recipes.tfkd_self(student, teacher, **hp)
    if method == "kd":
        return recipes.kd(student, teacher, **hp)
    t = hp["temperature"]
    loss = (
        divergences.ReverseKL(temperature=t)
        if method == "reverse_kl"
        else divergences.GeneralizedJSD(beta=hp["beta"], temperature=t)
    )
    return Distiller(
        student=student, teacher=teacher, soft_loss=loss, alpha=hp["alpha"], name=method
    )


class _Run:
    """One training run of the study (a method, a seed), and its record."""

    def __init__(
        self,
        config,
        dataset,
        method,
        seed,
        model,
        teacher=None,
        role=None,
        values=None,
    ):
        from keras_tfkd import runs

        self.config, self.dataset = config, dataset
        self.method, self.seed, self.model_name = method, seed, model
        self.teacher = teacher  # (key, model name, checkpoint path) or None
        self.role = role or "student"
        factor = TEACHER_EPOCHS_FACTOR if self.role == "teacher" else 1
        self.epochs = config.epochs * factor
        teacher_key = None if teacher is None else teacher[0]
        self.hp = _hyperparameters(config, method, dataset, teacher_key, values)
        teacher_name = None if teacher is None else teacher[1]
        self.key = runs.run_key(
            method, model, teacher_name, dataset.name, seed, self.epochs, self.hp
        )
        safe = self.key.replace("/", "_")
        self.checkpoint = Path(config.output_dir) / "checkpoints" / f"{safe}.weights.h5"

    @property
    def label(self):
        name = LM_METHOD_LABELS[self.method]
        if self.role == "teacher":
            return f"Teacher {self.model_name}"
        if self.teacher is None:
            return f"{name} {self.model_name}"
        return f"{name} {self.model_name} <- {self.teacher[1]}"

    def _model(self, name):
        from keras_tfkd import runs

        d = self.dataset
        return runs.build_model(name, d.vocabulary_size, (d.sequence_length,))

    def _cached_teacher(self, x, teacher_logits):
        """The teacher as logits over the training windows, computed once per
        teacher checkpoint (`teacher_logits` keeps the last one): the teacher is
        frozen and the windows are not augmented, so running it at every step of
        every run would recompute the same logits."""
        from keras_tfkd.teachers import CachedTeacher

        path = self.teacher[2]
        if teacher_logits.get("checkpoint") != path:
            teacher_logits.clear()
            model = self._model(self.teacher[1])
            model.load_weights(path)
            teacher_logits["checkpoint"] = path
            teacher_logits["teacher"] = CachedTeacher.from_model(
                model, x, batch_size=EVAL_BATCH
            )
        return teacher_logits["teacher"]

    def train(self, log, teacher_logits=None):
        import keras

        from keras_tfkd import runs

        config, d = self.config, self.dataset
        x, y, w = d.split("train")
        teacher = None
        if self.teacher is not None:
            cache = {} if teacher_logits is None else teacher_logits
            teacher = self._cached_teacher(x, cache)
        runs.deterministic(self.seed)
        student = self._model(self.model_name)
        distiller = _build_distiller(
            self.method, student, teacher, d.vocabulary_size, self.hp
        )
        bs = config.batch_size
        steps = len(x) // bs
        if steps < 1:
            raise ValueError(
                f"The training split has {len(x)} windows, fewer than one batch "
                f"(batch_size={bs}): raise `limit` or lower `batch_size`."
            )
        schedule = keras.optimizers.schedules.CosineDecay(
            self.hp["learning_rate"], decay_steps=steps * self.epochs
        )
        distiller.compile(optimizer=keras.optimizers.Adam(schedule))
        history = {}
        best, best_epoch, best_weights = math.inf, 0, None
        start = time.perf_counter()
        for epoch in range(self.epochs):
            order = np.random.RandomState(self.seed * 100_003 + epoch).permutation(
                len(x)
            )[: steps * bs]
            inputs = x[order] if teacher is None else teacher.attach(x)
            if teacher is not None:  # the windows and their logits, in this order
                inputs = {k: v[order] for k, v in inputs.items()}
            fit = distiller.fit(
                inputs,
                y[order],
                sample_weight=w[order],
                batch_size=bs,
                epochs=1,
                shuffle=False,
                verbose=0,
            )
            history.setdefault("loss", []).append(float(fit.history["loss"][-1]))
            for split, prefix in (("validation", "val"), ("test", "test")):
                scores = evaluate_tokens(student, *d.split(split))
                for name, value in scores.items():
                    history.setdefault(f"{prefix}_{name}", []).append(value)
            val = history["val_nll"][-1]
            if math.isfinite(val) and val <= best:  # the last of equal epochs
                best, best_epoch = val, epoch + 1
                best_weights = student.get_weights()
            log(
                f"    {self.label} seed {self.seed} epoch {epoch + 1}/{self.epochs}: "
                f"loss {history['loss'][-1]:.4f}  val ppl "
                f"{history['val_perplexity'][-1]:.3f}  test ppl "
                f"{history['test_perplexity'][-1]:.3f}  test acc "
                f"{100 * history['test_accuracy'][-1]:.2f}%"
            )
        seconds = time.perf_counter() - start
        if best_weights is not None:
            student.set_weights(best_weights)
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        student.save_weights(self.checkpoint)
        return self._record(history, best_epoch, seconds, steps)

    def _record(self, history, best_epoch, seconds, steps):
        import keras

        record = {
            "key": self.key,
            "study": "lm",
            "role": self.role,
            "method": self.method,
            "student": self.model_name,
            "teacher": None if self.teacher is None else self.teacher[1],
            "teacher_key": None if self.teacher is None else self.teacher[0],
            "dataset": self.dataset.name,
            "seed": self.seed,
            "epochs": self.epochs,
            "hyperparameters": self.hp,
            "history": history,
            "steps_per_epoch": steps,
            "train_seconds": round(seconds, 3),
            "checkpoint": str(self.checkpoint),
            "selected_epoch": best_epoch or None,
            "diverged": not best_epoch,
        }
        for name in ("nll", "perplexity", "accuracy", "ece"):
            values = history[f"test_{name}"]
            record[f"test_{name}"] = values[-1]
            record[f"selected_test_{name}"] = (
                values[best_epoch - 1] if best_epoch else None
            )
        if best_epoch:
            record["selected_val_perplexity"] = history["val_perplexity"][
                best_epoch - 1
            ]
        record["backend"] = keras.backend.backend()
        record["keras_version"] = keras.__version__
        record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        )
        return record


def _execute(run, store, log, counter, teacher_logits, label=None):
    """Train `run`, or reuse its record and checkpoint; return its record."""
    done = store.get(run.key)
    if label is None:
        counter[0] += 1
        label = f"[{counter[0]}/{counter[1]}] {run.label}, seed {run.seed}"
    if done is not None and Path(run.checkpoint).exists():
        log(f"{label}: skipped (already in results.json)")
        return done
    log(f"{label} ...")
    before = time.perf_counter()
    record = run.train(log, teacher_logits)
    store.add(record)
    took = f"[{time.perf_counter() - before:.1f} s]"
    if label.startswith("[tune"):  # a trial: search_unit logs its validation score
        log(f"{label}: done {took}")
        return record
    ppl = record["selected_test_perplexity"]
    log(
        f"{label}: done; test ppl {ppl if ppl is None else round(ppl, 3)} at epoch "
        f"{record['selected_epoch']} {took}"
    )
    return record


def load_text(config):
    """The `TextDataset` of a language-modelling study's config."""
    from keras_tfkd.data import text

    return text.load_fortunes(
        config.data_dir,
        validation_fraction=config.validation_fraction or 0.1,
        limit=config.limit,
    )


def run_lm_study(config, log=print, dataset=None):
    """Run (or resume) a language-modelling study; write results.json/.md.

    `dataset` is a `keras_tfkd.data.text.TextDataset` to use instead of
    loading ``config.dataset``. Returns a dict like `run_study`'s:
    ``records``, ``rows``, ``table``, ``seconds`` and ``paths``.
    """
    import keras

    from keras_tfkd import runs
    from keras_tfkd.study import lm_report

    start = time.perf_counter()
    for method in config.methods:
        check_lm_method(method)
    needs = [m for m in LM_TEACHER_METHODS if m in config.methods]
    if needs and config.teacher is None:
        raise ValueError(
            f"{', '.join(needs)} need a teacher model, got teacher=None: give one "
            "(--teacher) or leave those methods out."
        )
    for name in (config.student, config.teacher):
        if name is not None:
            runs.check_model_name(name)
    dataset = dataset if dataset is not None else load_text(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = runs.ResultsStore(out / runs.RESULTS_FILE)
    log(
        f"Language-modelling study: {len(config.methods)} methods x "
        f"{len(config.seeds)} seeds on {dataset.name} (byte-level, V="
        f"{dataset.vocabulary_size}, L={dataset.sequence_length}; "
        f"{dataset.num_windows('train')} train / {dataset.num_windows('validation')} "
        f"validation / {dataset.num_windows('test')} test windows), "
        f"{config.epochs} epochs, backend {keras.backend.backend()} -> {out}"
    )
    records, known, teacher_logits = {}, {}, {}
    with contextlib.ExitStack() as stack:
        if config.compilation_cache:
            stack.enter_context(runs.compilation_cache(out / ".jax_cache"))

        def execute(run, counter=None, label=None):
            if run.teacher is not None:  # its source ran first: its checkpoint
                source = known[run.teacher[0]]
                run.teacher = (source["key"], run.teacher[1], source["checkpoint"])
            known[run.key] = _execute(run, store, log, counter, teacher_logits, label)
            return known[run.key]

        teacher = _teacher_run(config, dataset, needs)
        if teacher is not None:
            records[teacher.key] = execute(teacher, label=f"[teacher] {teacher.label}")
        tuning = _tune(config, dataset, teacher, execute, known, store, log)
        jobs = _plan(config, dataset, teacher, tuning)
        counter = [0, len(jobs)]
        for run in jobs:
            record = execute(run, counter)
            result = tuning.get(run.method)
            if result is not None:
                mark = tune.annotation(result)
                if record.get("tuned") != mark:
                    record = store.add({**record, "tuned": mark})
            records[run.key] = record
    rows = lm_report.summarize(list(records.values()))
    seconds = time.perf_counter() - start
    table = lm_report.format_table(rows)
    text = lm_report.format_markdown(rows, config, dataset, tuning)
    (out / "results.md").write_text(text)
    paths = {"results.json": out / runs.RESULTS_FILE, "results.md": out / "results.md"}
    log("")
    log(table)
    log(f"\nWrote {', '.join(str(p) for p in paths.values())} ({seconds:.0f} s)")
    return {
        "tuning": tuning or None,
        "records": list(records.values()),
        "rows": rows,
        "table": table,
        "seconds": seconds,
        "paths": paths,
    }


def _teacher_run(config, dataset, needs):
    """The LM teacher's run (trained first, once, at the study's settings), or
    None when no method needs it."""
    if not needs:
        return None
    return _Run(
        config, dataset, "baseline", config.seeds[0], config.teacher, role="teacher"
    )


def _source(config, dataset, method, seed, teacher, values=None):
    """The teacher a student run of `method` learns from: ``(key, model,
    None)``, its checkpoint filled in once it ran; None for none. Tf-KD_self's
    is the student's baseline of the same seed (at the baseline's `values`)."""
    if method == "tfkd_self":
        base = _Run(config, dataset, "baseline", seed, config.student, values=values)
        return (base.key, config.student, None)
    if method in LM_TEACHER_METHODS:
        return (teacher.key, config.teacher, None)
    return None


def _tune(config, dataset, teacher, execute, known, store, log):
    """Each method's setting among ``config.tune`` trials on the tuning seed,
    by validation perplexity (`keras_tfkd.study.tune`); ``{method: result}``.

    The baseline is tuned first, over its learning rate (`LM_SEARCH_SPACES`);
    every later trial and run trains at the rate it chose, and Tf-KD_self's
    teacher is that tuned baseline.
    """
    if not config.tune:
        return {}
    methods = [m for m in LM_METHODS if m in config.methods]  # baseline first
    tuning, rate = {}, {}
    for u, method in enumerate(methods, 1):
        hp = LM_HYPERPARAMETERS[method]
        default = {
            f: config.learning_rate if f == "learning_rate" else hp[f]
            for f in LM_SEARCH_SPACES[method]
        }
        settings = tune.trial_values(
            method, default, config.tune, config.tune_seed, LM_SEARCH_SPACES
        )
        source = _source(config, dataset, method, config.tune_seed, teacher, rate)
        if method == "tfkd_self" and source[0] not in known:
            # No baseline trials ran (the study has no baseline): its teacher.
            execute(
                _Run(
                    config,
                    dataset,
                    "baseline",
                    config.tune_seed,
                    config.student,
                    values=rate,
                ),
                label=f"[tune] Tf-KD_self's teacher, seed {config.tune_seed}",
            )

        def run_trial(values, label, method=method, source=source, rate=rate):
            run = _Run(
                config,
                dataset,
                method,
                config.tune_seed,
                config.student,
                teacher=source,
                values={**rate, **values},
            )
            return execute(run, label=label)

        tuning[method] = tune.search_unit(
            method,
            method,
            config.student,
            settings,
            run_trial,
            tune_seed=config.tune_seed,
            objective=tune.PERPLEXITY,
            store=store,
            log=log,
            title=f"{LM_METHOD_LABELS[method]} {config.student}",
            position=f"{u}/{len(methods)}",
        )
        if method == "baseline":
            rate = tune.chosen_train_values(tuning)
    return tuning


def _plan(config, dataset, teacher, tuning):
    """The students' runs, in order: per seed the baseline and the rest, at
    the settings `tuning` chose (``{}``: the untuned ones)."""
    chosen = {m: dict(r["values"]) for m, r in tuning.items()}
    rate = tune.chosen_train_values(tuning)
    jobs = []
    for seed in config.seeds:
        base_values = chosen.get("baseline", {})  # its rate is the study's
        base = _Run(
            config, dataset, "baseline", seed, config.student, values=base_values
        )
        if "baseline" in config.methods or "tfkd_self" in config.methods:
            jobs.append(base)
        for method in config.methods:
            if method == "baseline":
                continue
            source = _source(config, dataset, method, seed, teacher, base_values)
            values = {**rate, **chosen.get(method, {})}
            jobs.append(
                _Run(
                    config,
                    dataset,
                    method,
                    seed,
                    config.student,
                    teacher=source,
                    values=values,
                )
            )
    return jobs
