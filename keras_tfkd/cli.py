"""The ``keras-tfkd`` command (also ``python -m keras_tfkd``).

Subcommands:

* ``keras-tfkd study``: the paper's whole comparison (baseline, LSR, KD,
  Re-KD, De-KD, Tf-KD_self, Tf-KD_reg) on an offline data set over several
  seeds; prints the table and writes results.json, results.md and
  results.png (see `keras_tfkd.study`). ``--seeds 0,1,2`` (or ``--seeds 0 1
  2``) names the seeds, ``--num-seeds 3`` means seeds 0, 1 and 2;
  ``--seeds 1`` is the single seed 1.
* ``keras-tfkd run --experiment tfkd_reg/resnet18``: one reference
  experiment with its complete protocol (reference optimiser, schedule and
  augmentation, 200 epochs, seed 230), its teacher trained first and cached;
  flags override the published hyper-parameters.
* ``keras-tfkd list [experiments|models|datasets]``.

``--backend`` sets ``KERAS_BACKEND`` before Keras is imported; the backend
(from ``--backend``, ``$KERAS_BACKEND`` or ``~/.keras/keras.json``) is checked
with `importlib.util.find_spec` first, and a missing one is reported with the
``pip install "keras-tfkd[...]"`` that installs it.

Mistakes never end in a traceback: the command prints one or two lines
naming the problem and the fix, and exits with status 2 (a bad name or value
on the command line: unknown experiment, model, data-set or method names get
the closest valid names), 1 (this machine: a missing backend or data set, an
unusable output folder or checkpoint) or 130 (Ctrl-C: the line says from
which epoch the same command resumes; every run keeps per-epoch backups and
a study skips its finished runs).

Example::

    keras-tfkd study --backend jax --output-dir runs/study
    keras-tfkd study --num-seeds 5 --methods baseline tfkd_reg
    keras-tfkd run --experiment kd/mobilenet_v2_from_resnet18 --dataset cifar100
    keras-tfkd list experiments
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import difflib
import importlib.util
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

# Keras-free imports only: the backend is chosen after the arguments are parsed.
from keras_tfkd import experiments as _experiments
from keras_tfkd.experiments import METHODS, UnknownNameError

__all__ = ["build_parser", "check_backend", "main"]

PROG = "keras-tfkd"
BACKENDS = ("tensorflow", "jax", "torch")
LISTS = ("experiments", "models", "datasets")
#: The modules each backend needs (checked before Keras is imported) and the
#: name of the framework in messages; the pip extra is the backend's name.
BACKEND_MODULES = {
    "tensorflow": ("tensorflow",),
    "jax": ("jax", "jaxlib"),
    "torch": ("torch",),
}
_FRAMEWORKS = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
#: Seeds go to NumPy's legacy seeding (``keras.utils.set_random_seed``).
MAX_SEED = 2**32 - 1
DEFAULT_SEEDS = (0, 1, 2)
# TensorFlow's C++ start-up chatter (oneDNN, CPU features, and the "failed
# call to cuInit" ERROR line of a CUDA build on a machine without a GPU)
# drowns the progress lines: 3 hides ERROR too. Users can still set their own.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Above this many valid names, an unknown name gets the closest ones and the
# `keras-tfkd list` command that prints them all.
_LIST_ALL_UP_TO = 8
# Where `keras_tfkd.data` looks for each data set under --data-dir or
# $KERAS_TFKD_DATA, and what goes there (for the CLI-worded fix).
_DATA_FOLDERS = {
    "fashion_mnist": (
        "fashion-mnist",
        "the four *-ubyte.gz files; on Debian/Ubuntu: apt-get install "
        "dataset-fashion-mnist",
    ),
    "cifar10": ("cifar-10-batches-bin", "cifar-10-binary.tar.gz extracted"),
    "cifar100": ("cifar-100-binary", "cifar-100-binary.tar.gz extracted"),
    "tiny_imagenet": ("tiny-imagenet-200", "tiny-imagenet-200.zip unzipped"),
    "imagenet": ("imagenet", "train/<class>/* and val/<class>/*"),
}
# Data sets that Keras downloads when downloads are allowed.
_KERAS_DOWNLOADS = ("fashion_mnist", "cifar10", "cifar100")


class _UsageError(Exception):
    """A mistake the command reports in one or two lines, without a traceback.

    ``status`` is 2 for a bad name or value on the command line, 1 for a
    problem of this machine (a missing backend or data set, an unusable
    output folder).
    """

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


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
        "or ~/.keras/keras.json); it must be installed: pip install "
        '"keras-tfkd[jax]" (or [tensorflow], [torch])',
    )


#: The `run` flags that override an `Experiment` field: field -> (argparse type,
#: help). The flag is the field with dashes (``batch_size``: ``--batch-size``);
#: `build_parser` adds them and `_run` collects them over ``--config``'s fields.
_FIELD_TYPES = {"number": float, "integer": _positive_int, "string": None}
#: ``keras-tfkd run``'s experiment flags, one per overridable field of
#: `Experiment` (`experiments.RUN_FIELDS`): field -> (type, choices, help).
_RUN_FIELD_FLAGS = {
    field: (
        _FIELD_TYPES[_experiments.field_kind(field)],
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

    study = sub.add_parser(
        "study",
        help="run the paper's whole comparison on an offline data set",
        description="Baseline, LSR, KD, Re-KD, De-KD, Tf-KD_self and Tf-KD_reg "
        "over several seeds (defaults: digits, cnn_tiny <- cnn_small, seeds "
        "0,1,2, a few minutes on 2 CPU cores). Prints the paper-style table and "
        "writes results.json, results.md and results.png; finished runs are "
        "skipped when rerun into the same folder, and an interrupted run "
        "resumes from its last finished epoch.",
    )
    study.add_argument(
        "--output-dir",
        default="runs/study",
        help="a folder, created if missing (default: %(default)s)",
    )
    study.add_argument("--dataset", default="digits", help="(default: %(default)s)")
    study.add_argument("--data-dir", help="folder to search for the data set first")
    study.add_argument(
        "--limit", type=_positive_int, help="use the first N examples of each split"
    )
    study.add_argument(
        "--epochs", type=_positive_int, default=12, help="(default: %(default)s)"
    )
    seeds = study.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        nargs="+",
        action=_SeedsAction,
        default=list(DEFAULT_SEEDS),
        metavar="SEED",
        help="the seeds to run, one run of every method per seed: a list such as "
        "0,1,2 (or 0 1 2); whole numbers >= 0, each given once. --seeds 1 is the "
        "single seed 1; for N seeds use --num-seeds N (default: 0,1,2)",
    )
    seeds.add_argument(
        "--num-seeds",
        type=_positive_int,
        action=_NumSeedsAction,
        metavar="N",
        help="run N seeds, 0 to N-1 (--num-seeds 3 is --seeds 0,1,2); not "
        "together with --seeds",
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
        "--kl",
        choices=_experiments.KL_FORMS,
        default="batchmean",
        help="the KL form of every method: batchmean (the registry's, the "
        "published meaning at any K) or reference (the authors' KL / K with the "
        "published multipliers) (default: %(default)s)",
    )
    study.add_argument("--translation", help=argparse.SUPPRESS)  # removed in 0.2
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
    run.add_argument("--translation", help=argparse.SUPPRESS)  # removed in 0.2
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

    lister = sub.add_parser("list", help="list experiments, models or data sets")
    lister.add_argument("what", nargs="?", choices=(*LISTS, "all"), default="all")
    return parser


# ----------------------------------------------------------------- backend
def _installed(module):
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent is missing, or a hiding finder
        return False


def _keras_config_backend():
    """``(backend, path)`` of the keras.json Keras will read (backend may be None).

    The same place Keras looks: ``$KERAS_HOME/keras.json``, else
    ``~/.keras/keras.json`` (``/tmp/.keras`` when the home is read-only).
    """
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        if not os.access(base, os.W_OK):
            base = "/tmp"
        home = os.path.join(base, ".keras")
    path = os.path.expanduser(os.path.join(home, "keras.json"))
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None, path
    backend = config.get("backend") if isinstance(config, dict) else None
    return (backend if isinstance(backend, str) and backend else None), path


def _requested_backend(flag):
    """``(name, where it was chosen)`` of the backend Keras will load."""
    if flag:
        return flag, f"--backend {flag}"
    env = os.environ.get("KERAS_BACKEND")
    if env:
        return env, f"KERAS_BACKEND={env}"
    name, path = _keras_config_backend()
    if name:
        return name, f'{path} ("backend": "{name}")'
    return "tensorflow", "Keras's default backend (KERAS_BACKEND is not set)"


def check_backend(flag=None, *, has_flag=True):
    """Raise a one- or two-line error unless the chosen backend is installed.

    The backend is the one Keras will load: `flag` (``--backend``), else
    ``$KERAS_BACKEND``, else keras.json, else TensorFlow. Checked with
    `importlib.util.find_spec` before Keras is imported (Keras itself raises
    at import time on an unknown backend); nothing is imported. Does nothing
    once Keras is imported (`_select_backend` handles that case). With
    ``has_flag=False`` (``keras-tfkd list``) the fix names only
    ``KERAS_BACKEND``.
    """
    if "keras" in sys.modules:
        return
    name, where = _requested_backend(flag)
    usable = [b for b in BACKENDS if all(map(_installed, BACKEND_MODULES[b]))]
    others = [b for b in usable if b != name]
    option = "--backend " if has_flag else "KERAS_BACKEND="
    alternative = f" (or use {option}{others[0]})" if others else ""
    if name not in BACKENDS:
        installed = f" (installed here: {', '.join(usable)})" if usable else ""
        flag_too = ", or pass --backend" if has_flag else ""
        raise _UsageError(
            f"{where}: {name!r} is not a backend keras-tfkd runs on.\n"
            f"Set KERAS_BACKEND to tensorflow, jax or torch{installed}{flag_too}.",
            status=1,
        )
    if not _installed("keras"):
        raise _UsageError(
            "Keras is not installed.\nInstall it with: pip install "
            f'"keras-tfkd[{name}]"',
            status=1,
        )
    missing = [m for m in BACKEND_MODULES[name] if not _installed(m)]
    if missing:
        raise _UsageError(
            f"{where}: {_FRAMEWORKS[name]} is not installed (no module "
            f"{missing[0]!r}).\nInstall it with: pip install "
            f'"keras-tfkd[{name}]"{alternative}',
            status=1,
        )


def _import_keras(flag):
    """Import Keras on the chosen backend; a failure is one line, no traceback."""
    if "keras" in sys.modules:
        return
    name, where = _requested_backend(flag)
    try:
        import keras  # noqa: F401
    except (ImportError, ValueError) as e:  # a broken install, a bad keras.json
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        if isinstance(e, ImportError):
            fix = (
                f'Reinstall it with: pip install --force-reinstall "keras-tfkd[{name}]"'
            )
        else:
            fix = f"Check the Keras settings in {_keras_config_backend()[1]}."
        raise _UsageError(
            f"{where}: importing Keras on the {name} backend failed "
            f"({type(e).__name__}: {reason}).\n{fix}",
            status=1,
        ) from None


@contextlib.contextmanager
def _quiet_tensorflow():
    """Hide TensorFlow's Python warnings (tf.function retracing) below ERROR.

    TensorFlow logs them to the ``tensorflow`` logger (``tf.get_logger()``),
    which it never sets a level on outside interactive shells: setting it by
    name works before TensorFlow is imported, and imports nothing (TF is also
    imported on the other backends, for tf.data). A level set by the user is
    kept, and the previous level comes back on exit (``main([...])`` called
    in-process leaves the caller's logging as it was).
    """
    logger = logging.getLogger("tensorflow")
    before = logger.level
    if before == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        if logger.level == logging.ERROR and before == logging.NOTSET:
            logger.setLevel(before)


def _select_backend(name):
    """Set KERAS_BACKEND before Keras is imported; refuse a Keras already on another.

    The command imports Keras only after its arguments are parsed (the
    package itself imports nothing heavy), so this always runs first when
    ``keras-tfkd`` is the program; called in-process (``main([...])``) after
    Keras was imported on another backend, it is an error.
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
    raise _UsageError(
        f"--backend {name}: Keras is already imported with the {current!r} "
        f"backend in this process; start a new process with KERAS_BACKEND={name}."
    )


def _translation_removed(value):
    """--translation (0.1.0): 'auto' is what always happens now; 'none' is --kl."""
    if value is None:
        return
    if value == "auto":
        print(
            f"{PROG}: note: --translation is deprecated (the registry's "
            "multipliers now mean the same at any K); drop it.",
            file=sys.stderr,
        )
        return
    raise _UsageError(
        f"--translation {value} was removed in 0.2: for the authors' KL at any K "
        "use --kl reference (with the published --multiplier for `run`)."
    )


# ------------------------------------------------------------------ checks
def _unknown(kind, name, valid, flag=None, listing=None):
    """The message for an unknown name: all valid names, or the 5 closest.

    Short lists are given whole; a long one (`listing` names the
    ``keras-tfkd list`` section that prints it) gives the closest names
    (`difflib`) and the command that lists them all, on a second line.
    """
    valid = [str(v) for v in valid]
    head = f"{flag}: " if flag else ""
    if listing is None or len(valid) <= _LIST_ALL_UP_TO:
        return f"{head}unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}."
    close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.4)
    hint = f" Closest: {', '.join(close)}." if close else " No close match."
    return (
        f"{head}unknown {kind} {name!r}.{hint}\n"
        f"`{PROG} list {listing}` prints the {len(valid)} valid {kind}s."
    )


def _from_unknown_name_error(e):
    """An `UnknownNameError` raised below the CLI, in the CLI's wording."""
    text = str(e)
    words = text.split()
    if e.name is None or not e.valid or len(words) < 2 or words[0] != "Unknown":
        return text
    kind = words[1]
    listing = {
        "experiment": "experiments",
        "model": "models",
        "student": "models",
        "teacher": "models",
        "dataset": "datasets",
    }.get(kind)
    flag = None
    if kind in ("student", "teacher"):
        kind, flag = "model", kind
    return _unknown(kind, e.name, e.valid, flag, listing)


def _check_experiment(experiment_id):
    from keras_tfkd import experiments

    try:
        return experiments.get(experiment_id)
    except UnknownNameError as e:
        raise _UsageError(
            _unknown("experiment", e.name, e.valid, "--experiment", "experiments")
        ) from None


def _check_dataset(name, flag="--dataset"):
    from keras_tfkd import data

    key = str(name).lower().replace("-", "_")
    if key not in data.available():
        raise _UsageError(_unknown("dataset", name, data.available(), flag, "datasets"))
    return key


def _check_models(*pairs):
    """Each ``(flag, name)``: an unknown model name is a usage error."""
    from keras_tfkd import runs

    names = runs.model_names()
    for flag, name in pairs:
        if name is not None and name not in names:
            raise _UsageError(_unknown("model", name, names, flag, "models"))


def _check_output_dir(path, default):
    """The output folder must be (or be creatable as) a writable folder."""
    p = Path(path)
    fix = f"Pass a folder (it is created if missing), e.g. --output-dir {default}."
    if p.exists() and not p.is_dir():
        raise _UsageError(
            f"--output-dir {str(path)!r} is a file, not a folder.\n{fix}", status=1
        )
    if p.is_symlink() and not p.exists():
        raise _UsageError(
            f"--output-dir {str(path)!r} is a broken symbolic link.\n{fix}", status=1
        )
    parent = p.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise _UsageError(
            f"--output-dir {str(path)!r}: {str(parent)!r} is a file, so the folder "
            f"cannot be created.\n{fix}",
            status=1,
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _UsageError(
            f"--output-dir {str(path)!r}: no permission to write in "
            f"{str(parent)!r}.\nPass a folder you can write to.",
            status=1,
        )


def _missing_dirs(path):
    """The folders of `path` that do not exist yet, deepest first."""
    missing = []
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _remove_empty(folders):
    """Remove the folders this command created if they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (something was saved), or already gone
            return


def _data_error(e, name):
    """A `DatasetNotFoundError` with the fix in command-line words.

    Keeps the message's first part (the places searched) and replaces its
    Python-API advice (``data_dir=...``, ``download=True``) with
    ``--data-dir`` / ``$KERAS_TFKD_DATA``.
    """
    from keras_tfkd import data

    text = str(e).split("\nTo provide it:", 1)[0]
    folder, what = _DATA_FOLDERS.get(name, (name, ""))
    what = f" ({what})" if what else ""
    fix = (
        f"To fix: pass --data-dir DIR, with DIR/{folder}/{what} or its files in "
        f"DIR, or set {data.ENV_DATA}=ROOT with ROOT/{folder}/"
    )
    if name in _KERAS_DOWNLOADS:
        if not data.sources._download_allowed(None):  # $KERAS_TFKD_OFFLINE set
            fix += f"; or unset {data.ENV_OFFLINE} to let Keras download it"
        else:
            fix += "; or let Keras download it (needs network access)"
    return f"{text}\n{fix}."


# ---------------------------------------------------------------- progress
class _Interrupts:
    """Ctrl-C that training cannot swallow, for the duration of a command.

    Keras converts the logs of every batch and epoch under a bare
    ``except:`` (``keras.src.utils.python_utils.pythonify_logs``), and on JAX
    that is where the main thread waits for the device: a KeyboardInterrupt
    raised there is lost and training goes on. So after the first Ctrl-C
    this raises KeyboardInterrupt again every `every` seconds until the
    command has stopped. Installed only over Python's default handler, in
    the main thread (an ignored SIGINT stays ignored); restored on exit.
    """

    def __init__(self, every=0.5):
        self.every = every
        self.previous = None
        self.stopped = threading.Event()
        self.thread = None

    def __enter__(self):
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.stopped.is_set():  # a repeat that came after the command stopped
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._repeat, daemon=True)
            self.thread.start()
        raise KeyboardInterrupt

    def _repeat(self):
        while not self.stopped.wait(self.every):
            _thread.interrupt_main(signal.SIGINT)

    def __exit__(self, *exc):
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        _pending_signals_run_here()
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _pending_signals_run_here():
    """A Python call: CPython runs the pending signal handlers on entry."""


class _Progress:
    """The command's log, remembering what it trains (for the Ctrl-C message).

    It reads the lines the study and the runs print (``[i/n] <run>
    ...``, ``<label>: resuming after epoch N from <backup>``) and, on
    interruption, the ``backup.json`` files the runs wrote (`RunBackup`):
    the newest one written by this command, or the one it resumed from,
    holds the last finished epoch.
    """

    _RUN = re.compile(r"^\[\d+/\d+\] (.+) \.\.\.$")
    _RESUMED = re.compile(r": resuming after epoch \d+ from (.+)$")

    def __init__(self, output_dir, label=None, echo=True):
        self.output_dir = Path(output_dir)
        self.label = label
        self.echo = echo
        self.started = time.time()
        self.resumed = set()

    def __call__(self, message):
        message = str(message)
        match = self._RUN.match(message)
        if match:
            self.label = match.group(1)
        match = self._RESUMED.search(message)
        if match:
            self.resumed.add(Path(match.group(1)).absolute())
        if self.echo:
            print(message, flush=True)

    def saved_epoch(self):
        """The last epoch saved by the run that was interrupted (0: none)."""
        from keras_tfkd.callbacks import RunBackup
        from keras_tfkd.runs import BACKUPS_DIR, CHECKPOINTS_DIR

        out = self.output_dir
        found = []
        for folder in [
            *out.glob(f"{CHECKPOINTS_DIR}/*/backup"),  # normal runs
            *out.glob(f"{BACKUPS_DIR}/*"),  # the other runs
        ]:
            try:
                meta = RunBackup.read_state(folder)
                mtime = (folder / RunBackup.METADATA).stat().st_mtime
            except (OSError, ValueError):
                continue
            if meta is None:
                continue
            ours = mtime >= self.started - 1 or folder.absolute() in self.resumed
            if ours:
                found.append((mtime, int(meta["epoch"])))
        return max(found)[1] if found else 0

    def interrupted(self, study):
        skipped = "; finished runs are skipped" if study else ""
        if self.label is None:
            return (
                f"{PROG}: interrupted before training started; run the same "
                f"command again to start{skipped}."
            )
        return (
            f"{PROG}: interrupted; run the same command again to resume from "
            f"epoch {self.saved_epoch() + 1} ({self.label}{skipped})."
        )


# ---------------------------------------------------------------- commands
def _study(args, log):
    from keras_tfkd import data, runs, study

    _translation_removed(args.translation)
    methods = tuple(args.methods) if args.methods else METHODS
    for m in methods:
        if m not in METHODS:
            raise _UsageError(_unknown("method", m, METHODS, "--methods"))
    dataset = _check_dataset(args.dataset)
    _check_models(("--student", args.student), ("--teacher", args.teacher))
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise _UsageError(
            f"--learning-rate must be a number > 0, got {args.learning_rate!r}."
        )
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
            kl=args.kl,
            data_dir=args.data_dir,
            limit=args.limit,
            plot=not args.no_plot,
        )
    except ValueError as e:  # e.g. the same model as student and teacher
        raise _UsageError(str(e)) from None
    try:
        summary = study.run_study(config, log=log)
    except data.DatasetNotFoundError as e:
        raise _UsageError(_data_error(e, dataset), status=1) from None
    except runs.CorruptCheckpointError as e:  # the message says what to do
        raise _UsageError(str(e), status=1) from None
    if args.quiet:
        print(summary["table"])
    return 0


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

    _translation_removed(args.translation)
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
    try:
        distribution = get_distribution(args.distribution)
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


def _execute(args, argv, log):
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


def main(argv=None):
    """Entry point of ``keras-tfkd``; returns 0, or exits with 1, 2 or 130.

    Status 2: a bad name or value on the command line; 1: a problem of this
    machine (missing backend or data, unusable output folder); 130:
    interrupted (Ctrl-C). Each prints one or two lines (a missing data set
    also lists the places searched), never a traceback; a failed command
    leaves no empty output folder behind.

    >>> main(["list", "datasets"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    output_dir = getattr(args, "output_dir", None)
    log = _Progress(
        output_dir or ".", echo=not (args.command == "study" and args.quiet)
    )

    from keras_tfkd.data import DatasetNotFoundError

    try:
        created = []
        if output_dir is not None:
            default = "runs/study" if args.command == "study" else "runs/experiments"
            _check_output_dir(output_dir, default)
            created = _missing_dirs(output_dir)
        try:
            with _Interrupts():
                return _execute(args, argv, log)
        except BaseException:
            _remove_empty(created)
            raise
    except _UsageError as e:
        parser.exit(e.status, f"{PROG}: error: {e}\n")
    except DatasetNotFoundError as e:  # the message says where to put the data
        parser.exit(1, f"{PROG}: error: {e}\n")
    except KeyboardInterrupt:
        sys.stdout.flush()
        parser.exit(130, log.interrupted(args.command == "study") + "\n")
