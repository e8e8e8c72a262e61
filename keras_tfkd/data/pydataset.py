"""The input pipeline as a `keras.utils.PyDataset`: NumPy only, every backend.

`keras_tfkd.data.pipeline` returns a `BatchPipeline` unless it picks
``tf.data`` (see its docstring). Batches are pure functions of ``(seed, pass,
batch index)``: the order of pass ``e`` is a permutation drawn from
``SeedSequence(seed, spawn_key=(e,))`` and the augmentation of batch ``b`` from
``SeedSequence(seed, spawn_key=(e, b))``. So a pipeline built with the same
seed yields the same batches, each pass (epoch) is shuffled and augmented
anew, and batches can be read in any order or by several worker threads.
"""

from __future__ import annotations

import itertools
import os

import keras
import numpy as np

from keras_tfkd import distribution
from keras_tfkd._batches import (
    EXAMPLE_INDEX_KEY,
    INPUTS_KEY,
    TEACHER_LOGITS_KEY,
    num_batches,
)
from keras_tfkd.data import augment as augment_lib

__all__ = ["BatchPipeline"]

_ORDER, _AUGMENT, _FILES = 0, 1, 2


def _entropy(seed):
    if seed is None:
        return np.random.SeedSequence().entropy
    return int(seed) % (1 << 64)


class BatchPipeline(keras.utils.PyDataset):
    """Batches ``(x, y)``, ``(x, y, w)`` or ``({"inputs", "teacher_logits"}, y)``.

    Build it with `keras_tfkd.data.pipeline`; the arguments are the same.
    ``len(pipeline)`` is the number of batches of one pass; with
    ``repeat=True`` it is endless (`num_batches` is None) and ``fit`` needs
    ``steps_per_epoch``. `on_epoch_end` (Keras calls it after every epoch)
    starts the next pass once a batch of the current one has been read, and a
    new ``iter(pipeline)`` is a new pass, as a new iterator of a ``tf.data``
    pipeline is. Folder data sets are decoded with PIL
    by ``workers`` threads (default: the CPU count, at most 8); in-memory sets
    are cut in the calling thread (one NumPy gather, microseconds a batch).

    Example:
        >>> from keras_tfkd import data
        >>> train = data.pipeline("digits", "train", 64, seed=0, engine="numpy")
        >>> x, y = train[0]
        >>> x.shape, y.shape, len(train)
        ((64, 8, 8, 1), (64,), 22)
    """

    #: Read by `keras_tfkd.Distiller.fit`, which then leaves the batch order
    #: alone (``shuffle=False``): the order is already shuffled, seeded.
    shuffles_itself = True

    def __init__(
        self,
        dataset,
        split,
        batch_size,
        *,
        policy,
        shuffle,
        seed,
        drop_remainder,
        repeat,
        labels,
        teacher_logits=None,
        sample_weight=None,
        example_index=False,
        shard=(0, 1),
        workers=None,
    ):
        if workers is None:
            workers = 1 if dataset.in_memory else min(8, os.cpu_count() or 1)
        super().__init__(workers=int(workers), use_multiprocessing=False)
        self.dataset = dataset
        self.split = split
        self.policy = policy
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.repeat = bool(repeat)
        self._entropy = _entropy(seed)
        self._images = dataset.images(split)
        self._labels = np.asarray(labels, dtype=np.int32)
        self._logits = teacher_logits
        self._weights = sample_weight
        self._example_index = bool(example_index)
        #: ``(index, count)``: the slice of every global batch this process
        #: yields (`keras_tfkd.distribution.process_shard`).
        self.shard = (int(shard[0]), int(shard[1]))
        n = len(self._labels)
        self._per_pass = num_batches(n, self.batch_size, drop_remainder)
        self._n = n
        self._mean = np.asarray(dataset.mean, np.float32)
        self._std = np.asarray(dataset.std, np.float32)
        self._orders = {}
        #: The pass (epoch) that the next batches belong to.
        self.epoch = 0
        self._read_any = False

    @property
    def example_index(self):
        """Whether the batches carry each example's row (``example_index=True``)."""
        return self._example_index

    @property
    def labels(self):
        """The int32 labels of the split, in the data set's order."""
        return self._labels

    # -------------------------------------------------------- PyDataset API
    def __len__(self):
        return self._per_pass

    @property
    def num_batches(self):
        return None if self.repeat else self._per_pass

    def on_epoch_end(self):
        # Keras also calls this when `fit` starts, before any batch is read:
        # only a pass that was read ends, so the first epoch is pass 0.
        if self._read_any:
            self.epoch += 1
            self._read_any = False

    def __getitem__(self, index):
        index = int(index)
        if self.repeat:
            return self.batch(*divmod(index, self._per_pass))
        if not 0 <= index < self._per_pass:
            raise IndexError(f"batch {index} out of range: {self._per_pass} per pass")
        self._read_any = True
        return self.batch(self.epoch, index)

    def __iter__(self):
        """A new pass, as a new iterator of a ``tf.data.Dataset`` is."""
        epoch = self.epoch
        self.epoch += 1
        if self.repeat:
            return (self[i] for i in itertools.count(epoch * self._per_pass))
        return (self.batch(epoch, b) for b in range(self._per_pass))

    def batch(self, epoch, index):
        """Batch ``index`` of pass ``epoch`` (both from 0)."""
        start = index * self.batch_size
        idx = self._order(epoch)[start : start + self.batch_size]
        rows = distribution.share_rows(len(idx), self.shard)
        idx = idx[rows]
        images = self._read(idx, epoch, index)
        if self.policy != "none":
            # Drawn for the whole global batch, then this process's rows: the
            # processes together apply what one process would.
            rng = self._rng(epoch, index, _AUGMENT)
            size = (rows.stop - rows.start) * self.shard[1]
            params = augment_lib.sample(self.policy, rng, size, images.shape[1:3])
            params = {key: value[rows] for key, value in params.items()}
            images = augment_lib.apply(self.policy, images, params)
        x = (images.astype(np.float32) / 255.0 - self._mean) / self._std
        y = self._labels[idx]
        if self._logits is not None or self._example_index:
            x = {INPUTS_KEY: x}
            if self._logits is not None:
                x[TEACHER_LOGITS_KEY] = self._logits[idx]
            if self._example_index:
                x[EXAMPLE_INDEX_KEY] = np.asarray(idx, dtype=np.int32)
        if self._weights is not None:
            return x, y, self._weights[idx]
        return x, y

    # ------------------------------------------------------------- helpers

    def _rng(self, epoch, batch, kind):
        seq = np.random.SeedSequence(self._entropy, spawn_key=(epoch, batch, kind))
        return np.random.default_rng(seq)

    def _order(self, epoch):
        if not self.shuffle:
            return np.arange(self._n)
        order = self._orders.get(epoch)
        if order is None:
            seq = np.random.SeedSequence(self._entropy, spawn_key=(epoch, _ORDER))
            order = np.random.default_rng(seq).permutation(self._n)
            self._orders = {epoch: order}  # keep one pass: threads read it
        return order

    def _read(self, idx, epoch, batch):
        if self.dataset.in_memory:
            return self._images[idx]
        height, width = self.dataset.input_shape[:2]
        files = self._images[idx]
        if self.dataset.name != "imagenet":
            return np.stack([augment_lib.read_image(f, (height, width)) for f in files])
        if self.policy == "imagenet":
            rng = self._rng(epoch, batch, _FILES)
            return np.stack(
                [
                    augment_lib.random_resized_crop(
                        augment_lib.read_image(f), rng, (height, width)
                    )
                    for f in files
                ]
            )
        resize = self.dataset.eval_resize or 256
        return np.stack(
            [
                augment_lib.resize_centre_crop(
                    augment_lib.read_image(f), resize, (height, width)
                )
                for f in files
            ]
        )
