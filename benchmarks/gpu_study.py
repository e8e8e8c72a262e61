"""The Fashion-MNIST study on all 60,000 training images, for one GPU.

The preset ``fashion_mnist_full`` (`keras_tfkd.study.PRESETS`): every method,
cnn5 <- cnn_small, the paper's augmentation, 3 seeds, on the full training
set with the full test set. The machine needs no network: the four
Fashion-MNIST idx files are passed in with ``--data-dir`` (copy them from
``/usr/share/datasets/fashion-mnist`` of Debian's ``dataset-fashion-mnist``
package, or from ``~/.keras/datasets/fashion-mnist``).

    python benchmarks/gpu_study.py --data-dir data/fashion-mnist
    python benchmarks/gpu_study.py --data-dir data/fashion-mnist --smoke  # CPU

It writes the study's results.json/.md/.png and ``gpu_study.json`` (the
device, the seconds, whether it met the 8-minute budget) to
``--output-dir``. ``--smoke`` runs the same code on 512 training and 256
test images for 1 epoch and 2 seeds: what the test suite runs on CPU.
Rerun into the same folder, it skips the runs already finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

#: What the full study should take on one modern GPU (the issue's target).
BUDGET_SECONDS = 8 * 60
PRESET = "fashion_mnist_full"
SMOKE = dict(limit=(512, 256), epochs=1, seeds=(0, 1), batch_size=64)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        required=True,
        help="folder with the four Fashion-MNIST idx files (.gz or not)",
    )
    parser.add_argument("--output-dir", default="runs/gpu_study")
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny run of the same code (CPU)"
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("KERAS_BACKEND", "jax"),
        choices=("jax", "tensorflow", "torch"),
        help="(default: $KERAS_BACKEND, else jax)",
    )
    return parser.parse_args(argv)


def _missing_files(folder):
    from keras_tfkd.data.sources import FASHION_MNIST_FILES

    names = {p.name for p in Path(folder).glob("*")} if Path(folder).is_dir() else set()
    return [f for f in FASHION_MNIST_FILES if f not in names and f[:-3] not in names]


def _device():
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return ", ".join(str(d) for d in jax.devices())
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
        return "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return ", ".join(g.name for g in gpus) or "cpu"


def main(argv=None, log=print):
    args = _parse(argv)
    missing = _missing_files(args.data_dir)
    if missing:
        log(
            f"error: --data-dir {args.data_dir!r} lacks {', '.join(missing)}: "
            "copy the four Fashion-MNIST idx files there."
        )
        return 2
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ["KERAS_TFKD_OFFLINE"] = "1"  # the data is passed in, never fetched
    import keras

    from keras_tfkd import study

    if keras.backend.backend() != args.backend:
        log(
            f"error: Keras already runs {keras.backend.backend()!r}; set "
            f"KERAS_BACKEND={args.backend} before starting Python."
        )
        return 2
    overrides = SMOKE if args.smoke else {}
    config = study.StudyConfig.from_preset(
        PRESET,
        data_dir=str(args.data_dir),
        output_dir=str(args.output_dir),
        **overrides,
    )
    start = time.perf_counter()
    summary = study.run_study(config, log=log)
    seconds = time.perf_counter() - start
    report = {
        "preset": PRESET,
        "smoke": bool(args.smoke),
        "backend": args.backend,
        "device": _device(),
        "seconds": round(seconds, 1),
        "budget_seconds": BUDGET_SECONDS,
        "within_budget": seconds <= BUDGET_SECONDS,
        "runs": len(summary["records"]),
        "train_examples": summary["records"][0]["hyperparameters"]["train_examples"],
    }
    path = Path(args.output_dir) / "gpu_study.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"{report['runs']} runs in {seconds:.0f} s on {report['device']} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
