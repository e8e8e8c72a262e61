"""`Distiller.fit` on arrays in a job of several processes: each feeds its share.

With one process nothing here changes anything. With several (a JAX job on
several hosts, `keras_tfkd.distribution.initialize`) Keras's JAX trainer
takes every process's batch as that process's *share* of the global batch
(``jax.make_array_from_process_local_data``). `shard_fit_data` decides what
arrays handed to `fit` mean:

* the **same arrays on every process** (checked: their shapes and a hash of
  their bytes are compared across processes) are the whole training set:
  ``batch_size`` is the global batch, and every process is fed its
  contiguous slice of each global batch by an `ArrayShards` (a
  ``keras.utils.PyDataset``); the shuffle is drawn from a seed all processes
  share. The processes together train on the batches of
  ``fit(x, y, batch_size=B)`` in one process.
* **different arrays** are each process's own rows (as Keras takes them):
  ``batch_size`` is still the global batch, so each process batches its rows
  by ``batch_size / P``; the processes must hold as many rows each. A
  teacher keyed by example (PS-KD's store, CS-KD's partners) cannot work
  from rows whose global position is unknown: `fit` refuses it before any
  step (`check_per_process_rows`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math

import keras
import numpy as np

from keras_tfkd import distribution
from keras_tfkd._batches import EXAMPLE_INDEX_KEY, INPUTS_KEY, is_packed

__all__ = [
    "ArrayShards",
    "evaluate_data",
    "own_sharding",
    "arrays_are_global",
    "check_per_process_rows",
    "prepare",
    "shard_evaluate_data",
    "shard_fit_data",
]


def _leaves(x):
    return [leaf for leaf in keras.tree.flatten(x) if leaf is not None]


def _is_arrays(x):
    leaves = _leaves(x)
    return bool(leaves) and all(
        hasattr(leaf, "shape")
        and hasattr(leaf, "dtype")
        and not hasattr(leaf, "element_spec")
        for leaf in leaves
    )


def _fingerprint(*structures):
    """Rows and a 62-bit hash of the bytes of every array in `structures`."""
    digest = hashlib.blake2b(digest_size=8)
    rows = -1
    for structure in structures:
        for leaf in _leaves(structure):
            array = np.ascontiguousarray(keras.ops.convert_to_numpy(leaf))
            rows = int(array.shape[0]) if rows < 0 else rows
            digest.update(str((array.shape, array.dtype.str)).encode())
            digest.update(memoryview(array).cast("B"))
    return rows, int.from_bytes(digest.digest(), "little") >> 2


def arrays_are_global(x, y, sample_weight=None):
    """``(same, rows)``: whether every process holds the same arrays, and the
    rows of each process (a list). A collective: every process calls it."""
    rows, digest = _fingerprint(x, y, sample_weight)
    gathered = distribution.gather_from_processes([rows, digest])
    same = bool(np.all(gathered == gathered[0]))
    return same, [int(r) for r in gathered[:, 0]]


class ArrayShards(keras.utils.PyDataset):
    """This process's share of every global batch of arrays given whole.

    Pass ``e`` orders the N rows by a permutation drawn from
    ``SeedSequence(seed, spawn_key=(e,))`` (or keeps them in order with
    ``shuffle=False``) and cuts it into global batches of `batch_size`;
    process ``index`` of ``count`` gets rows ``index * b : (index + 1) * b``
    of each, ``b = len(batch) / count``. Every process builds the same
    `ArrayShards` (the same arrays and seed), so the shares put together are
    the batches of one process.

    Example:

    >>> x, y = np.arange(8.0)[:, None], np.arange(8)
    >>> shards = ArrayShards(x, y, batch_size=4, shuffle=False, shard=(1, 2))
    >>> shards[0][1].tolist(), len(shards)
    ([2, 3], 2)
    """

    #: Read by `Distiller.fit`: the order is already shuffled, seeded.
    shuffles_itself = True

    def __init__(
        self,
        x,
        y=None,
        sample_weight=None,
        *,
        batch_size=32,
        shuffle=True,
        seed=0,
        shard=(0, 1),
        epoch=0,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        self._x, self._y, self._w = x, y, sample_weight
        self._n = int(_leaves(x)[0].shape[0])
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self._seed = int(seed)
        self.shard = (int(shard[0]), int(shard[1]))
        distribution.check_batch_share(
            self.shard[1], self.batch_size, self._n, None, what="the arrays"
        )
        self._batches = max(1, math.ceil(self._n / self.batch_size))
        #: The pass (epoch) that the next batches belong to.
        self.epoch = int(epoch)
        self._read_any = False
        self._orders = {}

    def __len__(self):
        return self._batches

    def on_epoch_end(self):
        if self._read_any:
            self.epoch += 1
            self._read_any = False

    def _order(self, epoch):
        if not self.shuffle:
            return np.arange(self._n)
        order = self._orders.get(epoch)
        if order is None:
            seq = np.random.SeedSequence(self._seed, spawn_key=(epoch,))
            order = np.random.default_rng(seq).permutation(self._n)
            self._orders = {epoch: order}
        return order

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < self._batches:
            raise IndexError(f"batch {index} out of range: {self._batches} per pass")
        self._read_any = True
        return self.batch(self.epoch, index)

    def batch(self, epoch, index):
        """Batch `index` of pass `epoch`: this process's rows of it."""
        start = index * self.batch_size
        rows = self._order(epoch)[start : start + self.batch_size]
        rows = rows[distribution.share_rows(len(rows), self.shard)]

        def take(structure):
            return keras.tree.map_structure(
                lambda a: None if a is None else np.asarray(a)[rows], structure
            )

        batch = (take(self._x), take(self._y))
        if self._w is not None:
            batch = (*batch, take(self._w))
        return batch


def check_per_process_rows(distiller, x):
    """Refuse per-process rows for a teacher that keys its state by example.

    PS-KD's store (and CS-KD's partners) need every example's row in the
    whole training set; arrays that differ between processes carry only
    local positions. Raises a ValueError naming the fixes.
    """
    for teacher in distiller.hooked_teachers:
        name = type(teacher).__name__
        if getattr(teacher, "requires_example_index", False):
            given = is_packed(x) and EXAMPLE_INDEX_KEY in x
            if given and getattr(teacher, "num_examples", None) is not None:
                continue
            what = (
                "give num_examples= (the size of the whole training set) to "
                "the teacher, "
                if given
                else "pack each row's index in the whole training set, "
                f'{{"{INPUTS_KEY}": x, "{EXAMPLE_INDEX_KEY}": global_rows}}, '
            )
            raise ValueError(
                f"{name} keys its state by each example's row in the whole "
                "training set, but the processes of this job were given "
                "different arrays (each its own rows), whose positions are "
                "local: the processes would overwrite each other's rows. Give "
                "every process the same, whole arrays (keras-tfkd then feeds "
                "each its share of every batch), use keras_tfkd.data.pipeline"
                f"(..., example_index=True) on every process, or {what}"
                "before calling fit."
            )
        if getattr(teacher, "needs_whole_training_set", False):
            raise ValueError(
                f"{name} draws each example's partner among the whole training "
                "set, but the processes of this job were given different "
                "arrays (each its own rows). Give every process the same, "
                "whole arrays (keras-tfkd then feeds each its share of every "
                "batch), or build ClassPairBatches(x, y, batch_size) from the "
                "whole arrays on every process."
            )


def prepare(distiller, x, y, fit_kwargs):
    """What the arrays given to `fit` are, in a job of several processes.

    Returns True (the same arrays on every process: the whole training set),
    False (each process's own rows; checked: as many on each, and no teacher
    that keys its state by example) or None (one process, or not arrays).
    Called by `Distiller.fit` before its teachers see the data; a
    collective when there are several processes.
    """
    distribution.check_fit_backend()
    if distribution.process_count() == 1 or not _is_arrays(x):
        return None
    same, rows = arrays_are_global(x, y, fit_kwargs.get("sample_weight"))
    if same:
        return True
    if len(set(rows)) > 1:
        raise ValueError(
            "The processes of this job were given arrays of different lengths "
            f"({rows} rows, in process order). Give every process the same, "
            "whole arrays (keras-tfkd feeds each its share of every batch), or "
            "as many rows each (each process's own share), so that all take "
            "the same number of steps."
        )
    check_per_process_rows(distiller, x)
    return False


def shard_fit_data(x, y, fit_kwargs, *, arrays_global):
    """``(x, y, fit_kwargs)`` for `fit` in a job of several processes.

    `arrays_global` is what `prepare` found. Global arrays (and array
    `validation_data` beside them) become `ArrayShards` (batch_size global,
    shuffled alike); per-process arrays are batched by ``batch_size / P``.
    Anything else passes unchanged.
    """
    _, count = distribution.process_shard()
    if count == 1 or arrays_global is None:
        return x, y, fit_kwargs
    batch_size = fit_kwargs.get("batch_size") or 32
    # Only the batch size is checked here (the batches are cut below).
    distribution.check_batch_share(count, batch_size, batch_size, True)
    if not arrays_global:
        fit_kwargs["batch_size"] = batch_size // count
        return x, y, fit_kwargs
    if _is_arrays(x):
        x, y, fit_kwargs = _shard_training_arrays(x, y, fit_kwargs, batch_size)
    validation = fit_kwargs.get("validation_data")
    if isinstance(validation, (tuple, list)) and _is_arrays(list(validation)):
        vx, vy, *vw = validation
        fit_kwargs["validation_data"] = ArrayShards(
            vx,
            vy,
            vw[0] if vw else None,
            batch_size=fit_kwargs.pop("validation_batch_size", None) or batch_size,
            shuffle=False,
            shard=distribution.process_shard(),
        )
    return x, y, fit_kwargs


#: Keep Keras's DataParallel from cutting inputs keras-tfkd has cut already.
own_sharding = distribution.own_sharding


@contextlib.contextmanager
def evaluate_data(x, y, kwargs, args=()):
    """`evaluate`'s ``(x, y, kwargs)``, inside `own_sharding`: arrays that are
    the same on every process become `ArrayShards` (each its share)."""
    x, y, kwargs = shard_evaluate_data(x, y, kwargs, args)
    with own_sharding(x):
        yield x, y, kwargs


def shard_evaluate_data(x, y, kwargs, args=()):
    """`evaluate`'s arrays, the same on every process, as `ArrayShards`."""
    if args or distribution.process_count() == 1 or not _is_arrays(x):
        return x, y, kwargs
    same, _ = arrays_are_global(x, y, kwargs.get("sample_weight"))
    if not same:
        return x, y, kwargs
    shards = ArrayShards(
        x,
        y,
        kwargs.pop("sample_weight", None),
        batch_size=kwargs.pop("batch_size", None) or 32,
        shuffle=False,
        shard=distribution.process_shard(),
    )
    return shards, None, kwargs


def _shard_training_arrays(x, y, fit_kwargs, batch_size):
    weights = fit_kwargs.pop("sample_weight", None)
    split = fit_kwargs.pop("validation_split", None)
    if split and fit_kwargs.get("validation_data") is None:
        n = int(_leaves(x)[0].shape[0])
        cut = int(math.floor(n * (1.0 - split)))

        def head(s):
            return keras.tree.map_structure(lambda a: a[:cut], s)

        def tail(s):
            return keras.tree.map_structure(lambda a: a[cut:], s)

        validation = (tail(x), tail(y))
        if weights is not None:
            validation = (*validation, tail(weights))
            weights = head(weights)
        fit_kwargs["validation_data"] = validation
        x, y = head(x), head(y)
    fit_kwargs.pop("batch_size", None)
    shards = ArrayShards(
        x,
        y,
        weights,
        batch_size=batch_size,
        shuffle=fit_kwargs.pop("shuffle", True) is not False,
        seed=distribution.agreed_seed(None),
        shard=distribution.process_shard(),
        epoch=int(fit_kwargs.get("initial_epoch") or 0),
    )
    return shards, None, fit_kwargs
