#!/usr/bin/env python
"""Peak memory and time of the soft term at vocabulary scale, chunked or not.

The value plus the gradient (with respect to the student's logits) of one
soft term over ``tokens x V`` logits, three ways:

* ``keras.distillation``: ``keras.distillation.LogitsDistillation(temperature=2,
  loss=keras.losses.KLDivergence()).compute_loss`` (softmax of both sides,
  the KL, times ``T^2``): the built-in, with the correct loss object;
* ``unchunked``: ``SoftTargetKL(temperature=2, chunk_size=None)``;
* ``chunked``: ``SoftTargetKL(temperature=2, chunk_size=C)`` (``--chunk-size``,
  default ``auto``: ``2**21 // V`` rows).

Memory: each (backend, size, way) runs in its own process. The process
builds the teacher and student logits (each ``tokens x V`` float32), records
its resident memory (``VmRSS``), runs the compiled value-and-gradient once
(compilation, warm-up), resets the kernel's high-water mark
(``/proc/self/clear_refs``, Linux >= 4.0), runs it again, and reports the
high-water mark (``VmHWM``) minus the resident memory after the inputs: the
peak memory above the inputs of one value plus gradient, the gradient (the
size of the student's logits) included. Where ``clear_refs`` is not
writable the high-water mark is ``getrusage``'s ``ru_maxrss``, then the
warm-up's compilation is counted too (the table says which). Each process
runs with glibc's ``MALLOC_MMAP_THRESHOLD_=131072`` (``--mmap-threshold``),
so that large blocks freed before the measured run (the warm-up's
buffers) go back to the system: with glibc's dynamic threshold they stay
resident, are counted in the baseline and reused unseen. TensorFlow's
inputs are made in NumPy for the same reason (see `make_inputs`). On a GPU
(``--device gpu``) the backend's own statistics are used instead: peak bytes
in use above the bytes in use after the inputs.

Time: one more process per (backend, size) times the three ways in turns
(round robin, the order reversed every other round, the minimum of
``--repeats`` rounds): the table gives chunked / unchunked.

    python benchmarks/chunked_memory.py --backend all            # 32k, 128k, 256k
    python benchmarks/chunked_memory.py --backend jax --sizes 32k
    python benchmarks/chunked_memory.py --quick                  # a smoke run
    python benchmarks/chunked_memory.py --device gpu --backend all  # a GPU

Targets (issue 23): chunked <= 0.25x keras.distillation's peak and <= 0.25x
the unchunked one, chunked time <= 1.1x unchunked.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time

from run import limit_threads  # benchmarks/run.py: this script's folder

BACKENDS = ("tensorflow", "jax", "torch")
WAYS = ("keras.distillation", "unchunked", "chunked")
#: name -> (V, tokens): 256 MB per float32 logits tensor at each size.
SIZES = {
    "32k": (32768, 2048),
    "128k": (131072, 512),
    "256k": (262144, 256),
}
QUICK = {"quick": (8192, 64)}
TEMPERATURE = 2.0
MB = 2**20
TARGET_MEMORY, TARGET_TIME = 0.25, 1.10


# ----------------------------------------------------------------- one process


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_high_water_mark():
    """Reset VmHWM to the current RSS; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class HostMemory:
    """Resident memory of this process (Linux ``/proc``)."""

    def current(self):
        return _status_kb("VmRSS") * 1024

    def reset_peak(self):
        self.reset = _reset_high_water_mark()

    def peak(self):
        if self.reset:
            return _status_kb("VmHWM") * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def how(self):
        if self.reset:
            return "VmHWM (reset after warm-up)"
        return "ru_maxrss (includes compilation)"


class DeviceMemory:
    """The backend's own statistics of its first GPU."""

    def __init__(self, backend):
        self.backend = backend

    def _stats(self):
        if self.backend == "torch":
            import torch

            return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
        if self.backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats()
            return stats["bytes_in_use"], stats["peak_bytes_in_use"]
        import tensorflow as tf

        info = tf.config.experimental.get_memory_info("GPU:0")
        return info["current"], info["peak"]

    def current(self):
        return self._stats()[0]

    def reset_peak(self):
        if self.backend == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()
        elif self.backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.reset_memory_stats("GPU:0")
        # JAX has no reset: its peak includes the warm-up, the same computation.

    def peak(self):
        return self._stats()[1]

    def how(self):
        return f"{self.backend} device statistics (peak bytes in use)"


def make_inputs(backend, vocab, tokens, seed=0):
    """Teacher and student logits ``(tokens, vocab)``, float32, on the backend."""
    if backend == "jax":
        import jax

        k_t, k_s = jax.random.split(jax.random.PRNGKey(seed))
        z_t = jax.random.normal(k_t, (tokens, vocab), "float32") * 3.0
        z_s = jax.random.normal(k_s, (tokens, vocab), "float32") * 3.0
        return z_t.block_until_ready(), z_s.block_until_ready()
    if backend == "tensorflow":
        import numpy as np
        import tensorflow as tf

        # From NumPy: `tf.random.normal(..., stddev=3)` leaves its temporaries
        # in TensorFlow's allocator, resident and reused by the measured run
        # unseen (the chunked form read 115-129 MB, under its 256 MB gradient).
        rng = np.random.default_rng(seed)
        z_t = tf.constant(rng.standard_normal((tokens, vocab), np.float32) * 3.0)
        z_s = tf.constant(rng.standard_normal((tokens, vocab), np.float32) * 3.0)
        return z_t, z_s
    import torch

    gen = torch.Generator().manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    z_t = torch.randn(tokens, vocab, generator=gen).mul_(3.0).to(device)
    z_s = torch.randn(tokens, vocab, generator=gen).mul_(3.0).to(device)
    return z_t, z_s


def soft_term(way, chunk_size):
    """``loss(z_t, z_s) -> scalar`` for one of `WAYS`."""
    import keras

    if way == "keras.distillation":
        kd = keras.distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=keras.losses.KLDivergence()
        )
        return kd.compute_loss
    from keras_tfkd.losses import SoftTargetKL

    chunk = None if way == "unchunked" else chunk_size
    return SoftTargetKL(temperature=TEMPERATURE, chunk_size=chunk)


def value_and_grad(backend, loss):
    """``step(z_t, z_s) -> (value, grad)``, compiled as the backend compiles a step.

    JAX: `jax.jit`; TensorFlow: `tf.function` (no XLA: Keras's default on a
    CPU); PyTorch: eager. Both outputs are materialised on return.
    """
    if backend == "jax":
        import jax

        step = jax.jit(jax.value_and_grad(lambda z_s, z_t: loss(z_t, z_s)))

        def run(z_t, z_s):
            value, grad = step(z_s, z_t)
            return value.block_until_ready(), grad.block_until_ready()

        return run
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(z_t, z_s):
            with tf.GradientTape() as tape:
                tape.watch(z_s)
                value = loss(z_t, z_s)
            return value, tape.gradient(value, z_s)

        def run(z_t, z_s):
            value, grad = step(z_t, z_s)
            value.numpy()
            return value, grad

        return run

    def run(z_t, z_s):
        x = z_s.detach().requires_grad_(True)
        value = loss(z_t, x)
        value.backward()
        return value.detach(), x.grad

    return run


def _setup(args):
    if args.threads is not None:
        limit_threads(args.threads)
    os.environ["KERAS_BACKEND"] = args.backend
    if args.device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    vocab, tokens = args.vocab, args.tokens
    chunk = args.chunk_size if args.chunk_size == "auto" else int(args.chunk_size)
    return vocab, tokens, chunk


def measure_memory(args):
    """One way's peak memory above its inputs (this process does nothing else)."""
    vocab, tokens, chunk = _setup(args)
    z_t, z_s = make_inputs(args.backend, vocab, tokens)
    memory = HostMemory() if args.device == "cpu" else DeviceMemory(args.backend)
    run = value_and_grad(args.backend, soft_term(args.way, chunk))
    gc.collect()
    base = memory.current()
    out = run(z_t, z_s)  # compile and warm up
    value = float(out[0])
    del out
    gc.collect()
    after_warm_up = memory.current()
    memory.reset_peak()
    out = run(z_t, z_s)
    peak = memory.peak()
    del out
    return {
        "way": args.way,
        "peak_mb": (peak - base) / MB,
        "held_after_warm_up_mb": (after_warm_up - base) / MB,
        "inputs_mb": 2 * tokens * vocab * 4 / MB,
        "value": value,
        "how": memory.how(),
    }


def measure_time(args):
    """The three ways timed in turns in this one process (min per way)."""
    vocab, tokens, chunk = _setup(args)
    z_t, z_s = make_inputs(args.backend, vocab, tokens)
    runs = {w: value_and_grad(args.backend, soft_term(w, chunk)) for w in WAYS}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for run in runs.values():
        run(z_t, z_s)
    times = {w: [] for w in WAYS}
    for r in range(args.repeats):
        order = WAYS if r % 2 == 0 else WAYS[::-1]
        for way in order:
            start = clock()
            out = runs[way](z_t, z_s)
            times[way].append(clock() - start)
            del out
    return {w: min(t) for w, t in times.items()} | {
        f"{w} median": sorted(t)[len(t) // 2] for w, t in times.items()
    }


# ----------------------------------------------------------------- the driver
def _child(args, backend, size, mode, way=None):
    vocab, tokens = {**SIZES, **QUICK}[size]
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        mode,
        "--backend",
        backend,
        "--vocab",
        str(vocab),
        "--tokens",
        str(tokens),
        "--chunk-size",
        str(args.chunk_size),
        "--repeats",
        str(args.repeats),
        "--clock",
        args.clock,
        "--device",
        args.device,
    ]
    if way is not None:
        argv += ["--way", way]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return run_worker(argv, args)


def run_worker(argv, args):
    """Run one worker process (`argv`) and return its last line's JSON.

    The process gets glibc's ``MALLOC_MMAP_THRESHOLD_`` (`args.mmap_threshold`,
    0: glibc's default): freed large blocks go back to the system, so the
    warm-up's buffers are neither counted as resident nor reused unseen.
    Used by this script and ``benchmarks/fused_memory.py``.
    """
    env = dict(os.environ)
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=args.timeout, env=env
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_mmap_threshold(parser):
    """The ``--mmap-threshold`` option of `run_worker`."""
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=131072,
        help="glibc's MALLOC_MMAP_THRESHOLD_ in each process (0: glibc's "
        "default, whose retained blocks make the high-water mark miss or count "
        "memory the computation did not allocate)",
    )


def _fmt(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def table(results):
    head = (
        "| backend | V | tokens | inputs | keras.distillation | unchunked | chunked "
        "| chunked / keras.distillation | chunked / unchunked "
        "| time chunked / unchunked |"
    )
    lines = [head, "|" + "---|" * 10]
    for (backend, size), r in results.items():
        vocab, tokens = {**SIZES, **QUICK}[size]
        mem = {w: r[w].get("peak_mb") for w in WAYS}
        t = r["time"]
        ratio_k = ratio_u = ratio_t = None
        if mem["chunked"] is not None and mem["keras.distillation"]:
            ratio_k = mem["chunked"] / mem["keras.distillation"]
        if mem["chunked"] is not None and mem["unchunked"]:
            ratio_u = mem["chunked"] / mem["unchunked"]
        if "chunked" in t:
            ratio_t = t["chunked"] / t["unchunked"]

        def verdict(x, target):
            if x is None:
                return "-"
            return f"{x:.2f} ({'yes' if x <= target else 'no'})"

        lines.append(
            f"| {backend} | {vocab:,} | {tokens:,} "
            f"| {_fmt(2 * vocab * tokens * 4 / MB)}"
            f" MB | {_fmt(mem['keras.distillation'])} MB | {_fmt(mem['unchunked'])} MB"
            f" | {_fmt(mem['chunked'])} MB | {verdict(ratio_k, TARGET_MEMORY)}"
            f" | {verdict(ratio_u, TARGET_MEMORY)} | {verdict(ratio_t, TARGET_TIME)} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    p.add_argument("--sizes", default="32k,128k,256k")
    p.add_argument("--quick", action="store_true", help="V = 8192, 64 tokens")
    p.add_argument("--chunk-size", default="auto")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    add_mmap_threshold(p)
    p.add_argument("--output", default=None, help="also write the table here")
    p.add_argument("--worker", choices=("memory", "time"), help=argparse.SUPPRESS)
    p.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.chunk_size != "auto" and not args.chunk_size.isdigit():
        p.error(f"--chunk-size must be 'auto' or a positive int, got {args.chunk_size}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        result = (measure_memory if args.worker == "memory" else measure_time)(args)
        print(json.dumps(result))
        return 0
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    sizes = list(QUICK) if args.quick else args.sizes.split(",")
    results = {}
    for backend in backends:
        for size in sizes:
            r = {w: _child(args, backend, size, "memory", w) for w in WAYS}
            r["time"] = _child(args, backend, size, "time")
            results[backend, size] = r
            print(f"{backend} {size}: {json.dumps(r)}", file=sys.stderr, flush=True)
    how = {r[w].get("how") for r in results.values() for w in WAYS} - {None}
    text = "\n".join(
        [
            f"- date: {datetime.date.today().isoformat()}",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({args.device})",
            f"- command: `python benchmarks/chunked_memory.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
            f"- memory: {', '.join(sorted(how))}; time: {args.clock} clock, "
            f"min of {args.repeats}",
            "",
            table(results),
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
