"""Per-example state laid out by rows over the devices (JAX), and its saving.

PS-KD's store (`keras_tfkd.online.PastPredictions`) holds one row per
training example: ``N x K`` floats, 5.1 GB for ImageNet-1k in float32.
Replicated, every device holds all of it. With ``shard_rows=True`` the store
is created with a `keras.distribution.TensorLayout` that splits its rows
over the data-parallel axis of the current `keras.distribution`
(``DataParallel``'s ``"batch"`` axis, or ``ModelParallel``'s
``batch_dim_name``): each of ``D`` devices holds ``ceil(N / D)`` rows. The
rows are padded to a multiple of ``D`` (a `jax.sharding.NamedSharding`
needs equal shares); the padding rows are never read or written.

The train step needs no change: XLA's SPMD partitioner turns a read of rows
by *traced* indices (``ops.take``) into a local masked gather plus an
all-reduce of the ``B x K`` result, and a write (``ops.scatter_update``)
into an all-gather of the ``B`` indices and ``B x K`` rows plus a local
scatter into each device's share; the ``N x K`` table is never gathered
(``tests/test_sharded_store.py`` reads the compiled HLO). (jax#23052
reports the table all-gathered for indices known at compile time; with JAX
0.10.2 constant indices compiled the same way, and the step's indices come
from the batch anyway.)

Saving and loading (`fetch_rows`, `assign_rows_from_host`): an array that
spans the devices of several processes cannot be fetched whole by one
process, so `fetch_rows` gathers it on every process
(``multihost_utils.process_allgather``, a collective every process joins:
Keras's ``save_weights`` runs on every process, see `keras_tfkd._io`), and
loading puts on each device only its own rows of the host array.

A backend fence, like `keras_tfkd._backend`: TensorFlow and PyTorch have no
layouts. There ``shard_rows=True`` changes nothing where one device holds
the store (no strategy, one replica, any PyTorch ``fit``) and is refused
under a TensorFlow strategy of several replicas, whose every replica keeps
a whole copy.
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["row_layout", "fetch_rows", "assign_rows_from_host", "is_split"]

TF_REFUSAL = (
    "PastPredictions(shard_rows=True) lays the store out by rows over the "
    "devices of a JAX keras.distribution; TensorFlow's {strategy} keeps a whole "
    "copy on each of its {replicas} replicas and has no such layout. Use the "
    "jax backend, or shard_rows=False (and store_dtype='bfloat16' to halve "
    "the copies)."
)


def row_layout(rows, refuse=True):
    """``(layout, padded_rows)`` for a store of `rows` rows split by rows.

    `layout` is a `keras.distribution.TensorLayout` over the current
    distribution's data-parallel axis, `padded_rows` `rows` rounded up to a
    multiple of that axis's size. ``(None, rows)`` where there is nothing
    to split over: no distribution, an axis of one device, PyTorch, or
    TensorFlow with one replica. Under a TensorFlow strategy of several
    replicas: a ValueError if `refuse`, else ``(None, rows)``.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.distribute.has_strategy():
            strategy = tf.distribute.get_strategy()
            if refuse and strategy.num_replicas_in_sync > 1:
                raise ValueError(
                    TF_REFUSAL.format(
                        strategy=type(strategy).__name__,
                        replicas=strategy.num_replicas_in_sync,
                    )
                )
        return None, rows
    if backend != "jax":
        return None, rows
    current = keras.distribution.distribution()
    mesh = getattr(current, "device_mesh", None)
    axis = getattr(current, "batch_dim_name", None)
    if mesh is None or axis not in mesh.axis_names:
        return None, rows
    size = int(mesh.shape[list(mesh.axis_names).index(axis)])
    if size == 1:
        return None, rows
    padded = -(-rows // size) * size
    return keras.distribution.TensorLayout([axis, None], mesh), padded


def is_split(variable):
    """True if `variable`'s value is split over devices (JAX, any sharding
    but a fully replicated one); False on one device and on other backends."""
    if keras.backend.backend() != "jax":
        return False
    sharding = getattr(variable.value, "sharding", None)
    return sharding is not None and not sharding.is_fully_replicated


def fetch_rows(variable):
    """`variable`'s whole value as a NumPy array, in every process.

    An array split over the devices of several processes is gathered
    (``process_allgather``, tiled: a collective every process must join);
    one this process can address whole is simply fetched.
    """
    value = variable.value
    if keras.backend.backend() == "jax" and not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(keras.ops.convert_to_numpy(value))


def assign_rows_from_host(variable, array):
    """Give `variable` (possibly split over the devices of several processes)
    the value of the host `array` (the same in every process).

    On JAX each device gets only its own rows (`jax.make_array_from_callback`
    on the variable's sharding), so no device ever holds the whole array.
    Elsewhere it is ``variable.assign(array)``.
    """
    array = np.asarray(array, dtype=variable.dtype)
    if keras.backend.backend() != "jax" or not is_split(variable):
        variable.assign(array)
        return
    import jax

    sharding = variable.value.sharding
    value = jax.make_array_from_callback(
        array.shape, sharding, lambda index: array[index]
    )
    variable.assign(value)
