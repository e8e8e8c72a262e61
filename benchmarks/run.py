#!/usr/bin/env python
"""keras-tfkd benchmarks: what each distillation method costs, as ratios.

One command, one table::

    python benchmarks/run.py                      # the current Keras backend
    python benchmarks/run.py --backend all        # TensorFlow, JAX, PyTorch
    python benchmarks/run.py --quick              # a smoke run
    python benchmarks/run.py --backend all --threads 1 --clock cpu \\
        --output benchmarks/results.md            # as in benchmarks/README.md

Every figure is a ratio of two times measured in the same process. Each
training set-up runs one warm-up epoch (it compiles the step), then
``repeats`` timed epochs; the minimum time per step is kept. The set-ups take
turns epoch by epoch (round robin, the order reversed every other round), so
a burst of load from elsewhere hits them alike. An epoch's time stops only
once its logs and weights are on the host (asynchronous backends included).
On a shared machine ``--clock cpu`` measures the CPU time of this process
(all its threads) instead of the wall clock, and ``--threads 1`` avoids
thread oversubscription: see benchmarks/README.md for why and how much.

Rows, for each model (a small CIFAR-shaped CNN, and ResNet18 at batch 128):

* ``tfkd_reg / plain fit``: a `recipes.tfkd_reg` Distiller over a plain
  ``student.fit`` (same architecture, initial weights, data, batch).
* ``label_smoothing / plain fit``: the same for `recipes.label_smoothing`.
* ``kd (live 2x-wide teacher) / keras.distillation``: `recipes.kd` with a
  model teacher of twice the student's width, over Keras's built-in
  ``keras.distillation.Distiller`` with the same teacher and student and the
  *correct* ``KLDivergence()`` loss object.
* ``tfkd_self / kd (cached logits) / plain fit``: teacher logits computed once
  by `teachers.CachedTeacher` (no augmentation) and fed with the batches.
* reported only: the live teachers over plain fit (what a user pays), and the
  noise floor: a second, identical plain model over the first.
* the teacher-free family: ``ps_kd``, ``online_label_smoothing`` and
  ``dkd`` (cached teacher logits) over plain fit; ``cs_kd`` over
  ``tfkd_self`` with a live copy of the student (both run one more forward
  pass of the student's size per example); and PS-KD's compact stores: their
  time over the float32 store's, and how far the last epoch's loss moves.
* PyTorch only: ``kd`` with the teacher run through
  `keras_tfkd._backend.frozen_forward` (the backend fast path).

Then the cost of the Tf-KD_reg soft term at K = 10 ... 10000 classes, isolated
on a student that is a single ``Dense(K)`` on a scalar input, divided by the
CNN's plain step, with a linear fit; and the images/s of the reference CIFAR
augmentation pipeline alone over the images/s of a plain train step.
``--backend all`` runs one subprocess per backend (the backend is fixed when
Keras is imported), one after the other, and prints their rows as one table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

BACKENDS = ("tensorflow", "jax", "torch")
SOFT_TERM_CLASSES = (10, 100, 1000, 10000)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

# Loss hyper-parameters do not change the cost; these are the paper's.
KD_ALPHA, KD_T = 0.9, 20.0  # 5-layer CNN <- ResNet18
SELF_ALPHA, SELF_T, SELF_M = 0.95, 6.0, 50.0  # ResNet18 <- itself
REG_ALPHA, REG_T, REG_M = 0.1, 20.0, 100.0  # Tf-KD_reg, ResNet18

FULL = {
    "models": ("cnn", "resnet18"),
    "cnn": {
        "name": "cnn_small",
        "width": 16,
        "input": (32, 32, 3),
        "batch": 128,
        "steps": 4,
        "repeats": 7,
    },
    "resnet18": {"input": (32, 32, 3), "batch": 128, "steps": 1, "repeats": 2},
    "classes": 100,
    "soft": {"batch": 128, "steps": 20, "repeats": 5},
    "pipeline_steps": 20,
}
QUICK = {
    "models": ("cnn",),
    "cnn": {
        "name": "cnn_tiny",
        "width": 2,
        "input": (8, 8, 3),
        "batch": 16,
        "steps": 2,
        "repeats": 1,
    },
    "resnet18": {"input": (8, 8, 3), "batch": 16, "steps": 1, "repeats": 1},
    "classes": 10,
    "soft": {"batch": 16, "steps": 2, "repeats": 1},
    "pipeline_steps": 2,
}

# (numerator, denominator, label, target, backends): the rows of each model,
# in print order. `tests/test_benchmarks.py` checks that a run prints them all.
RATIO_ROWS = (
    ("tfkd_reg", "plain", "tfkd_reg / plain fit", 1.05, None),
    ("label_smoothing", "plain", "label_smoothing / plain fit", 1.03, None),
    ("kd", "keras_kd", "kd (live 2x-wide teacher) / keras.distillation", 1.00, None),
    (
        "kd_fast",
        "keras_kd",
        "kd, teacher via _backend.frozen_forward / keras.distillation",
        1.00,
        ("torch",),
    ),
    ("tfkd_self_cached", "plain", "tfkd_self (cached logits) / plain fit", 1.10, None),
    ("kd_cached", "plain", "kd (cached logits) / plain fit", 1.10, None),
    (
        "kd_features",
        "kd",
        "kd + FitNets feature term (last feature map, conv adapter) / kd",
        1.10,
        None,
    ),
    ("ps_kd", "plain", "ps_kd / plain fit", 1.05, None),
    ("ols", "plain", "online_label_smoothing / plain fit", 1.05, None),
    ("dkd_cached", "plain", "dkd (cached logits) / plain fit", 1.05, None),
    (
        "cs_kd",
        "tfkd_self",
        "cs_kd / tfkd_self (both: one more forward of the student's size)",
        1.10,
        None,
    ),
    ("ps_kd_bf16", "ps_kd", "ps_kd, bfloat16 store / float32 store", None, None),
    ("kd", "plain", "kd (live 2x-wide teacher) / plain fit", None, None),
    ("keras_kd", "plain", "keras.distillation (live 2x-wide) / plain fit", None, None),
    ("tfkd_self", "plain", "tfkd_self (live teacher) / plain fit", None, None),
    ("plain_copy", "plain", "same plain fit again / plain fit (noise)", None, None),
)
PIPELINE_ROW = "augmentation pipeline ({engine}) / plain train step (images/s)"
STORE_ROW = "ps_kd, {dtype} store: last epoch's loss, change / float32 store's, in 1e-6"
STORE_DTYPES = ("bfloat16", "float16")
# The pipeline alone must outrun training by these factors (images/s ratios).
PIPELINE_TARGETS = {"cnn": 5.0, "resnet18": 50.0}


def pipeline_engines():
    """The engines of `keras_tfkd.data.pipeline` installed here."""
    import importlib.util

    have_tf = importlib.util.find_spec("tensorflow") is not None
    return ("numpy", "tf.data") if have_tf else ("numpy",)


SOFT_ROW = "tfkd_reg soft term at K={k} / student step"
EXACT_ROW = (
    "KL value at K={k}, distributions {regime}: exact (SoftTargetKL) / textbook,"
    " soft-term cost"
)
#: "apart": Tf-KD_reg's softened virtual teacher against a student whose
#: logits have a spread of 3; "close": the student's own cached logits as the
#: teacher of a T = 1 KD, the case the cancellation-free form is for.
EXACT_REGIMES = ("apart", "close")
EXACT_CLASSES = 10000
LINEAR_ROW = "tfkd_reg soft term: R^2 of a linear fit in K"


def ratio_rows(backend):
    """The `RATIO_ROWS` measured on `backend`."""
    return [row for row in RATIO_ROWS if row[4] is None or backend in row[4]]


def row_names(models, backend):
    """Every ``(model, ratio)`` a run on `backend` prints for `models`, in order."""
    names = []
    for model in models:
        names += [(model, label) for _, _, label, _, _ in ratio_rows(backend)]
        names += [(model, STORE_ROW.format(dtype=d)) for d in STORE_DTYPES]
        names += [(model, PIPELINE_ROW.format(engine=e)) for e in pipeline_engines()]
    names += [("logits", SOFT_ROW.format(k=k)) for k in SOFT_TERM_CLASSES]
    names.append(("logits", LINEAR_ROW))
    names += [
        ("logits", EXACT_ROW.format(k=EXACT_CLASSES, regime=r)) for r in EXACT_REGIMES
    ]
    return names


# --------------------------------------------------------------------------
# Command line and the one-subprocess-per-backend driver (no Keras imported)
# --------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Time keras-tfkd's methods against plain training and print "
        "one table of ratios.",
    )
    parser.add_argument(
        "--backend",
        choices=(*BACKENDS, "all"),
        default=None,
        help="Keras backend, or 'all' (one subprocess each); default: the "
        "current one (KERAS_BACKEND)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated subset of cnn,resnet18 (default: both; with "
        "--quick: cnn)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed epochs of every set-up"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of each backend (default: the backend's choice); 1 "
        "avoids oversubscribing a shared machine",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: CPU time of this process, "
        "steadier on a shared machine",
    )
    parser.add_argument("--output", default=None, help="also write a Markdown report")
    parser.add_argument("--rows-json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = json.loads(json.dumps(QUICK if args.quick else FULL))  # a deep copy
    config["models"] = tuple(config["models"])
    if args.models:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
        if not models or any(m not in ("cnn", "resnet18") for m in models):
            parser.error(
                f"--models must name cnn and/or resnet18, got --models={args.models!r}"
            )
        config["models"] = models
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error(f"--repeats must be >= 1, got --repeats={args.repeats}")
        for key in ("cnn", "resnet18", "soft"):
            config[key]["repeats"] = args.repeats
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got --threads={args.threads}")
    config["clock"] = args.clock
    return args, config


def limit_threads(threads):
    """Ask every backend for `threads` CPU threads; call before Keras is imported."""
    n = str(threads)
    for name in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "TF_NUM_INTRAOP_THREADS",
        "TF_NUM_INTEROP_THREADS",
    ):
        os.environ[name] = n
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_cpu_multi_thread_eigen=false "
            f"intra_op_parallelism_threads={n}"
        ).strip()


def _child_argv(argv):
    """`argv` without the driver's own flags (--backend, --output, --rows-json)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--backend", "--output", "--rows-json"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def _spawn(backend, argv):
    """Run this script on one backend in a subprocess; return its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.json")
        env = dict(os.environ, KERAS_BACKEND=backend)
        command = [
            sys.executable,
            os.path.abspath(__file__),
            *_child_argv(argv),
            "--backend",
            backend,
            "--rows-json",
            path,
        ]
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0 or not os.path.exists(path):
            raise SystemExit(
                f"The {backend} benchmark failed (exit code {done.returncode})."
            )
        with open(path) as f:
            return json.load(f)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args, config = parse_args(argv)
    start = time.perf_counter()
    if args.threads is not None:
        limit_threads(args.threads)
    current = os.environ.get("KERAS_BACKEND")
    if args.backend == "all" or (args.backend and args.backend != current):
        backends = BACKENDS if args.backend == "all" else (args.backend,)
        rows = []
        for backend in backends:
            rows += _spawn(backend, argv)
    else:
        rows = run_benchmarks(config)
    if args.rows_json:
        with open(args.rows_json, "w") as f:
            json.dump(rows, f)
        return 0
    table = format_table(rows)
    wall = time.perf_counter() - start
    print(table)
    print(f"\nwall time {wall:.0f} s")
    if args.output:
        with open(args.output, "w") as f:
            f.write(report(table, argv, wall))
        print(f"wrote {args.output}")
    return 0


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

COLUMNS = ("backend", "model", "ratio", "measured", "target", "holds", "detail")


def format_table(rows):
    """A Markdown table of `rows` (dicts with the keys of `COLUMNS`)."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "numpy"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(table, argv, wall):
    """The Markdown report written by ``--output``."""
    cpu = _cpu_name()
    return (
        "# keras-tfkd benchmark results\n\n"
        f"- date: {datetime.date.today().isoformat()}\n"
        f"- machine: {platform.system()} {cpu}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}\n"
        f"- versions: {_versions()}\n"
        f"- command: `python benchmarks/run.py {' '.join(argv)}`\n"
        f"- wall time: {wall:.0f} s\n\n"
        f"{table}\n"
    )


def _row(model, ratio, value, target, detail, at_least=False):
    """One result row; the target is an upper bound, or a lower one."""
    import keras

    if target is None:
        holds, bound = "-", "reported"
    elif at_least:
        holds, bound = ("yes" if value >= target else "no"), f">= {target:.2f}"
    else:
        holds, bound = ("yes" if value <= target else "no"), f"<= {target:.2f}"
    return {
        "backend": keras.backend.backend(),
        "model": model,
        "ratio": ratio,
        "measured": f"{value:.3f}",
        "target": bound,
        "holds": holds,
        "detail": detail,
    }


# --------------------------------------------------------------------------
# Timing (Keras is imported from here on)
# --------------------------------------------------------------------------

_START = time.perf_counter()


def _log(message):
    import keras

    elapsed = time.perf_counter() - _START
    print(
        f"[{keras.backend.backend()} {elapsed:5.0f} s] {message}",
        file=sys.stderr,
        flush=True,
    )


def _epoch_timer(clock):
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Time of each epoch, stopped once its results are on the host.

        Keras hands the epoch logs over as Python floats, and on JAX it has
        written the new weights back into the variables: reading one waits
        for the last step.
        """

        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = clock()

        def on_epoch_end(self, epoch, logs=None):
            keras.ops.convert_to_numpy(self.model.trainable_variables[-1])
            self.times.append(clock() - self._start)

    return EpochTimer()


class Case:
    """One training set-up: a compiled model and the data of one epoch."""

    def __init__(self, name, model, x, y, batch, clock):
        self.name, self.model, self.x, self.y = name, model, x, y
        self.batch, self.clock = batch, clock
        self.steps = len(y) // batch
        self.losses = []

    def epoch(self):
        """Run one epoch; return its time per step, in seconds."""
        timer = _epoch_timer(self.clock)
        history = self.model.fit(
            self.x,
            self.y,
            batch_size=self.batch,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[timer],
        )
        self.losses.append(history.history["loss"][-1])
        return timer.times[-1] / self.steps


def time_cases(cases, repeats):
    """Seconds per step of each case, one value per timed epoch: ``{name: [...]}``.

    One warm-up epoch each (it compiles the step), then `repeats` rounds in
    which every case runs one epoch; odd rounds run the cases in reverse order.
    """
    for case in cases:
        _log(f"warm-up {case.name}")
        case.epoch()
    times = {case.name: [] for case in cases}
    for index in range(repeats):
        _log(f"round {index + 1} of {repeats}")
        order = cases if index % 2 == 0 else cases[::-1]
        for case in order:
            times[case.name].append(case.epoch())
    return times


def _ms(seconds):
    return f"{seconds * 1e3:.0f}" if abs(seconds) >= 0.01 else f"{seconds * 1e3:.2f}"


def _median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return 0.5 * (ordered[middle - 1] + ordered[middle])


# --------------------------------------------------------------------------
# Models, data and the training set-ups
# --------------------------------------------------------------------------


def _wide_resnet18(num_classes, input_shape, width=2):
    """ResNet18 with `width` times the planes of every stage (the KD teacher)."""
    import keras

    from keras_tfkd.models import resnet

    inputs = keras.Input(shape=input_shape, name="images")
    x = resnet._conv(64 * width, 3, 1, "stem_conv")(inputs)
    x = resnet._bn("stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, planes in enumerate((64, 128, 256, 512)):
        for index in range(2):
            strides = 2 if stage > 0 and index == 0 else 1
            name = f"stage{stage + 1}_block{index + 1}"
            x = resnet._basic_block(x, planes * width, strides, name)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet18_x{width}")


def build_model(kind, settings, num_classes, role, seed):
    """A model of `kind`; `role` "teacher" is twice as wide as "student"/"self"."""
    import keras

    from keras_tfkd import models

    keras.utils.set_random_seed(seed)
    shape = tuple(settings["input"])
    if kind == "cnn":
        width = settings["width"] * (2 if role == "teacher" else 1)
        return models.get_model(settings["name"], num_classes, shape, width=width)
    if role == "teacher":
        return _wide_resnet18(num_classes, shape)
    return models.get_model("resnet18", num_classes, shape)


def _optimizer():
    import keras

    return keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)


def _hard_loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _frozen_forward_teacher(model):
    """`model` as a `Teacher` layer that runs it through `_backend.frozen_forward`.

    The Distiller then computes exactly what it would with the one-line change
    to `teachers.teacher_logits` proposed in benchmarks/README.md.
    """
    from keras_tfkd import _backend, teachers

    class FrozenForwardTeacher(teachers.Teacher):
        def __init__(self, model):
            super().__init__(num_classes=model.output_shape[-1])
            self.model = model

        def call(self, inputs, labels=None):
            return _backend.frozen_forward(self.model, inputs)

    return FrozenForwardTeacher(model)


def build_cases(kind, settings, num_classes, clock):
    """Every training set-up of one model, sharing data and initial weights."""
    import keras
    import numpy as np

    from keras_tfkd import recipes, teachers

    batch, n = settings["batch"], settings["batch"] * settings["steps"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *settings["input"])).astype("float32")
    y = rng.integers(0, num_classes, n).astype("int32")

    def student():
        return build_model(kind, settings, num_classes, "student", seed=1)

    def kd(teacher):
        return recipes.kd(
            student(),
            teacher,
            alpha=KD_ALPHA,
            temperature=KD_T,
            kl="batchmean",
        )

    def tfkd_self(teacher):
        return recipes.tfkd_self(
            student(), teacher, alpha=SELF_ALPHA, temperature=SELF_T, multiplier=SELF_M
        )

    teacher = build_model(kind, settings, num_classes, "teacher", seed=2)
    self_teacher = build_model(kind, settings, num_classes, "self", seed=3)
    teacher.trainable = self_teacher.trainable = False

    models = {"plain": student(), "plain_copy": student()}
    for model in models.values():
        model.compile(optimizer=_optimizer(), loss=_hard_loss())
    models.update(
        tfkd_reg=recipes.tfkd_reg(
            student(), num_classes, alpha=REG_ALPHA, temperature=REG_T, multiplier=REG_M
        ),
        label_smoothing=recipes.label_smoothing(student()),
        kd=kd(teacher),
        tfkd_self=tfkd_self(self_teacher),
    )
    if keras.backend.backend() == "torch":
        models["kd_fast"] = kd(_frozen_forward_teacher(teacher))
    models["kd_features"] = _kd_with_features(student(), teacher)
    # The teacher-free family (docs/methods.md), at their published settings.
    models.update(
        ps_kd=recipes.ps_kd(student(), alpha=0.8),
        ols=recipes.online_label_smoothing(student(), alpha=0.5),
        cs_kd=recipes.cs_kd(student(), temperature=4.0, multiplier=1.0),
    )
    for dtype in STORE_DTYPES:
        name = "ps_kd_bf16" if dtype == "bfloat16" else f"ps_kd_{dtype}"
        models[name] = recipes.ps_kd(student(), alpha=0.8, store_dtype=dtype)
    for name, model in models.items():
        if not name.startswith("plain"):
            model.compile(optimizer=_optimizer())
    builtin = keras.distillation.Distiller(
        teacher=teacher,
        student=student(),
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=KD_T, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=1.0 - KD_ALPHA,
    )
    builtin.compile(optimizer=_optimizer(), loss=_hard_loss())
    models["keras_kd"] = builtin
    cases = [Case(name, model, x, y, batch, clock) for name, model in models.items()]

    # Cached logits: the teacher runs once over the (non-augmented) data.
    def dkd(cached):
        return recipes.dkd(student(), cached, warmup_epochs=0)

    for name, source, make in (
        ("tfkd_self_cached", self_teacher, tfkd_self),
        ("kd_cached", teacher, kd),
        ("dkd_cached", teacher, dkd),
    ):
        cached = teachers.CachedTeacher.from_model(source, x, batch_size=batch)
        model = make(cached)
        model.compile(optimizer=_optimizer())
        cases.append(Case(name, model, cached.attach(x), y, batch, clock))
    return cases


def _last_feature_layer(model):
    """The name of the last layer with an image-shaped (N, H, W, C) output."""
    return [layer for layer in model.layers if len(layer.output.shape) == 4][-1].name


def _kd_with_features(student, teacher):
    """`recipes.kd`'s loss plus a FitNets term on the last feature maps (one pass)."""
    from keras_tfkd import Distiller, Term, losses

    return Distiller(
        student=student,
        terms=[
            Term(
                teacher,
                losses.SoftTargetKL(temperature=KD_T, kl="batchmean"),
                weight=KD_ALPHA,
                name="kd",
            ),
            Term(
                teacher,
                losses.FeatureDistillation(
                    _last_feature_layer(student),
                    _last_feature_layer(teacher),
                    adapter="conv",
                ),
                weight=1.0,
                name="fitnet",
            ),
        ],
        hard_weight=1.0 - KD_ALPHA,
    )


def _synthetic_cifar(n, num_classes):
    """A CIFAR-100-shaped `keras_tfkd.data.Dataset` of random uint8 images."""
    import numpy as np

    from keras_tfkd import data

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).astype("int32")
    return data.Dataset(
        name="cifar100",
        num_classes=num_classes,
        input_shape=(32, 32, 3),
        mean=data.CIFAR_MEAN,
        std=data.CIFAR_STD,
        x_train=images,
        y_train=labels,
        x_test=images[:16],
        y_test=labels[:16],
        source="synthetic",
    )


def pipeline_images_per_second(batch, steps, clock, engine):
    """Images/s of the reference CIFAR augmentation pipeline alone (no model)."""
    from keras_tfkd import data

    dataset = _synthetic_cifar(max(4 * batch, 512), 100)
    return data.pipeline_throughput(
        dataset,
        "train",
        batch,
        steps=steps,
        clock=clock,
        augment="cifar",
        seed=0,
        engine=engine,
    )


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------


def model_rows(kind, config):
    """The ratio rows of one model, and its plain step time in seconds."""
    import keras

    settings, clock = config[kind], CLOCKS[config["clock"]]
    cases = build_cases(kind, settings, config["classes"], clock)
    times = time_cases(cases, settings["repeats"])
    best = {name: min(values) for name, values in times.items()}
    rows = []
    for num, den, label, target, _ in ratio_rows(keras.backend.backend()):
        medians = _median(times[num]) / _median(times[den])
        detail = (
            f"{_ms(best[num])} / {_ms(best[den])} ms per step (min of "
            f"{len(times[den])}); ratio of medians {medians:.3f}"
        )
        rows.append(_row(kind, label, best[num] / best[den], target, detail))
    losses = {case.name: case.losses for case in cases}
    for dtype in STORE_DTYPES:
        name = "ps_kd_bf16" if dtype == "bfloat16" else f"ps_kd_{dtype}"
        ref, got = losses["ps_kd"][-1], losses[name][-1]
        detail = (
            f"loss {got:.6f} vs {ref:.6f} after {len(losses[name])} epochs from the "
            "same weights and batches; store 2 bytes x K per example (float32: 4)"
        )
        label = STORE_ROW.format(dtype=dtype)
        change = 1e6 * abs(got - ref) / abs(ref)
        rows.append(_row(kind, label, change, None, detail))
    step_ips = settings["batch"] / best["plain"]
    for engine in pipeline_engines():
        ips = pipeline_images_per_second(
            settings["batch"], config["pipeline_steps"], clock, engine
        )
        detail = f"pipeline {ips:.0f} img/s, plain train step {step_ips:.0f} img/s"
        label = PIPELINE_ROW.format(engine=engine)
        target = PIPELINE_TARGETS[kind]
        rows.append(_row(kind, label, ips / step_ips, target, detail, at_least=True))
    return rows, best["plain"]


def _logits_student(num_classes, spread=None):
    """A student whose step is little more than its `num_classes` logits.

    `spread`: the standard deviation of its kernel (so of its logits on a
    standard normal input); None: Keras's default (logits near 0).
    """
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((1,))
    init = (
        "glorot_uniform"
        if spread is None
        else keras.initializers.RandomNormal(stddev=spread)
    )
    outputs = keras.layers.Dense(num_classes, use_bias=False, kernel_initializer=init)(
        inputs
    )
    return keras.Model(inputs, outputs, name=f"logits_{num_classes}")


def _textbook_kl_loss(**kwargs):
    """`SoftTargetKL` with the textbook value ``sum p_t (log p_t - log p_s)``."""
    from keras import ops

    from keras_tfkd import losses

    class TextbookKL(losses.SoftTargetKL):
        def call(self, y_true, y_pred):
            log_p_t = ops.log_softmax(y_true / self.teacher_temperature, axis=-1)
            log_p_s = ops.log_softmax(y_pred / self.temperature, axis=-1)
            kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
            return self.factor(y_pred.shape[-1]) * kl

    return TextbookKL(**kwargs)


def exact_kl_rows(config):
    """The exact KL value's soft-term cost over the textbook one's, at K = 10^4.

    Each cost is a Distiller step of the one-``Dense(K)`` student minus a
    plain step, so the ratio compares the two soft terms alone. Two regimes
    (`EXACT_REGIMES`): Tf-KD_reg's virtual teacher at T = 20 against a
    student with spread-out logits (distributions apart) and the student's own
    logits, cached, as the teacher of a T = 1 KD (distributions close, where
    the cancellation-free form is needed).
    """
    import numpy as np

    from keras_tfkd import Distiller, losses, teachers

    settings, clock = config["soft"], CLOCKS[config["clock"]]
    batch, n, k = (
        settings["batch"],
        settings["batch"] * settings["steps"],
        EXACT_CLASSES,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1)).astype("float32")
    y = rng.integers(0, k, n).astype("int32")
    plain = _logits_student(k)
    plain.compile(optimizer=_optimizer(), loss=_hard_loss())
    cases = [Case("plain", plain, x, y, batch, clock)]
    apart = dict(
        temperature=1.0,
        teacher_temperature=REG_T,
        multiplier=REG_M,
        temperature_squared=False,
    )
    cached = teachers.CachedTeacher.from_model(_logits_student(k), x, batch_size=batch)
    for regime in EXACT_REGIMES:
        for name, make in (
            ("exact", losses.SoftTargetKL),
            ("textbook", _textbook_kl_loss),
        ):
            if regime == "apart":
                teacher, inputs = teachers.VirtualTeacher(k, correct_prob=0.99), x
                loss, student = make(**apart), _logits_student(k, spread=3.0)
            else:
                teacher, inputs, loss = cached, cached.attach(x), make(temperature=1.0)
                student = _logits_student(k)
            model = Distiller(
                student=student, teacher=teacher, soft_loss=loss, alpha=0.5
            )
            model.compile(optimizer=_optimizer())
            cases.append(Case(f"{regime} {name}", model, inputs, y, batch, clock))
    times = time_cases(cases, settings["repeats"])
    best = {name: min(values) for name, values in times.items()}
    rows = []
    for regime in EXACT_REGIMES:
        cost_exact = best[f"{regime} exact"] - best["plain"]
        cost_textbook = best[f"{regime} textbook"] - best["plain"]
        detail = (
            f"soft term {_ms(cost_exact)} vs {_ms(cost_textbook)} ms per step "
            f"(plain step {_ms(best['plain'])} ms)"
        )
        label = EXACT_ROW.format(k=k, regime=regime)
        ratio = cost_exact / max(cost_textbook, 1e-9)
        rows.append(_row("logits", label, ratio, 1.5, detail))
    return rows


def soft_term_rows(config, student_step):
    """Cost per step of the Tf-KD_reg soft term at several numbers of classes.

    The student is one ``Dense(K)`` on a scalar input, so a step costs
    little besides its ``(N, K)`` logits; the soft term's cost is a
    `tfkd_reg` step minus a plain step, divided by `student_step`.
    """
    import numpy as np

    from keras_tfkd import recipes

    settings, clock = config["soft"], CLOCKS[config["clock"]]
    batch, n = settings["batch"], settings["batch"] * settings["steps"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1)).astype("float32")
    costs = []
    for k in SOFT_TERM_CLASSES:
        y = rng.integers(0, k, n).astype("int32")
        plain = _logits_student(k)
        plain.compile(optimizer=_optimizer(), loss=_hard_loss())
        reg = recipes.tfkd_reg(
            _logits_student(k), k, alpha=REG_ALPHA, temperature=REG_T, multiplier=REG_M
        )
        reg.compile(optimizer=_optimizer())
        cases = [
            Case("plain", plain, x, y, batch, clock),
            Case(f"tfkd_reg K={k}", reg, x, y, batch, clock),
        ]
        times = time_cases(cases, settings["repeats"])
        costs.append(min(times[cases[1].name]) - min(times["plain"]))
    rows = []
    for k, cost in zip(SOFT_TERM_CLASSES, costs):
        detail = f"{_ms(cost)} ms per step (student step {_ms(student_step)} ms)"
        label = SOFT_ROW.format(k=k)
        rows.append(_row("logits", label, cost / student_step, None, detail))
    ks = np.asarray(SOFT_TERM_CLASSES, "float64")
    costs = np.asarray(costs, "float64")
    slope, intercept = np.polyfit(ks, costs, 1)
    spread = np.sum((costs - costs.mean()) ** 2)
    r2 = 1.0 - np.sum((costs - intercept - slope * ks) ** 2) / spread if spread else 0
    detail = f"cost = {_ms(intercept)} ms + {_ms(slope * 1000)} ms per 1000 classes"
    rows.append(_row("logits", LINEAR_ROW, r2, None, detail))
    return rows


def run_benchmarks(config):
    """All rows for the current backend."""
    import keras

    _log(
        f"keras {keras.__version__}, models {', '.join(config['models'])}, "
        f"{config['clock']} clock"
    )
    rows, student_step = [], None
    for kind in config["models"]:
        kind_rows, plain_step = model_rows(kind, config)
        rows += kind_rows
        student_step = student_step or plain_step
    rows += soft_term_rows(config, student_step)
    rows += exact_kl_rows(config)
    return rows


if __name__ == "__main__":
    sys.exit(main())
