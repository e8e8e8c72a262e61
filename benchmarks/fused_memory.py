#!/usr/bin/env python
"""Peak memory and time of the fused projection against logits-then-loss.

The value plus the gradient (with respect to the hidden states ``h``
``(tokens, d)`` and the projection ``W`` ``(d, V)``) of a language model's
loss, ``0.5 * CE(y, z) + 0.5 * SoftTargetKL(T=2)(z_t, z)`` with ``z = h @
W``, the token mean over a padding mask, three ways:

* ``logits``: the logits built whole, then the losses unchunked
  (``SoftTargetKL(chunk_size=None)``, Keras's sparse CE): the Distiller's
  path without any option;
* ``logits+chunked``: the logits built whole, the soft loss chunked
  (``chunk_size="auto"``, `keras_tfkd._chunked`);
* ``fused``: `keras_tfkd.fused.linear_losses` with the loss weights
  (``coefficients=(0.5, 0.5)``, as the `Distiller` passes them): the
  projection, the CE and the soft loss chunk by chunk (``2**21 // V``
  rows), the logits never whole, one gradient per chunk;
* ``fused per output``: the same without ``coefficients``: each output's
  own gradient in every chunk (what a training loop of one's own gets
  when it does not pass its weights).

Memory: each (backend, way) runs in its own process, measured as
benchmarks/chunked_memory.py measures (its `HostMemory`: ``VmHWM`` after a
reset, minus ``VmRSS`` after the inputs; its `DeviceMemory` on a GPU): the
peak above the inputs (``h``, ``W``, the teacher's logits, the labels) of
one compiled value and gradient, the gradients included. Each process runs
with glibc's ``MALLOC_MMAP_THRESHOLD_=131072`` (``--mmap-threshold``): with
glibc's dynamic threshold the blocks a warm-up frees stay resident, and the
high-water mark, reset to the resident size after the warm-up, counts them
(PyTorch's fused form: 458 MB held after the warm-up, 23 MB with the fixed
threshold). ``held`` in the JSON lines is that resident memory. Time: one more
process per backend runs the three ways in turns (min of ``--repeats``).

    python benchmarks/fused_memory.py --backend all     # V = 32768, 2048 tokens
    python benchmarks/fused_memory.py --quick           # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time

from chunked_memory import (
    MB,
    DeviceMemory,
    HostMemory,
    _fmt,
    add_mmap_threshold,
    run_worker,
)
from run import limit_threads  # benchmarks/run.py: this script's folder

BACKENDS = ("tensorflow", "jax", "torch")
WAYS = ("logits", "logits+chunked", "fused", "fused per output")
TEMPERATURE = 2.0


def make_inputs(vocab, tokens, width, seed=0):
    """``h (tokens, d)``, ``W (d, V)``, teacher logits, labels, mask (numpy)."""
    import numpy as np

    r = np.random.default_rng(seed)
    h = r.normal(size=(tokens, width)).astype("float32")
    w = (r.normal(size=(width, vocab)) / width**0.5).astype("float32")
    z_t = (r.normal(size=(tokens, vocab)) * 3).astype("float32")
    labels = r.integers(0, vocab, size=(tokens,)).astype("int32")
    mask = (r.uniform(size=(tokens,)) < 0.9).astype("float32")
    return h, w, z_t, labels, mask


def loss_fn(way):
    """``loss(h, W, z_t, labels, mask) -> scalar`` for one of `WAYS`."""
    import keras
    from keras import ops

    from keras_tfkd import fused, losses

    def token_mean(mask):  # keras_tfkd.tokens' weights: a mean over the unmasked
        return mask * ops.cast(ops.shape(mask)[0], "float32") / ops.sum(mask)

    if way.startswith("fused"):
        kl = losses.SoftTargetKL(temperature=TEMPERATURE)
        coefficients = (0.5, 0.5) if way == "fused" else None

        def fused_loss(h, w, z_t, labels, mask):
            hard, (soft,) = fused.linear_losses(
                h,
                w,
                labels,
                soft=[(kl, z_t)],
                sample_weight=token_mean(mask),
                coefficients=coefficients,
            )
            return 0.5 * hard + 0.5 * soft

        return fused_loss
    kl = losses.SoftTargetKL(
        temperature=TEMPERATURE, chunk_size=None if way == "logits" else "auto"
    )
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def whole(h, w, z_t, labels, mask):
        z = ops.matmul(h, w)
        weights = token_mean(mask)
        return 0.5 * ce(labels, z, weights) + 0.5 * kl(z_t, z, weights)

    return whole


def value_and_grad(backend, loss):
    """``run(h, W, *data) -> (value, dh, dW)``, compiled as the backend compiles
    a step (the data are arguments, not constants folded into the program)."""
    if backend == "jax":
        import jax

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

        def run(h, w, *data):
            value, (dh, dw) = step(h, w, *data)
            return value.block_until_ready(), dh.block_until_ready(), dw

        return run
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(h, w, *data):
            with tf.GradientTape() as tape:
                tape.watch([h, w])
                value = loss(h, w, *data)
            return (value, *tape.gradient(value, [h, w]))

        def run(h, w, *data):
            out = step(h, w, *data)
            out[0].numpy()
            return out

        return run

    def run(h, w, *data):
        h_, w_ = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
        value = loss(h_, w_, *data)
        value.backward()
        return value.detach(), h_.grad, w_.grad

    return run


def _setup(args):
    if args.threads is not None:
        limit_threads(args.threads)
    os.environ["KERAS_BACKEND"] = args.backend
    if args.device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    from keras import ops

    arrays = make_inputs(args.vocab, args.tokens, args.width)
    return [ops.convert_to_tensor(a) for a in arrays]


def measure_memory(args):
    """One way's peak memory above its inputs (this process does nothing else)."""
    inputs = _setup(args)
    memory = HostMemory() if args.device == "cpu" else DeviceMemory(args.backend)
    run = value_and_grad(args.backend, loss_fn(args.way))
    gc.collect()
    base = memory.current()
    value = float(run(*inputs)[0])  # compile and warm up
    gc.collect()
    held = memory.current()
    memory.reset_peak()
    out = run(*inputs)
    peak = memory.peak()
    del out
    return {
        "way": args.way,
        "peak_mb": (peak - base) / MB,
        "value": value,
        "held_after_warm_up_mb": (held - base) / MB,
        "how": memory.how(),
    }


def measure_time(args):
    """The three ways timed in turns in this one process (min per way)."""
    inputs = _setup(args)
    runs = {way: value_and_grad(args.backend, loss_fn(way)) for way in WAYS}
    values = {way: float(run(*inputs)[0]) for way, run in runs.items()}
    times = {way: [] for way in WAYS}
    for r in range(args.repeats):
        for way in WAYS if r % 2 == 0 else WAYS[::-1]:
            start = time.perf_counter()
            out = runs[way](*inputs)
            times[way].append(time.perf_counter() - start)
            del out
    return {way: min(t) for way, t in times.items()} | {"values": values}


def _child(args, backend, mode, way=None):
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        mode,
        "--backend",
        backend,
        "--vocab",
        str(args.vocab),
        "--tokens",
        str(args.tokens),
        "--width",
        str(args.width),
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
    ]
    if way is not None:
        argv += ["--way", way]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return run_worker(argv, args)


def table(args, results):
    lines = [
        "| backend | logits | logits+chunked | fused | fused per output "
        "| fused / logits | fused / logits+chunked | time fused / logits "
        "| time fused per output / logits |",
        "|" + "---|" * 9,
    ]
    for backend, r in results.items():
        mem = {way: r[way].get("peak_mb") for way in WAYS}
        t = r["time"]

        def ratio(a, b):
            return "-" if a is None or not b else f"{a / b:.2f}"

        lines.append(
            f"| {backend} | {_fmt(mem['logits'])} MB | {_fmt(mem['logits+chunked'])}"
            f" MB | {_fmt(mem['fused'])} MB | {_fmt(mem['fused per output'])} MB"
            f" | {ratio(mem['fused'], mem['logits'])}"
            f" | {ratio(mem['fused'], mem['logits+chunked'])}"
            f" | {ratio(t.get('fused'), t.get('logits'))}"
            f" | {ratio(t.get('fused per output'), t.get('logits'))} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--width", type=int, default=256, help="d, the hidden size")
    p.add_argument("--quick", action="store_true", help="V = 4096, 128 tokens, d = 32")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--timeout", type=int, default=900, help="seconds per process")
    add_mmap_threshold(p)
    p.add_argument("--output", default=None, help="also write the table here")
    p.add_argument("--worker", choices=("memory", "time"), help=argparse.SUPPRESS)
    p.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.tokens, args.width = 4096, 128, 32
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        result = (measure_memory if args.worker == "memory" else measure_time)(args)
        print(json.dumps(result))
        return 0
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    results = {}
    for backend in backends:
        r = {way: _child(args, backend, "memory", way) for way in WAYS}
        r["time"] = _child(args, backend, "time")
        results[backend] = r
        print(f"{backend}: {json.dumps(r)}", file=sys.stderr, flush=True)
    how = {r[w].get("how") for r in results.values() for w in WAYS} - {None}
    inputs = (args.tokens * (args.width + args.vocab + 2) + args.width * args.vocab) * 4
    text = "\n".join(
        [
            f"- date: {datetime.date.today().isoformat()}",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({args.device})",
            f"- command: `python benchmarks/fused_memory.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
            f"- V = {args.vocab:,}, {args.tokens:,} tokens, d = {args.width}; inputs "
            f"{_fmt(inputs / MB)} MB (the logits would be "
            f"{_fmt(args.tokens * args.vocab * 4 / MB)} MB); memory: "
            f"{', '.join(sorted(how))}; time: wall clock, min of {args.repeats}",
            "",
            table(args, results),
        ]
    )
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    errors = [r for res in results.values() for r in res.values() if "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
