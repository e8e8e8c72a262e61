"""The ``keras-tfkd`` command (also ``python -m keras_tfkd``).

Subcommands:

* ``keras-tfkd study``: the paper's whole comparison (baseline, LSR, KD,
  Re-KD, De-KD, Tf-KD_self, Tf-KD_reg) on an offline data set over several
  seeds; prints the table and writes results.json, results.md and
  results.png (see `keras_tfkd.study`).
* ``keras-tfkd run --experiment tfkd_reg/resnet18``: one reference
  experiment with its complete protocol (reference optimiser, schedule and
  augmentation, 200 epochs, seed 230), its teacher trained first and cached;
  flags override the published hyper-parameters.
* ``keras-tfkd list [experiments|models|datasets]``.

``--backend`` sets ``KERAS_BACKEND`` before Keras is imported. Unknown
experiment, model, data-set or method names exit with status 2 and one line
that lists the valid names.

Example::

    keras-tfkd study --backend jax --output-dir runs/study
    keras-tfkd run --experiment kd/mobilenet_v2_from_resnet18 --dataset cifar100
    keras-tfkd list experiments
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Keras-free imports only: the backend is chosen after the arguments are parsed.
from keras_tfkd.experiments import METHODS, UnknownNameError

__all__ = ["build_parser", "main"]

PROG = "keras-tfkd"
BACKENDS = ("tensorflow", "jax", "torch")
LISTS = ("experiments", "models", "datasets")
# TensorFlow's C++ start-up chatter (oneDNN, CPU features) drowns the progress
# lines; users can still set their own level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Set in the environment of a re-executed command (see `_select_backend`).
_REEXEC_FLAG = "KERAS_TFKD_CLI_REEXEC"


class _UsageError(Exception):
    """A bad name or value on the command line: one line, exit status 2."""


def _seed(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text!r}: seeds are integers"
        ) from None


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _add_backend(parser):
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend, set before Keras is imported (default: $KERAS_BACKEND "
        "or ~/.keras/keras.json)",
    )


def build_parser():
    """The argparse parser of ``keras-tfkd`` (imports nothing heavy)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Knowledge distillation via label smoothing regularization "
        "(Yuan et al., CVPR 2020) on Keras 3.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{study,run,list}")
    sub.required = True

    study = sub.add_parser(
        "study",
        help="run the paper's whole comparison on an offline data set",
        description="Baseline, LSR, KD, Re-KD, De-KD, Tf-KD_self and Tf-KD_reg "
        "over several seeds (defaults: digits, cnn_tiny <- cnn_small, 3 seeds, a "
        "few minutes on 2 CPU cores). Prints the paper-style table and writes "
        "results.json, results.md and results.png; finished runs are skipped "
        "when rerun into the same folder.",
    )
    study.add_argument(
        "--output-dir", default="runs/study", help="(default: %(default)s)"
    )
    study.add_argument("--dataset", default="digits", help="(default: %(default)s)")
    study.add_argument("--data-dir", help="folder to search for the data set first")
    study.add_argument(
        "--limit", type=_positive_int, help="use the first N examples of each split"
    )
    study.add_argument(
        "--epochs", type=_positive_int, default=12, help="(default: %(default)s)"
    )
    study.add_argument(
        "--seeds", type=_seed, nargs="+", default=[0, 1, 2], help="(default: 0 1 2)"
    )
    study.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help=f"subset of: {' '.join(METHODS)} (default: all)",
    )
    study.add_argument(
        "--student", default="cnn_tiny", help="the weak model (default: %(default)s)"
    )
    study.add_argument(
        "--teacher", default="cnn_small", help="the strong model (default: %(default)s)"
    )
    study.add_argument(
        "--batch-size", type=_positive_int, default=64, help="(default: %(default)s)"
    )
    study.add_argument(
        "--learning-rate",
        type=float,
        default=1e-2,
        help="Adam, decayed to 0 along a cosine (default: %(default)s)",
    )
    study.add_argument(
        "--dekd-teacher-epochs",
        type=_positive_int,
        default=1,
        help="epochs of the De-KD teacher (default: %(default)s)",
    )
    study.add_argument(
        "--translation",
        choices=("auto", "none"),
        default="auto",
        help="carry the K=100 hyper-parameters to K classes (default: %(default)s)",
    )
    study.add_argument("--no-plot", action="store_true", help="skip results.png")
    study.add_argument("--quiet", action="store_true", help="print the table only")
    _add_backend(study)

    run = sub.add_parser(
        "run",
        help="run one reference experiment with its complete protocol",
        description="One registry experiment (`keras-tfkd list experiments`) "
        "with the reference protocol: reference optimiser and schedule, "
        "reference augmentation, 200 epochs (90 for ImageNet), seed 230. The "
        "teacher of kd/rekd/dekd/tfkd_self is trained first and cached in the "
        "output folder. Flags override the published values; on a data set "
        "with K != 100 the KL term keeps its K=100 meaning (see --translation).",
    )
    run.add_argument("--experiment", required=True, help="e.g. tfkd_reg/resnet18")
    run.add_argument(
        "--config",
        help="JSON file of experiment fields to override, e.g. "
        '{"alpha": 0.5, "epochs": 30}; flags given here win',
    )
    run.add_argument("--dataset", help="(default: the experiment's, cifar100)")
    run.add_argument("--data-dir", help="folder to search for the data set first")
    run.add_argument("--limit", type=_positive_int, help="first N examples per split")
    run.add_argument("--epochs", type=_positive_int)
    run.add_argument("--batch-size", type=_positive_int)
    run.add_argument("--alpha", type=float)
    run.add_argument("--temperature", type=float)
    run.add_argument("--multiplier", type=float)
    run.add_argument("--correct-prob", type=float, help="Tf-KD_reg's a")
    run.add_argument("--epsilon", type=float, help="LSR's epsilon")
    run.add_argument("--teacher-epochs", type=_positive_int)
    run.add_argument("--student", help="another student model")
    run.add_argument("--teacher", help="another teacher model")
    run.add_argument(
        "--teacher-checkpoint",
        help="a trained teacher (.keras) instead of training one",
    )
    run.add_argument("--seed", type=_seed, default=230, help="(default: %(default)s)")
    run.add_argument(
        "--optimizer",
        choices=("reference", "adam"),
        default="reference",
        help="(default: %(default)s)",
    )
    run.add_argument("--learning-rate", type=float, help="Adam's (default 1e-3)")
    run.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="Adam's schedule (default: %(default)s)",
    )
    run.add_argument(
        "--translation",
        choices=("auto", "none"),
        default="auto",
        help="(default: auto)",
    )
    run.add_argument(
        "--output-dir", default="runs/experiments", help="(default: %(default)s)"
    )
    run.add_argument(
        "--distribution",
        choices=("single", "auto", "data_parallel"),
        default="single",
        help="data_parallel: JAX DataParallel / TF MirroredStrategy over all "
        "devices, the batch size being the global batch (default: %(default)s)",
    )
    run.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    _add_backend(run)

    lister = sub.add_parser("list", help="list experiments, models or data sets")
    lister.add_argument("what", nargs="?", choices=(*LISTS, "all"), default="all")
    return parser


# ----------------------------------------------------------------- backend
def _select_backend(name, argv):
    """Set KERAS_BACKEND; re-run the command if Keras is already on another one.

    Called as the ``keras-tfkd`` program (``argv is None``), a Keras already
    imported on another backend (the package imports it) means a fresh
    process with ``KERAS_BACKEND`` set; called in-process (``main([...])``),
    it is an error.
    """
    if name is None:
        return
    keras = sys.modules.get("keras")
    current = None
    if keras is not None:
        try:
            current = keras.backend.backend()
        except AttributeError:  # a partially imported keras
            current = None
    if current is None or current == name:
        os.environ["KERAS_BACKEND"] = name
        return
    if argv is None and not os.environ.get(_REEXEC_FLAG):
        env = dict(os.environ, KERAS_BACKEND=name, **{_REEXEC_FLAG: "1"})
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(
            sys.executable, [sys.executable, "-m", "keras_tfkd", *sys.argv[1:]], env
        )
    raise _UsageError(
        f"--backend {name}: Keras is already imported with the {current!r} "
        f"backend in this process; start a new process with KERAS_BACKEND={name}."
    )


# ---------------------------------------------------------------- commands
def _check_dataset(name):
    from keras_tfkd import data

    key = str(name).lower().replace("-", "_")
    if key not in data.available():
        raise _UsageError(
            f"Unknown dataset {name!r}; valid datasets: {', '.join(data.available())}."
        )
    return key


def _load_dataset(name, data_dir, limit):
    from keras_tfkd import data

    kwargs = {} if limit is None else {"limit": limit}
    return data.load(name, data_dir, **kwargs)


def _study(args, log):
    from keras_tfkd import study

    methods = tuple(args.methods) if args.methods else METHODS
    for m in methods:
        if m not in METHODS:
            raise _UsageError(
                f"Unknown method {m!r}; valid methods: {', '.join(METHODS)}."
            )
    dataset = _check_dataset(args.dataset)
    _check_models(args.student, args.teacher)
    if not args.learning_rate > 0:
        raise _UsageError(f"--learning-rate must be > 0, got {args.learning_rate!r}.")
    try:
        config = study.StudyConfig(
            output_dir=args.output_dir,
            dataset=dataset,
            epochs=args.epochs,
            seeds=tuple(args.seeds),
            methods=methods,
            student=args.student,
            teacher=args.teacher,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            dekd_teacher_epochs=args.dekd_teacher_epochs,
            translation=args.translation,
            data_dir=args.data_dir,
            limit=args.limit,
            plot=not args.no_plot,
        )
    except ValueError as e:  # e.g. the same model as student and teacher
        raise _UsageError(str(e)) from None
    summary = study.run_study(config, log=(lambda _m: None) if args.quiet else log)
    if args.quiet:
        print(summary["table"])
    return 0


def _check_models(*names):
    from keras_tfkd import workflows

    for name in names:
        if name is not None:
            workflows.check_model_name(name)


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


def _run(args, log):
    from keras_tfkd import experiments, workflows

    experiment = experiments.get(args.experiment)
    overrides = _read_config(args.config) if args.config else {}
    dataset_name = _check_dataset(
        args.dataset or overrides.get("dataset") or experiment.dataset
    )
    overrides["dataset"] = dataset_name
    for field in (
        "epochs",
        "batch_size",
        "alpha",
        "temperature",
        "multiplier",
        "correct_prob",
        "epsilon",
        "teacher_epochs",
        "student",
        "teacher",
    ):
        value = getattr(args, field)
        if value is not None:
            overrides[field] = value
    try:
        experiment = experiment.replace(**overrides)
    except (TypeError, ValueError) as e:  # a published value overridden badly
        raise _UsageError(str(e)) from None
    _check_models(experiment.student, experiment.teacher)
    if args.teacher_checkpoint and experiment.teacher_source is None:
        raise _UsageError(
            f"--teacher-checkpoint: {experiment.id!r} takes no teacher model."
        )
    try:
        config = workflows.TrainConfig(
            optimizer=args.optimizer,
            learning_rate=args.learning_rate,
            lr_schedule=args.lr_schedule,
            translation=args.translation,
            progress_every=0 if args.quiet else 1,
        )
    except ValueError as e:
        raise _UsageError(str(e)) from None
    dataset = _load_dataset(dataset_name, args.data_dir, args.limit)
    store = workflows.ResultsStore(
        os.path.join(args.output_dir, workflows.RESULTS_FILE)
    )
    info = experiment.kl_translation(dataset.num_classes, args.translation)
    log(
        f"{experiment.id} on {dataset.name} (K={dataset.num_classes}), seed {args.seed}"
    )
    log(f"  {experiment.describe()}")
    log(f"  KL term: {info['note']}")
    from keras_tfkd.distribution import get_distribution

    try:
        distribution = get_distribution(args.distribution)
    except (NotImplementedError, ValueError) as e:
        raise _UsageError(f"--distribution {args.distribution}: {e}") from None
    if distribution.num_replicas > 1:
        log(f"  data parallel over {distribution.num_replicas} devices")
    with distribution.scope():
        record = workflows.train(
            experiment,
            dataset,
            seed=args.seed,
            output_dir=args.output_dir,
            config=config,
            store=store,
            teacher_checkpoint_path=args.teacher_checkpoint,
            log=log,
        )
    best, final = record["best_test_accuracy"], record["test_accuracy"]
    print(
        f"{experiment.id}: best test accuracy {100 * best:.2f}% (epoch "
        f"{record['best_epoch']}), final {100 * final:.2f}%, "
        f"{record['train_seconds']:.0f} s -> {store.path}"
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
        elif section == "models":
            from keras_tfkd import workflows

            for name in workflows.model_names():
                print(indent + name)
        else:
            for name in data.available():
                print(indent + name)
    return 0


def main(argv=None):
    """Entry point of ``keras-tfkd``; returns 0, exits 2 on a usage error.

    >>> main(["list", "datasets"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)

    def log(message):
        print(message, flush=True)

    from keras_tfkd.data import DatasetNotFoundError

    try:
        _select_backend(getattr(args, "backend", None), argv)
        try:
            if args.command == "study":
                return _study(args, log)
            if args.command == "run":
                return _run(args, log)
            return _list(args)
        except UnknownNameError as e:
            raise _UsageError(str(e)) from None
    except _UsageError as e:
        parser.exit(2, f"{PROG}: error: {e}\n")
    except DatasetNotFoundError as e:  # the message says where to put the data
        parser.exit(1, f"{PROG}: error: {e}\n")
