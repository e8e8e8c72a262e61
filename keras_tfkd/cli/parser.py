"""The argparse parser of ``keras-tfkd``: one function per sub-command.

Imports nothing heavy (Keras is imported after the arguments are parsed).
"""

from __future__ import annotations

import argparse

from keras_tfkd import experiments as _experiments
from keras_tfkd.cli.backend import BACKENDS
from keras_tfkd.cli.errors import PROG
from keras_tfkd.data.batching import AUGMENTATIONS
from keras_tfkd.experiments import METHODS
from keras_tfkd.presets import DEFAULT_PRESET, PRESETS

LISTS = ("experiments", "models", "datasets", "presets")
#: Seeds go to NumPy's legacy seeding (``keras.utils.set_random_seed``).
MAX_SEED = 2**32 - 1


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a parse error is two lines, not the whole usage."""

    def error(self, message):
        self.exit(
            2,
            f"{self.prog}: error: {message}\n"
            f"Run `{self.prog} --help` for the options.\n",
        )


# ------------------------------------------------------------------ values
def _seed(text):
    text = str(text).strip()
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text!r}: a seed is a whole number from 0 to {MAX_SEED}"
        )
    return value


class _SeedsAction(argparse.Action):
    """``--seeds 0,1,2`` or ``--seeds 0 1 2``: a list of distinct seeds >= 0."""

    def __call__(self, parser, namespace, values, option_string=None):
        texts = [t for value in values for t in str(value).split(",")]
        seeds = []
        for text in texts:
            if not text.strip():
                continue  # "0, 1" or a trailing comma
            try:
                seed = _seed(text)
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentError(self, str(e)) from None
            if seed in seeds:
                raise argparse.ArgumentError(
                    self,
                    f"seed {seed} is given twice: each seed runs once (for N "
                    "seeds, use --num-seeds N)",
                )
            seeds.append(seed)
        if not seeds:
            raise argparse.ArgumentError(self, "no seed given, e.g. --seeds 0,1,2")
        setattr(namespace, self.dest, seeds)


class _NumSeedsAction(argparse.Action):
    """``--num-seeds N``: the seeds 0, 1, ..., N - 1."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.seeds = list(range(values))


def _int_at_least(minimum):
    """An argparse type: an integer >= `minimum`, else the one-line error."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {minimum}, got {text!r}"
            )
        return value

    return parse


_positive_int = _int_at_least(1)


def _limit(text):
    """An argparse type: ``N`` or ``TRAIN,TEST`` (0: the whole split)."""
    parts = str(text).split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v < 0 for v in values) or values == [0]:
        raise argparse.ArgumentTypeError(
            f"must be N or TRAIN,TEST (whole numbers, 0: all of that split), "
            f"got {text!r}"
        )
    if len(values) == 1:
        return values[0]
    return tuple(v or None for v in values)


def _validation_fraction(text):
    """An argparse type: a number in [0, 1) (0: no validation split)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"must be a number in [0, 1) (0: no validation split), got {text!r}"
        )
    return value


def _add_backend(parser):
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend, set before Keras is imported (default: $KERAS_BACKEND "
        "or ~/.keras/keras.json); it must be installed: pip install "
        '"keras-tfkd[jax]" (or [tensorflow], [torch])',
    )


def _add_processes(parser):
    """One job on several hosts (JAX): the same command on every host."""
    group = parser.add_argument_group(
        "several processes (jax backend; docs/several-machines.md)",
        "the same command on every host, each with its --process-id; "
        "--batch-size stays the global batch",
    )
    group.add_argument(
        "--coordinator-address",
        metavar="HOST:PORT",
        help="process 0's address (default: $KERAS_DISTRIBUTION_JOB_ADDRESSES)",
    )
    group.add_argument(
        "--num-processes",
        type=_positive_int,
        metavar="N",
        help="processes in the job (default: $KERAS_DISTRIBUTION_NUM_PROCESSES)",
    )
    group.add_argument(
        "--process-id",
        type=_int_at_least(0),
        metavar="I",
        help="this process, 0 to N-1 (default: $KERAS_DISTRIBUTION_PROCESS_ID)",
    )


#: The `run` flags that override an `Experiment` field: field -> (argparse type,
#: help). The flag is the field with dashes (``batch_size``: ``--batch-size``);
#: `_add_field_flags` adds them and `_run_experiment` collects them over
#: ``--config``'s fields.
_FIELD_TYPES = {"number": float, "integer": _positive_int, "string": None}


#: ``keras-tfkd run``'s experiment flags, one per overridable field of
#: `Experiment` (`experiments.RUN_FIELDS`): field -> (type, choices, help).
def _field_type(field):
    kind = _experiments.field_kind(field)
    if kind == "integer":
        return _int_at_least(_experiments.FIELD_MINIMUMS.get(field, 1))
    return _FIELD_TYPES[kind]


_RUN_FIELD_FLAGS = {
    field: (
        _field_type(field),
        _experiments.FIELD_CHOICES.get(field),
        _experiments.FIELD_HELP[field],
    )
    for field in _experiments.RUN_FIELDS
}


def build_parser():
    """The argparse parser of ``keras-tfkd`` (imports nothing heavy)."""
    parser = _ArgumentParser(
        prog=PROG,
        description="Knowledge distillation via label smoothing regularization "
        "(Yuan et al., CVPR 2020) on Keras 3.",
        epilog="Errors print one or two lines and exit with status 2 (a bad "
        "argument), 1 (a missing backend, data set or unusable output folder) "
        "or 130 (interrupted: run the same command again to resume).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{study,run,list}")
    sub.required = True
    _add_study(sub)
    _add_run(sub)
    _add_list(sub)
    return parser


# ------------------------------------------------------------------- study
def _add_study(sub):
    study = sub.add_parser(
        "study",
        help="run the paper's whole comparison on an offline data set",
        description="Every method over several seeds, paired on the same seeds "
        "and batches: by default the digits preset (cnn_tiny <- cnn_small, 5 "
        "seeds, a few minutes on 2 CPU cores); --preset names another study "
        "(`keras-tfkd list presets`), and any flag given wins over the "
        "preset's value. Prints the table and writes results.json, results.md "
        "(with the claims: does each method help, by how much, how sure) and "
        "results.png; finished runs are skipped when rerun into the same "
        "folder, and an interrupted run resumes from its last finished epoch.",
    )
    study.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        metavar="NAME",
        help=f"a named study: {', '.join(PRESETS)} (default: %(default)s)",
    )
    study.add_argument(
        "--output-dir",
        default="runs/study",
        help="a folder, created if missing (default: %(default)s)",
    )
    study.add_argument(
        "--dataset",
        help="a data set name (`keras-tfkd list datasets`) or a .npz file with "
        "x_train, y_train, x_test, y_test (and x_val, y_val to select epochs on)",
    )
    study.add_argument("--data-dir", help="folder to search for the data set first")
    study.add_argument(
        "--limit",
        type=_limit,
        help="use the first N examples of each split, or TRAIN,TEST (e.g. 2000,0: "
        "the first 2000 training and all test examples; 0 is all)",
    )
    study.add_argument(
        "--epochs", type=_positive_int, help="(default: the preset's; digits: 12)"
    )
    _add_seeds(study)
    study.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help=f"subset of: {' '.join(METHODS)}, by spaces or commas (default: all)",
    )
    study.add_argument(
        "--student",
        help="the weak model: a model name (`keras-tfkd list models`) or "
        "package.module:function building a logits model (digits: cnn_tiny)",
    )
    study.add_argument(
        "--teacher",
        help="the strong model, named like --student (digits: cnn_small)",
    )
    study.add_argument(
        "--batch-size", type=_positive_int, help="(default: the preset's; digits: 64)"
    )
    study.add_argument(
        "--learning-rate",
        type=float,
        help="Adam, decayed to 0 along a cosine (default: the preset's; digits: 0.01)",
    )
    study.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        help="the training augmentation (default: the data set's own; "
        "fashion_mnist_regime: cifar, the paper's crop, flip and rotation)",
    )
    study.add_argument(
        "--validation-fraction",
        type=_validation_fraction,
        help="share of the training split held out (stratified, seeded) to "
        "select each run's epoch; its test accuracy there is the headline. 0: "
        "none (default: 0.1)",
    )
    study.add_argument(
        "--dekd-teacher-epochs",
        type=_positive_int,
        help="epochs of the De-KD teacher (digits: 1)",
    )
    study.add_argument(
        "--kl",
        choices=_experiments.KL_FORMS,
        help="the KL form of every method: batchmean (the registry's, the "
        "published meaning at any K) or reference (the authors' KL / K with the "
        "published multipliers) (default: batchmean)",
    )
    study.add_argument(
        "--tune",
        type=_int_at_least(0),
        metavar="N",
        help="first choose each method's setting among N trials of its search "
        "space on the validation split (one run each, on --tune-seed), then run "
        "the chosen setting on every seed; the baseline is tuned over its "
        "learning rate with the same budget (default: 0, no tuning; "
        "docs/tuning.md)",
    )
    study.add_argument(
        "--tune-seed",
        type=_int_at_least(0),
        metavar="SEED",
        help="the seed of the tuning runs (default: 100)",
    )
    study.add_argument("--no-plot", action="store_true", help="skip results.png")
    study.add_argument("--quiet", action="store_true", help="print the table only")
    _add_backend(study)
    _add_processes(study)


def _add_seeds(study):
    """``--seeds`` or ``--num-seeds``, not both."""
    seeds = study.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        nargs="+",
        action=_SeedsAction,
        metavar="SEED",
        help="the seeds to run, one run of every method per seed: a list such as "
        "0,1,2 (or 0 1 2); whole numbers >= 0, each given once. --seeds 1 is the "
        "single seed 1; for N seeds use --num-seeds N (digits: 0,1,2,3,4)",
    )
    seeds.add_argument(
        "--num-seeds",
        type=_positive_int,
        action=_NumSeedsAction,
        metavar="N",
        help="run N seeds, 0 to N-1 (--num-seeds 3 is --seeds 0,1,2); not "
        "together with --seeds",
    )


# --------------------------------------------------------------------- run
def _add_run(sub):
    run = sub.add_parser(
        "run",
        help="run one reference experiment with its complete protocol",
        description="One registry experiment (`keras-tfkd list experiments`) "
        "with the reference protocol: reference optimiser and schedule, "
        "reference augmentation, 200 epochs (90 for ImageNet), seed 230. The "
        "teacher of kd/rekd/dekd/tfkd_self is trained first and cached in the "
        "output folder. Flags override the published values (the registry "
        "stores the multipliers for the batch-mean KL, --kl batchmean, so a "
        "setting means the same at any number of classes). "
        "An interrupted run resumes from its last finished epoch.",
    )
    run.add_argument("--experiment", required=True, help="e.g. tfkd_reg/resnet18")
    run.add_argument(
        "--config",
        help="JSON file of experiment fields to override, e.g. "
        '{"alpha": 0.5, "epochs": 30}; flags given here win',
    )
    _add_field_flags(run)
    run.add_argument(
        "--teacher-checkpoint",
        help="a trained teacher (.keras) instead of training one",
    )
    run.add_argument(
        "--seed",
        type=_seed,
        default=230,
        help="one seed, a whole number >= 0 (default: %(default)s)",
    )
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
        "--output-dir",
        default="runs/experiments",
        help="a folder, created if missing (default: %(default)s)",
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
    _add_processes(run)


def _add_field_flags(run):
    """One flag per `_RUN_FIELD_FLAGS` field; --data-dir and --limit by --dataset."""
    for field, (kind, choices, text) in _RUN_FIELD_FLAGS.items():
        run.add_argument(
            "--" + field.replace("_", "-"), type=kind, choices=choices, help=text
        )
        if field == "dataset":  # where to find the data set, next to its name
            run.add_argument(
                "--data-dir", help="folder to search for the data set first"
            )
            run.add_argument(
                "--limit", type=_positive_int, help="first N examples per split"
            )


# -------------------------------------------------------------------- list
def _add_list(sub):
    lister = sub.add_parser("list", help="list experiments, models or data sets")
    lister.add_argument("what", nargs="?", choices=(*LISTS, "all"), default="all")
