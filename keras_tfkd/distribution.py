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

import keras

__all__ = [
    "Distribution",
    "get_distribution",
    "list_devices",
    "simulate_cpu_devices",
    "DISTRIBUTIONS",
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
