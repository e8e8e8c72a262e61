#!/usr/bin/env python
"""Issue 23 item 4: the exact KL value's cost, and model-teacher KD's, in one run.

Two ratios per backend, each a ratio of two times measured in the same
process, the set-ups taking turns epoch by epoch (round robin, the order
reversed every other round, the minimum of ``--repeats``), as in
``benchmarks/run.py`` (whose set-ups and timing this script reuses):

* ``kd (live 2x-wide teacher) / keras.distillation``: `recipes.kd` with a
  model teacher over Keras's ``keras.distillation.Distiller`` with the same
  teacher, student, data and ``KLDivergence()`` loss (the small CIFAR CNN at
  batch 128). Target <= 1.00.
* ``KL value at K=10000 ...: exact (SoftTargetKL) / textbook``: the soft
  term's cost (a Distiller step of a one-``Dense(K)`` student minus a plain
  step) with the cancellation-free value over the same loss returning the
  textbook ``sum p_t (log p_t - log p_s)``, distributions apart and close.
  Target <= 1.50.

    python benchmarks/exact_kl.py --backend all              # one pinned core
    python benchmarks/exact_kl.py --backend torch --quick    # a smoke run

By default each backend runs in its own subprocess on one thread
(``--threads 1``) with the CPU clock (``--clock cpu``), as the README's
tables were measured on a shared machine.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (benchmarks/run.py: this script's folder)

KD_ROW = "kd (live 2x-wide teacher) / keras.distillation"


def kd_row(config):
    """`recipes.kd` over `keras.distillation.Distiller`, the CNN, one process."""
    import keras
    import numpy as np

    from keras_tfkd import recipes

    settings, clock = config["cnn"], run.CLOCKS[config["clock"]]
    num_classes = config["classes"]
    batch, n = settings["batch"], settings["batch"] * settings["steps"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *settings["input"])).astype("float32")
    y = rng.integers(0, num_classes, n).astype("int32")

    def student():
        return run.build_model("cnn", settings, num_classes, "student", seed=1)

    teacher = run.build_model("cnn", settings, num_classes, "teacher", seed=2)
    teacher.trainable = False
    ours = recipes.kd(
        student(), teacher, alpha=run.KD_ALPHA, temperature=run.KD_T, kl="batchmean"
    )
    ours.compile(optimizer=run._optimizer())
    builtin = keras.distillation.Distiller(
        teacher=teacher,
        student=student(),
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=run.KD_T, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=1.0 - run.KD_ALPHA,
    )
    builtin.compile(optimizer=run._optimizer(), loss=run._hard_loss())
    cases = [
        run.Case("kd", ours, x, y, batch, clock),
        run.Case("keras_kd", builtin, x, y, batch, clock),
    ]
    times = run.time_cases(cases, settings["repeats"])
    best = {name: min(values) for name, values in times.items()}
    medians = run._median(times["kd"]) / run._median(times["keras_kd"])
    detail = (
        f"{run._ms(best['kd'])} / {run._ms(best['keras_kd'])} ms per step (min of "
        f"{len(times['kd'])}); ratio of medians {medians:.3f}"
    )
    return run._row("cnn", KD_ROW, best["kd"] / best["keras_kd"], 1.0, detail)


def rows(config):
    return [kd_row(config), *run.exact_kl_rows(config)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=(*run.BACKENDS, "all"), default=None)
    p.add_argument("--threads", type=int, default=1, help="0: the backend's choice")
    p.add_argument("--clock", choices=sorted(run.CLOCKS), default="cpu")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--output", default=None, help="also write a Markdown report")
    p.add_argument("--rows-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    config = json.loads(json.dumps(run.QUICK if args.quick else run.FULL))
    config["clock"] = args.clock
    if args.repeats is not None:
        for key in ("cnn", "soft"):
            config[key]["repeats"] = args.repeats
    return args, config


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args, config = parse_args(argv)
    if args.threads:
        run.limit_threads(args.threads)
    current = os.environ.get("KERAS_BACKEND")
    if args.backend and (args.backend == "all" or args.backend != current):
        backends = run.BACKENDS if args.backend == "all" else (args.backend,)
        found = []
        for backend in backends:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "rows.json")
                child = [a for a in run._child_argv(argv)]
                done = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), *child]
                    + ["--backend", backend, "--rows-json", path],
                    env=dict(os.environ, KERAS_BACKEND=backend),
                    check=False,
                )
                if done.returncode != 0 or not os.path.exists(path):
                    raise SystemExit(f"The {backend} run failed ({done.returncode}).")
                with open(path) as f:
                    found += json.load(f)
    else:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        found = rows(config)
    if args.rows_json:
        with open(args.rows_json, "w") as f:
            json.dump(found, f)
        return 0
    text = "\n".join(
        [
            f"- date: {datetime.date.today().isoformat()}",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs",
            f"- command: `python benchmarks/exact_kl.py {' '.join(argv)}`",
            f"- threads: {args.threads or 'default'}; clock: {args.clock}",
            "",
            run.format_table(found),
        ]
    )
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
