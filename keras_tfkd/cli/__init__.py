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
unusable output folder or checkpoint; or, in a job of several processes,
another process has died: the line says to start the job again) or 130
(Ctrl-C: the line says from which epoch the same command resumes; every run
keeps per-epoch backups and a study skips its finished runs).

Example::

    keras-tfkd study --backend jax --output-dir runs/study
    keras-tfkd study --num-seeds 5 --methods baseline tfkd_reg
    keras-tfkd run --experiment kd/mobilenet_v2_from_resnet18 --dataset cifar100
    keras-tfkd list experiments

The code: `keras_tfkd.cli.parser` (the arguments), `keras_tfkd.cli.backend`
(the backend, before Keras is imported), `keras_tfkd.cli.errors` (the
one-line errors and the checks), `keras_tfkd.cli.interrupts` (Ctrl-C),
`keras_tfkd.cli.commands` (study, run, list); `main` here ties them together.
"""

from __future__ import annotations

import os
import sys

# Keras-free imports only: the backend is chosen after the arguments are parsed.
from keras_tfkd.cli.backend import check_backend
from keras_tfkd.cli.commands import _execute
from keras_tfkd.cli.errors import (
    PROG,
    _check_output_dir,
    _missing_dirs,
    _remove_empty,
    _UsageError,
)
from keras_tfkd.cli.interrupts import _Interrupts, _lost_a_process, _Progress
from keras_tfkd.cli.parser import build_parser

__all__ = ["build_parser", "check_backend", "main"]


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
                return _execute(args, log)
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
    except Exception as e:
        if not _lost_a_process(e):
            raise
        # Another process of the job died: end now, without JAX's shutdown,
        # which would wait for its heartbeat timeout (100 s) and abort.
        sys.stdout.flush()
        sys.stderr.write(log.lost_process(args.command == "study", e) + "\n")
        sys.stderr.flush()
        os._exit(1)
