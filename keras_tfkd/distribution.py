"""Data-parallel training of a `Distiller` with each backend's own engine.

Nothing here re-implements data parallelism: `get_distribution` hands back the
engine Keras already uses on the current backend, wrapped so that one code
path works everywhere::

    dist = get_distribution()            # all devices of this machine
    with dist.scope():
        distiller = recipes.tfkd_reg(
            build_student(), 100, alpha=0.1, temperature=20.0, multiplier=100.0
        )
        distiller.compile(optimizer="sgd")
        distiller.fit(x, y, batch_size=128)   # 128 is the *global* batch

============  ==================================  ==================================
backend       engine                              what happens in a step
============  ==================================  ==================================
jax           `keras.distribution.DataParallel`   one SPMD program: the global batch
                                                  is sharded over the devices, the
                                                  variables are replicated, XLA
                                                  inserts the all-reduce.
tensorflow    `tf.distribute.MirroredStrategy`    each replica runs the step on
                                                  ``batch / replicas`` samples; Keras
                                                  scales every loss by
                                                  ``1 / replicas`` and sums the
                                                  gradients.
torch         none                                Keras 3's torch backend has no
                                                  `keras.distribution` support
                                                  (its ``distribution_lib`` is None)
                                                  and `fit` never wraps the model in
                                                  `DistributedDataParallel`; only a
                                                  hand-written loop can use DDP.
============  ==================================  ==================================

Under both engines the Distiller minimises exactly the single-device loss of
the global batch: the soft and hard terms are per-sample means with Keras's
``"sum_over_batch_size"`` reduction, which composes correctly with the
``1 / replicas`` scaling, and the ``hard_loss``/``soft_loss`` it logs are
unscaled like Keras's own ``loss``. Two caveats hold for any Keras model:
BatchNorm statistics are per replica under `MirroredStrategy` (global under
JAX), and the global batch must divide evenly by the number of devices.

Everything that owns variables (student, teacher model, `Distiller`, the soft
losses with their temperature variables, the optimizer) must be created inside
``scope()``; `fit`/`evaluate`/`predict` may run inside or outside it.

This module is a backend fence, like `keras_tfkd._backend`: picking and
driving each backend's own data-parallel engine is all it does, so its
backend branches (``keras.backend.backend()`` tests) and its lazy imports of
``jax``, ``tensorflow`` and ``torch`` live here, next to the table above,
instead of in `_backend`. The rest of the package (the CLI) reaches the
engines only through `get_distribution` and `Distribution.scope`.
"""

from __future__ import annotations

import contextlib
import weakref

import keras

__all__ = [
    "Distribution",
    "get_distribution",
    "list_devices",
    "simulate_cpu_devices",
    "DISTRIBUTIONS",
    "initialize",
    "process_count",
    "process_index",
    "process_shard",
    "gather_from_processes",
    "agreed_seed",
    "barrier",
    "check_fit_backend",
    "own_sharding",
    "mark_sharded",
    "predict",
    "whole_batches",
    "share_rows",
    "check_batch_share",
]

DISTRIBUTIONS = ("auto", "data_parallel", "single")

TORCH_UNSUPPORTED = (
    "Keras {version} on the torch backend has no data-parallel engine: "
    "`keras.distribution` is implemented for JAX (and partly TensorFlow) only, "
    "and `Model.fit` does not wrap the model in torch's DistributedDataParallel. "
    "Use the jax or tensorflow backend for multi-device training, or write a "
    "custom torch DDP loop around `Distiller.compute_loss`."
)


def _backend():
    return keras.backend.backend()


def list_devices(device_type=None):
    """The devices data parallelism would use, as ``"gpu:0"``-style strings.

    Accelerators if there are any, else CPUs (logical devices included, see
    `simulate_cpu_devices`). On torch: the CUDA devices, else ``["cpu:0"]``.
    """
    if _backend() == "torch":
        import torch

        if device_type in (None, "gpu") and torch.cuda.is_available():
            return [f"gpu:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu:0"]
    return list(keras.distribution.list_devices(device_type))


def simulate_cpu_devices(count):
    """Split the host CPU into `count` logical devices, to try data parallelism.

    Must run right after ``import keras``, before any tensor is created: JAX
    fixes its device list (``jax_num_cpu_devices``), and TensorFlow its
    logical devices, when the runtime starts. Returns the device list.

    >>> import keras  # doctest: +SKIP
    >>> simulate_cpu_devices(2)  # doctest: +SKIP
    ['cpu:0', 'cpu:1']
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` must be an integer >= 1, got count={count!r}.")
    backend = _backend()
    try:
        if backend == "jax":
            import jax

            jax.config.update("jax_num_cpu_devices", count)
        elif backend == "tensorflow":
            import tensorflow as tf

            cpu = tf.config.list_physical_devices("CPU")[0]
            config = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
            tf.config.set_logical_device_configuration(cpu, config)
        else:
            raise NotImplementedError(TORCH_UNSUPPORTED.format(version=keras.version()))
    except RuntimeError as error:
        raise RuntimeError(
            f"simulate_cpu_devices(count={count}) must be called before the "
            f"{backend} runtime starts (right after `import keras`, before any "
            f"tensor exists): {error}"
        ) from error
    return list_devices("cpu")


class Distribution:
    """A backend's data-parallel engine behind one interface.

    Attributes:
        name: ``"data_parallel"`` or ``"single"``.
        backend: the Keras backend it was made for.
        devices: the device strings it runs on.
        num_replicas: ``len(devices)``; the global batch is split this many ways.
        engine: the backend object itself: a `keras.distribution.DataParallel`
            on JAX, a `tf.distribute.MirroredStrategy` on TensorFlow, None for
            ``"single"`` (the backend's default placement, no scope at all).

    Use ``with dist.scope():`` around model creation, `compile` and `fit`.
    """

    def __init__(self, name, devices, engine=None):
        self.name = name
        self.backend = _backend()
        self.devices = list(devices)
        self.num_replicas = len(self.devices)
        self.engine = engine

    @contextlib.contextmanager
    def scope(self):
        """Context in which variables are created replicated and steps run split."""
        if self.engine is None:
            yield self
        else:
            with self.engine.scope():
                yield self

    def __repr__(self):
        return (
            f"Distribution(name={self.name!r}, backend={self.backend!r}, "
            f"devices={self.devices!r})"
        )


def _tf_device(device):
    kind, _, index = device.partition(":")
    return f"/{kind}:{index or 0}"


def get_distribution(name="auto", devices=None):
    """The right data-parallel scope for the current backend.

    Args:
        name: ``"data_parallel"`` (split every global batch over `devices`),
            ``"single"`` (the default device, a no-op scope) or ``"auto"``
            (``"data_parallel"`` when there are several devices and the
            backend supports it, else ``"single"``).
        devices: device strings such as ``["gpu:0", "gpu:1"]``; defaults to
            `list_devices()`.

    Returns:
        A `Distribution`; ``with dist.scope():`` builds, compiles and fits.

    Raises:
        NotImplementedError: ``"data_parallel"`` on the torch backend.

    Example:

    >>> dist = get_distribution("single")
    >>> with dist.scope():
    ...     model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    """
    if name not in DISTRIBUTIONS:
        raise ValueError(f"`name` must be one of {DISTRIBUTIONS}, got name={name!r}.")
    if devices is not None:
        if isinstance(devices, str) or not all(isinstance(d, str) for d in devices):
            raise ValueError(
                f"`devices` must be a list of device strings like 'gpu:0', got "
                f"devices={devices!r}."
            )
        if not devices:
            raise ValueError("`devices` is empty: give at least one device.")
    backend = _backend()
    if name == "auto":
        several = len(devices if devices is not None else list_devices()) > 1
        name = "data_parallel" if several and backend != "torch" else "single"
    if name == "data_parallel" and backend == "torch":
        raise NotImplementedError(TORCH_UNSUPPORTED.format(version=keras.version()))
    devices = list(devices) if devices is not None else list_devices()
    if name == "single":
        return Distribution("single", devices[:1], None)
    if backend == "jax":
        engine = keras.distribution.DataParallel(devices=devices)
    else:
        import tensorflow as tf

        engine = tf.distribute.MirroredStrategy([_tf_device(d) for d in devices])
    return Distribution("data_parallel", devices, engine)


# --------------------------------------------------------------------------
# Several processes (several hosts): JAX only
# --------------------------------------------------------------------------

MULTI_WORKER_UNSUPPORTED = (
    "keras-tfkd does not train under tf.distribute.{strategy} on TensorFlow: "
    "Keras {version}'s fit under a multi-worker strategy is broken "
    "(keras-team/keras#20585: the metrics' reduction of scalars fails). Train "
    "on several hosts with the jax backend (keras.distribution.initialize, "
    "see docs/several-machines.md), or on one host with MirroredStrategy "
    "(keras_tfkd.distribution.get_distribution)."
)
TORCH_MULTI_PROCESS_UNSUPPORTED = (
    "keras-tfkd cannot train in several torch processes{world}: Keras "
    "{version}'s fit on the torch "
    "backend has no multi-process engine (it never wraps the model in "
    "DistributedDataParallel), so every process would train its own copy. "
    "Use the jax backend for several hosts (docs/several-machines.md)."
)


def initialize(coordinator_address=None, num_processes=None, process_id=None):
    """Join a job of several processes (hosts) on the JAX backend.

    ``keras.distribution.initialize(coordinator_address, num_processes,
    process_id)``, which calls ``jax.distributed.initialize``; a None
    argument is read from Keras's ``KERAS_DISTRIBUTION_JOB_ADDRESSES``,
    ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID``
    (or found by JAX itself on a TPU slice or a cluster it knows). Call it
    first, before any array exists; then `get_distribution` spans the
    devices of every process. Returns `process_count`. Called again in the
    same job (the same or no arguments) it does nothing.

    Raises:
        NotImplementedError: on TensorFlow and PyTorch (see
            docs/several-machines.md for why).

    Example:

    >>> initialize("10.0.0.1:1234", num_processes=2, process_id=0)  # doctest: +SKIP
    2
    """
    backend = _backend()
    if backend == "tensorflow":
        raise NotImplementedError(
            MULTI_WORKER_UNSUPPORTED.format(
                strategy="MultiWorkerMirroredStrategy", version=keras.version()
            )
        )
    if backend == "torch":
        raise NotImplementedError(
            TORCH_MULTI_PROCESS_UNSUPPORTED.format(world="", version=keras.version())
        )
    for name, value in (("num_processes", num_processes), ("process_id", process_id)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise ValueError(f"`{name}` must be an integer >= 0, got {name}={value!r}.")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"`num_processes` must be >= 1, got {num_processes}.")
    if None not in (num_processes, process_id) and process_id >= num_processes:
        raise ValueError(
            f"`process_id` must be in [0, num_processes) = [0, {num_processes}), "
            f"got process_id={process_id}."
        )
    import jax

    if jax.distributed.is_initialized():  # joined already: the same job
        if num_processes not in (None, process_count()) or process_id not in (
            None,
            process_index(),
        ):
            raise ValueError(
                f"This process is process {process_index()} of a job of "
                f"{process_count()} already; it cannot join another "
                f"(num_processes={num_processes}, process_id={process_id})."
            )
        return process_count()
    keras.distribution.initialize(
        job_addresses=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return process_count()


def process_count():
    """The number of processes of this job: 1 unless JAX's distributed runtime
    is initialised (`initialize`) with several.

    Never starts a runtime: safe to call before `simulate_cpu_devices`.

    >>> process_count()
    1
    """
    if _backend() != "jax":
        return 1
    import jax

    if not jax.distributed.is_initialized():
        return 1
    return int(jax.process_count())


def process_index():
    """This process's id in ``[0, process_count())`` (0 for one process).

    >>> process_index()
    0
    """
    if process_count() == 1:
        return 0
    import jax

    return int(jax.process_index())


def process_shard():
    """``(index, count)``: this process's share of every global batch.

    The input pipelines (`keras_tfkd.data.pipeline`, the class-pair
    batches of CS-KD, `Distiller.fit` on arrays) cut each global batch of
    ``B`` rows into ``count`` contiguous slices of ``B / count`` and feed
    slice ``index``; JAX assembles the global batch from them in process
    order (``jax.make_array_from_process_local_data``), so the step sees
    the batch one process would.

    Inside `whole_batches` it is ``(0, 1)``: the pipelines built there
    yield whole batches on every process (for `predict`).

    >>> process_shard()
    (0, 1)
    """
    if _WHOLE_BATCHES:
        return 0, 1
    return process_index(), process_count()


def share_rows(size, shard):
    """The slice of a global batch of `size` rows that ``shard = (index,
    count)`` yields: rows ``index * b : (index + 1) * b``, ``b = size // count``.

    >>> share_rows(8, (1, 2))
    slice(4, 8, None)
    """
    index, count = shard
    local = size // count
    return slice(index * local, (index + 1) * local)


def check_batch_share(count, batch_size, examples, drop_remainder, what=None):
    """A ValueError unless `count` processes can share every batch evenly.

    Every global batch of `batch_size` rows of `examples` (the last one
    smaller unless `drop_remainder`) is cut into `count` equal shares, so
    `batch_size` and the last batch must be multiples of `count`. `what`
    names the data in the message; ``drop_remainder=None`` means the input
    has no such option (the message then says to drop the examples).
    Nothing is checked for one process.
    """
    if count == 1:
        return
    if batch_size % count:
        raise ValueError(
            f"batch_size={batch_size} is the global batch of {count} processes "
            f"and must be a multiple of {count} (each process feeds "
            f"batch_size / {count} rows of every batch)."
        )
    last = 0 if drop_remainder and examples >= batch_size else examples % batch_size
    if last % count:
        fix = (
            "choose a batch_size whose remainder is a multiple of "
            f"{count}, or drop those examples"
            if drop_remainder is None
            else "pass drop_remainder=True, or a batch_size whose remainder is "
            f"a multiple of {count}"
        )
        raise ValueError(
            f"The last batch of {what or 'the data'} holds {last} of its "
            f"{examples} examples ({examples} % batch_size={batch_size}), which "
            f"{count} processes cannot share evenly: {fix}."
        )


#: How deep inside `whole_batches` the code is (a list: one mutable cell).
_WHOLE_BATCHES = []


@contextlib.contextmanager
def whole_batches():
    """Inside, `process_shard` is ``(0, 1)`` in every process.

    The input pipelines built inside yield the whole of every batch on every
    process, as `predict` needs in a job of several processes (each process
    predicts everything). Without several processes it changes nothing.

    >>> with whole_batches():
    ...     process_shard()
    (0, 1)
    """
    _WHOLE_BATCHES.append(True)
    try:
        yield
    finally:
        _WHOLE_BATCHES.pop()


def gather_from_processes(values):
    """Every process's `values` (a small 1-D int64 array), stacked: ``(P, n)``.

    A collective: every process must call it, in the same order. With one
    process it is ``values[None]``.
    """
    import numpy as np

    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils

    # 64-bit integers travel as two 32-bit halves (JAX's default is 32 bits).
    halves = np.stack([values >> 32, values & 0xFFFFFFFF]).astype(np.int64)
    gathered = np.asarray(
        multihost_utils.process_allgather(halves.astype(np.uint32), tiled=False)
    ).astype(np.int64)
    return (gathered[:, 0] << 32) | gathered[:, 1]


def agreed_seed(seed=None):
    """`seed`, or (None) one drawn by process 0 and used by every process.

    The input pipelines of several processes must shuffle and augment alike:
    each cuts its share from the same global batch. A collective when
    ``process_count() > 1``; else `seed` as it is.
    """
    if seed is not None or process_count() == 1:
        return seed
    import numpy as np

    drawn = int(np.random.default_rng().integers(0, 2**62))
    return int(gather_from_processes([drawn])[0, 0])


def barrier(name):
    """Wait until every process of the job gets here (no-op for one process).

    Used where the other processes read a file process 0 has just written
    (a cached teacher). A collective: every process must call it.
    """
    if process_count() == 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def check_fit_backend():
    """Refuse the multi-process setups where Keras's `fit` cannot train.

    Raises a NotImplementedError under TensorFlow's multi-worker strategies
    (keras-team/keras#20585) and in a torch process group of several
    processes; nothing otherwise.
    """
    backend = _backend()
    if backend == "tensorflow":
        import sys

        tf = sys.modules.get("tensorflow")
        if tf is None or not tf.distribute.has_strategy():
            return
        strategy = tf.distribute.get_strategy()
        name = type(strategy).__name__
        several = (
            tf.distribute.MultiWorkerMirroredStrategy,
            tf.distribute.experimental.ParameterServerStrategy,
        )
        if isinstance(strategy, several) or "MultiWorker" in name:
            name = "MultiWorkerMirroredStrategy" if "Collective" in name else name
            raise NotImplementedError(
                MULTI_WORKER_UNSUPPORTED.format(strategy=name, version=keras.version())
            )
    elif backend == "torch":
        import sys

        torch = sys.modules.get("torch")
        dist = getattr(torch, "distributed", None)
        if (
            dist is not None
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            raise NotImplementedError(
                TORCH_MULTI_PROCESS_UNSUPPORTED.format(
                    world=f" (torch.distributed's world: {dist.get_world_size()})",
                    version=keras.version(),
                )
            )


#: ``id`` of every ``tf.data.Dataset`` that keras-tfkd built already cut to
#: this process's share (see `mark_sharded`).
_SHARDED = {}


def mark_sharded(dataset):
    """Record that `dataset` yields this process's share already (returns it).

    Keras's `DataParallel` cuts a ``tf.data.Dataset`` into per-process
    shares itself when ``auto_shard_dataset`` is True (its default); a
    dataset keras-tfkd has cut already must not be cut again (`own_sharding`).
    """
    import weakref

    key = id(dataset)
    try:
        _SHARDED[key] = weakref.ref(dataset, lambda _: _SHARDED.pop(key, None))
    except TypeError:  # pragma: no cover - not weakly referable
        _SHARDED[key] = lambda: dataset
    return dataset


def _is_marked(dataset):
    ref = _SHARDED.get(id(dataset))
    return ref is not None and ref() is dataset


@contextlib.contextmanager
def own_sharding(*datasets):
    """While Keras builds its input from `datasets`, keep it from re-sharding them.

    With several processes, a `keras.distribution.DataParallel` whose
    ``auto_shard_dataset`` is True (its default) cuts every
    ``tf.data.Dataset`` it is given into per-process shares and refuses any
    other input. The inputs keras-tfkd feeds are cut already (its pipelines,
    `mark_sharded`; the `keras.utils.PyDataset` batches of arrays; each
    process's own arrays), so for them the flag is turned off for the
    duration. A plain ``tf.data.Dataset`` of whole global batches is left to
    Keras; one beside an input cut already raises a ValueError instead of
    being fed whole by every process.
    """
    given = [d for d in datasets if d is not None]
    distribution = keras.distribution.distribution() if _backend() == "jax" else None
    auto = getattr(distribution, "auto_shard_dataset", False)
    if process_count() == 1 or not given or not auto:
        yield
        return
    keras_cuts = [d for d in given if hasattr(d, "element_spec") and not _is_marked(d)]
    if len(keras_cuts) == len(given):
        yield
        return
    if keras_cuts:
        raise ValueError(
            "fit got a tf.data.Dataset of whole global batches (which the "
            "distribution cuts into per-process shares itself) beside input "
            "that is already this process's share (a keras_tfkd.data.pipeline "
            "or arrays): build both with keras_tfkd.data.pipeline, or pass "
            "keras.distribution.DataParallel(auto_shard_dataset=False) and cut "
            "the dataset yourself."
        )
    distribution.auto_shard_dataset = False
    try:
        yield
    finally:
        distribution.auto_shard_dataset = True


#: model -> its local copy, for `predict` in a job of several processes.
_LOCAL_COPIES = weakref.WeakKeyDictionary()


def predict(model, x, **kwargs):
    """``model.predict(x, verbose=0, **kwargs)`` as a NumPy array, in any job.

    With one process it is exactly that. In a job of several processes
    Keras's `predict` cannot hand back its outputs (they span the devices of
    every process, which no process can fetch), so each process predicts
    the whole of `x` on its own with a copy of the model outside the
    distribution, holding the replicated weights (`get_weights` fetches
    them; the copy is made once per model and refreshed at every call).
    Every process then holds the same predictions, as one process would.
    `x` must then be the whole input: arrays, or a `keras_tfkd.data.pipeline`
    built inside `whole_batches`.

    >>> predict(model, x_test, batch_size=256).shape  # doctest: +SKIP
    (1000, 10)
    """
    import numpy as np

    kwargs.setdefault("verbose", 0)
    if process_count() == 1:
        return np.asarray(model.predict(x, **kwargs))
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        local = _LOCAL_COPIES.get(model)
        if local is None:
            local = keras.models.clone_model(model)
            _LOCAL_COPIES[model] = local
        local.set_weights(model.get_weights())
        return np.asarray(local.predict(x, **kwargs))
    finally:
        keras.distribution.set_distribution(current)
