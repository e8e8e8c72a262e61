"""The top-k teacher cache: bytes per token, and a cached KD step against a plain one.

    python benchmarks/topk.py                       # the current backend
    python benchmarks/topk.py --threads 1 --clock cpu
    python benchmarks/topk.py --quick               # tiny sizes (the tests' smoke run)

Two tables:

* **Bytes per token** of `keras_tfkd.topk` caches at k = 64 and 128 and V =
  32,768, 128,000 and 256,000 (float16 values), against dense teacher logits
  (float16 and float32, the `CachedTeacher` way): the formula, and at V =
  32,768 the size of a cache written by `write_topk_cache` on disk.
* **Time**: a `Distiller` step with a `TopKTeacher` (k = 128, tail bucket,
  `SoftTargetKL(T=2)`, alpha 0.5, the cache streamed memory-mapped by
  `TopKBatches`) divided by a plain language-model step (``student.fit`` with
  `SparseCategoricalCrossentropy(from_logits=True)`), same student, same
  batches, same optimizer, timed in the same process in turns (one warm-up
  epoch each, then `--repeats` rounds, the order reversed every other round;
  the minimum time per step of each). The student is a token MLP: Embedding(V,
  H), two residual blocks Dense(4H, gelu) -> Dense(H), and the projection
  Dense(V); the target is at most 1.05.

The machine this ran on is shared: say so with the numbers, and prefer
``--threads 1 --clock cpu`` there (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from run import limit_threads  # benchmarks/run.py: this script's folder

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
FULL = {"vocabulary": 32_768, "hidden": 512, "batch": 4, "length": 128, "steps": 3}
QUICK = {"vocabulary": 512, "hidden": 32, "batch": 2, "length": 16, "steps": 2}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--k", type=int, default=128, help="tokens kept per position")
    parser.add_argument("--vocabulary", type=int, default=None, help="V")
    parser.add_argument("--hidden", type=int, default=None, help="H of the student")
    args = parser.parse_args(argv)
    config = dict(QUICK if args.quick else FULL)
    for name in ("vocabulary", "hidden"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats and --threads must be >= 1")
    return args, config


def bytes_rows(k_values, folder, config):
    """``[(V, what, bytes per token, on disk)]`` for the table."""
    import keras
    import numpy as np

    from keras_tfkd import topk

    rows = []
    for vocabulary in (32_768, 128_000, 256_000):
        for k in k_values:
            rows.append(
                (
                    vocabulary,
                    f"top-k, k = {k}",
                    topk.bytes_per_token(k, vocabulary, "float16"),
                )
            )
        rows.append((vocabulary, "dense logits, float16", 2 * vocabulary))
        rows.append((vocabulary, "dense logits, float32", 4 * vocabulary))
    # Measured: a cache written at V = 32,768 (tiny data), its files' size.
    vocabulary, length = (config["vocabulary"], 8)
    teacher = keras.Sequential(
        [
            keras.Input((length,), dtype="int32"),
            keras.layers.Embedding(vocabulary, 4),
            keras.layers.Dense(vocabulary),
        ]
    )
    x = np.random.default_rng(0).integers(0, vocabulary, (2, length)).astype("int32")
    measured = {}
    for k in k_values:
        if k > vocabulary:
            continue
        path = os.path.join(folder, f"bytes_k{k}")
        cache = topk.write_topk_cache(path, teacher, x, k=k)
        size = sum(
            os.path.getsize(os.path.join(path, name)) - 128
            for name in ("ids.npy", "values.npy")
        )
        measured[(vocabulary, k)] = (size / x.size, cache.bytes_per_token)
    return rows, measured


def student_model(config, seed):
    import keras

    keras.utils.set_random_seed(seed)
    v, h, length = config["vocabulary"], config["hidden"], config["length"]
    tokens = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(v, h)(tokens)
    for _ in range(2):
        y = keras.layers.Dense(4 * h, activation="gelu")(x)
        x = keras.layers.Add()([x, keras.layers.Dense(h)(y)])
    logits = keras.layers.Dense(v)(x)
    return keras.Model(tokens, logits)


def time_steps(config, k, repeats, clock, folder):
    """``{case: [seconds per step]}`` of the plain and the cached-KD step."""
    import keras
    import numpy as np

    from keras_tfkd import Distiller, losses, topk

    v, length = config["vocabulary"], config["length"]
    n = config["batch"] * config["steps"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, v, (n, length)).astype("int32")
    y = np.roll(x, -1, axis=1)
    mask = np.ones((n, length), "float32")
    mask[:, -8:] = 0.0
    teacher = student_model(config, seed=1)
    cache = topk.write_topk_cache(
        os.path.join(folder, "cache"),
        teacher,
        x,
        k=min(k, v),
        temperature=2.0,
        batch_size=config["batch"],
    )
    plain = student_model(config, seed=0)
    plain.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    student = student_model(config, seed=0)
    kd = Distiller(
        student=student,
        teacher=topk.TopKTeacher(cache),
        soft_loss=topk.TopKLoss(losses.SoftTargetKL(2.0)),
        alpha=0.5,
    )
    kd.compile(optimizer=keras.optimizers.Adam(1e-3))

    def epoch(model):
        start = clock()
        model.fit(
            x,
            y,
            sample_weight=mask,
            batch_size=config["batch"],
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        keras.ops.convert_to_numpy(model.trainable_variables[-1])
        return (clock() - start) / config["steps"]

    cases = {"plain LM step": plain, f"top-k KD step (k = {min(k, v)})": kd}
    for model in cases.values():
        epoch(model)  # warm-up: compiles the step
    times = {name: [] for name in cases}
    for index in range(repeats):
        order = list(cases.items())
        for name, model in order if index % 2 == 0 else order[::-1]:
            times[name].append(epoch(model))
    return times, cache.bytes_per_token


def main(argv=None):
    args, config = parse_args(argv)
    if args.threads is not None:
        limit_threads(args.threads)
    import keras

    k_values = (64, 128)
    with tempfile.TemporaryDirectory() as folder:
        rows, measured = bytes_rows(
            k_values,
            folder,
            dict(config, vocabulary=32_768 if not args.quick else config["vocabulary"]),
        )
        times, _ = time_steps(config, args.k, args.repeats, CLOCKS[args.clock], folder)
    print(
        f"# top-k cache, backend {keras.backend.backend()}, clock {args.clock}, "
        f"threads {args.threads or 'default'}"
    )
    print()
    print("| V | targets | bytes per token | on disk (measured) |")
    print("|---|---|---|---|")
    for vocabulary, what, size in rows:
        k = int(what.split("= ")[1]) if what.startswith("top-k") else None
        disk = measured.get((vocabulary, k))
        on_disk = "" if disk is None else f"{disk[0]:,.0f}"
        print(f"| {vocabulary:,} | {what} | {size:,} | {on_disk} |")
    print()
    names = list(times)
    base = min(times[names[0]])
    print(
        f"student: token MLP, V = {config['vocabulary']:,}, H = {config['hidden']}, "
        f"batch {config['batch']} x {config['length']} tokens"
    )
    print()
    print("| step | ms per step (min) | ratio to plain | target |")
    print("|---|---|---|---|")
    for name in names:
        best = min(times[name])
        target = "" if name == names[0] else "<= 1.05"
        print(f"| {name} | {best * 1e3:,.1f} | {best / base:.3f} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
