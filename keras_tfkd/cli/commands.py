"""The sub-commands ``study``, ``run`` and ``list``, and `_execute`.

Each command imports what it needs inside the function: Keras is imported by
`_execute`, after the backend is checked and set.
"""

from __future__ import annotations

import contextlib
import json
import math
import os

from keras_tfkd.cli.backend import (
    _import_keras,
    _quiet_tensorflow,
    _select_backend,
    check_backend,
)
from keras_tfkd.cli.errors import (
    _check_dataset,
    _check_experiment,
    _check_models,
    _data_error,
    _from_unknown_name_error,
    _unknown,
    _UsageError,
)
from keras_tfkd.cli.parser import _RUN_FIELD_FLAGS, LISTS
from keras_tfkd.experiments import METHODS, UnknownNameError

#: The study flags a preset can set: StudyConfig fields, given on the command
#: line or taken from the preset.
_PRESET_FLAGS = (
    "dataset",
    "limit",
    "epochs",
    "seeds",
    "student",
    "teacher",
    "batch_size",
    "learning_rate",
    "augment",
    "validation_fraction",
    "dekd_teacher_epochs",
    "kl",
    "tune",
    "tune_seed",
)


def _study(args, log):
    from keras_tfkd import data, runs, study
    from keras_tfkd.study import lm_config
    from keras_tfkd.study import tune as tune_lib

    try:
        chosen = study.preset(args.preset)
    except UnknownNameError as e:
        raise _UsageError(
            _unknown("preset", args.preset, e.valid, "--preset")
        ) from None
    given = {f: getattr(args, f) for f in _PRESET_FLAGS if getattr(args, f) is not None}
    # A preset may name its methods (a language-modelling study has its own).
    methods = tuple(args.methods or chosen.settings.get("methods", METHODS))
    # "--methods kd,lsr" (as --seeds 0,1) means "--methods kd lsr".
    methods = tuple(m for given in methods for m in given.split(",") if m)
    dataset = given.get("dataset", chosen.settings.get("dataset", "digits"))
    text = lm_config.is_text_dataset(dataset)
    valid = lm_config.LM_METHODS if text else METHODS
    for m in methods:
        if m not in valid:
            raise _UsageError(_unknown("method", m, valid, "--methods"))
    settings = {**chosen.settings, **given}
    settings.pop("methods", None)  # passed as `methods`, below
    if "dataset" in given:
        settings["dataset"] = _check_dataset(args.dataset)
        if args.data_dir and settings["dataset"].lower().endswith(".npz"):
            raise _UsageError(
                f"--data-dir is where a named data set is searched; the .npz file "
                f"{args.dataset!r} is read from its own path: drop --data-dir."
            )
    named, imported = [], []
    for flag in ("student", "teacher"):
        value = settings.get(flag)
        if value is not None and ":" in value:
            _import_model(value, f"--{flag}")
            imported.append(flag)
        elif value is not None:
            named.append((f"--{flag}", value))
    _check_models(*named)
    own = "student" in imported or str(settings.get("dataset", "")).lower().endswith(
        ".npz"
    )
    if own and "teacher" not in given:
        # A model or data of the user's: the preset's zoo teacher need not fit
        # them, so without --teacher only the teacher-free methods run.
        settings["teacher"] = None
        if not args.methods:
            methods = study.TEACHER_FREE_METHODS
    rate = settings.get("learning_rate")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise _UsageError(f"--learning-rate must be a number > 0, got {rate!r}.")
    if "seeds" in settings:
        settings["seeds"] = tuple(settings["seeds"])
    try:
        config = study.StudyConfig.from_preset(
            chosen.name,
            **settings,
            output_dir=args.output_dir,
            methods=methods,
            data_dir=args.data_dir,
            plot=not args.no_plot,
        )
    except ValueError as e:  # e.g. the same model as student and teacher
        raise _UsageError(str(e)) from None
    if (
        config.tune
        and not config.validation_fraction
        and not str(config.dataset).lower().endswith(".npz")
    ):
        raise _UsageError(
            "--tune chooses each setting on a validation split: give "
            "--validation-fraction > 0 (or a .npz with x_val, y_val)."
        )
    try:
        with _processes_scope(args, log):
            summary = study.run_study(config, log=log)
    except data.DatasetNotFoundError as e:
        raise _UsageError(_data_error(e, config.dataset), status=1) from None
    except data.DatasetFormatError as e:  # a .npz of the user's: says what is wrong
        raise _UsageError(str(e), status=1) from None
    except runs.ModelCheckError as e:  # a model of the user's that cannot serve
        raise _UsageError(str(e)) from None
    except tune_lib.NoValidationError as e:  # --tune on a .npz without x_val
        raise _UsageError(str(e)) from None
    except runs.CorruptCheckpointError as e:  # the message says what to do
        raise _UsageError(str(e), status=1) from None
    if args.quiet:
        print(summary["table"])
    return 0


#: Keras's variables for a job of several processes (`keras.distribution.initialize`).
PROCESS_VARIABLES = tuple(
    f"KERAS_DISTRIBUTION_{name}"
    for name in ("JOB_ADDRESSES", "NUM_PROCESSES", "PROCESS_ID")
)


def _join_processes(args, log):
    """Join a job of several processes if asked (the flags, or Keras's
    ``KERAS_DISTRIBUTION_*`` variables); returns the number of processes."""
    from keras_tfkd import distribution

    flags = (args.coordinator_address, args.num_processes, args.process_id)
    if all(f is None for f in flags) and not any(
        os.environ.get(name) for name in PROCESS_VARIABLES
    ):
        return 1
    try:
        count = distribution.initialize(*flags)
    except (NotImplementedError, ValueError, RuntimeError) as e:
        raise _UsageError(
            f"--coordinator-address/--num-processes/--process-id: {e}"
        ) from None
    log(f"  process {distribution.process_index()} of {count}")
    return count


@contextlib.contextmanager
def _processes_scope(args, log):
    """The study in a job of several processes: data parallel over all of them."""
    if _join_processes(args, log) == 1:
        yield
        return
    from keras_tfkd.distribution import get_distribution

    with get_distribution("data_parallel").scope():
        yield


def _import_model(spec, flag):
    """Register ``package.module:function`` (imported from the current folder
    first) as a model of the study; a usage error says what is missing."""
    import importlib
    import sys

    from keras_tfkd import runs

    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise _UsageError(
            f"{flag} {spec!r}: write package.module:function (a function that "
            "returns a logits keras.Model)."
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise _UsageError(
            f"{flag} {spec!r}: cannot import {module_name!r} ({e}). Run from the "
            "folder that holds it, or install it."
        ) from None
    builder = module
    for part in function_name.split("."):
        builder = getattr(builder, part, None)
    if not callable(builder):
        raise _UsageError(
            f"{flag} {spec!r}: {module_name!r} has no function {function_name!r}."
        )
    try:
        runs.register_model(spec, builder)
    except TypeError as e:
        raise _UsageError(f"{flag} {spec!r}: {e}") from None


def _read_config(path):
    """Experiment overrides from a JSON object (never eval or pickle)."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as e:
        raise _UsageError(
            f"--config {path!r}: cannot read it ({e.strerror})."
        ) from None
    except json.JSONDecodeError as e:
        raise _UsageError(
            f"--config {path!r} is not valid JSON (line {e.lineno}, column "
            f"{e.colno}: {e.msg})."
        ) from None
    if not isinstance(config, dict):
        raise _UsageError(
            f"--config {path!r} must hold a JSON object of experiment fields, "
            f"got a {type(config).__name__}."
        )
    return config


def _load_dataset(name, data_dir, limit):
    from keras_tfkd import data

    kwargs = {} if limit is None else {"limit": limit}
    return data.load(name, data_dir, **kwargs)


def _run_experiment(args):
    """The registry row of --experiment with --config and the flags applied."""
    experiment = _check_experiment(args.experiment)
    overrides = _read_config(args.config) if args.config else {}
    for field in _RUN_FIELD_FLAGS:  # a flag given wins over --config
        value = getattr(args, field)
        if value is not None:
            overrides[field] = value
    dataset_flag = "--dataset" if args.dataset else None
    overrides["dataset"] = _check_dataset(
        overrides.get("dataset") or experiment.dataset, dataset_flag
    )
    try:
        experiment = experiment.replace(**overrides)
    except (TypeError, ValueError) as e:  # a published value overridden badly
        raise _UsageError(str(e)) from None
    _check_models(
        ("--student" if args.student else "student", experiment.student),
        ("--teacher" if args.teacher else "teacher", experiment.teacher),
    )
    if args.teacher_checkpoint and experiment.teacher_source is None:
        raise _UsageError(
            f"--teacher-checkpoint: {experiment.id!r} takes no teacher model."
        )
    if args.teacher_checkpoint and not os.path.isfile(args.teacher_checkpoint):
        raise _UsageError(
            f"--teacher-checkpoint {args.teacher_checkpoint!r}: no such file.\n"
            "Pass a .keras file, e.g. <output-dir>/checkpoints/<run>/best.keras.",
            status=1,
        )
    return experiment


def _run(args, log):
    from keras_tfkd import data, runs
    from keras_tfkd.distribution import get_distribution

    experiment = _run_experiment(args)
    try:
        config = runs.TrainConfig(
            optimizer=args.optimizer,
            learning_rate=args.learning_rate,
            lr_schedule=args.lr_schedule,
            progress_every=0 if args.quiet else 1,
        )
    except ValueError as e:
        raise _UsageError(str(e)) from None
    try:
        dataset = _load_dataset(experiment.dataset, args.data_dir, args.limit)
    except data.DatasetNotFoundError as e:
        raise _UsageError(_data_error(e, experiment.dataset), status=1) from None
    # The run, resolved once: what follows only executes this plan.
    plan = runs.plan_run(
        experiment,
        dataset,
        seed=args.seed,
        output_dir=args.output_dir,
        config=config,
        teacher_checkpoint=args.teacher_checkpoint,
    )
    store = runs.ResultsStore(os.path.join(args.output_dir, runs.RESULTS_FILE))
    log(f"{experiment.id} on {dataset.name} (K={plan.num_classes}), seed {plan.seed}")
    log(f"  {experiment.describe()}")
    log(f"  KL term: {experiment.kl_note(plan.num_classes)}")
    name = args.distribution
    if _join_processes(args, log) > 1 and name == "single":
        name = "data_parallel"  # one job over every process's devices
    try:
        distribution = get_distribution(name)
    except (NotImplementedError, ValueError) as e:
        raise _UsageError(f"--distribution {args.distribution}: {e}") from None
    if distribution.num_replicas > 1:
        log(f"  data parallel over {distribution.num_replicas} devices")
    log.label = experiment.id
    try:
        with distribution.scope():
            record = runs.execute(plan, dataset, store=store, log=log)
    except runs.CorruptCheckpointError as e:  # the message says what to do
        raise _UsageError(str(e), status=1) from None
    best, final = record["best_test_accuracy"], record["test_accuracy"]
    print(
        f"{experiment.id}: best test accuracy "
        + ("n/a" if best is None else f"{100 * best:.2f}%")
        + f" (epoch {record['best_epoch']}), final "
        + ("n/a" if final is None else f"{100 * final:.2f}%")
        + f", {record['train_seconds']:.0f} s -> {store.path}"
        + "".join(f"\n  note: {line}" for line in runs.explain_accuracy(record))
    )
    return 0


def _list(args):
    from keras_tfkd import data, experiments

    what = LISTS if args.what == "all" else (args.what,)
    for section in what:
        if len(what) > 1:
            print(f"{section}:")
        indent = "  " if len(what) > 1 else ""
        if section == "experiments":
            for exp_id in experiments.available():
                print(indent + experiments.get(exp_id).describe())
        elif section == "presets":
            from keras_tfkd import presets

            for p in presets.PRESETS.values():
                print(f"{indent}{p.name}: {p.summary}; {p.cost}")
        elif section == "models":
            from keras_tfkd import runs

            for name in runs.model_names():
                print(indent + name)
        else:
            for name in data.available():
                print(indent + name)
    return 0


def _needs_keras(args):
    return args.command in ("study", "run") or args.what in ("models", "all")


def _execute(args, log):
    """Check and load the backend the command needs, then run the command."""
    if _needs_keras(args):
        backend = getattr(args, "backend", None)
        check_backend(backend, has_flag=hasattr(args, "backend"))
        _select_backend(backend)
        _import_keras(backend)
    try:
        with _quiet_tensorflow():
            if args.command == "study":
                return _study(args, log)
            if args.command == "run":
                return _run(args, log)
            return _list(args)
    except UnknownNameError as e:  # raised below the CLI: reworded
        raise _UsageError(_from_unknown_name_error(e)) from None
