"""The input pipeline in ``tf.data``: the fast path when TensorFlow is the backend.

`keras_tfkd.data.pipeline` builds it with ``engine="tf.data"`` (the default on
the TensorFlow backend). This is the one module of the data code that imports
TensorFlow. The augmentations are TensorFlow ops with the geometry and the
distributions of `keras_tfkd.data.augment` (the NumPy path): the same policies,
ranges and affine maps, nearest neighbour, zero fill. Randomness is drawn per
batch with stateless ops from seeds streamed by ``tf.data.Dataset.random``, so
a pipeline with a fixed ``seed`` yields the same batches every time it is
built, and fresh augmentation on each pass.
"""

from __future__ import annotations

import math

import numpy as np

from keras_tfkd._batches import EXAMPLE_INDEX_KEY, INPUTS_KEY, TEACHER_LOGITS_KEY
from keras_tfkd.data import augment as augment_lib

__all__ = ["build", "with_label_checks"]


def build(
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
):
    """A batched, prefetched ``tf.data.Dataset``; arguments checked by the caller.

    ``shard = (index, count)``: every global batch of `batch_size` is cut
    into `count` contiguous slices and slice `index` is yielded (one
    process's share, `keras_tfkd.distribution.process_shard`); the random
    augmentation is drawn for the whole global batch and sliced alike, so
    the shares put together are the batch of one process.
    """
    tf = tensorflow()
    autotune = tf.data.AUTOTUNE
    part, parts = int(shard[0]), int(shard[1])
    n = len(labels)
    indices = tf.data.Dataset.range(n)
    if shuffle:
        indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        indices = indices.repeat()
    labels = tf.constant(np.asarray(labels, dtype=np.int32))
    extras = [t for t in (teacher_logits, sample_weight) if t is not None]
    tables = [tf.constant(np.asarray(t, np.float32)) for t in extras]

    def label_of(idx):
        rows = [tf.gather(t, idx) for t in tables]
        if example_index:
            rows.append(tf.cast(idx, tf.int32))
        if not rows:
            return tf.gather(labels, idx)
        return (tf.gather(labels, idx), *rows)

    def share(batch):
        """This process's rows of a global batch (all of it for one process)."""
        if parts == 1:
            return batch
        local = tf.shape(batch)[0] // parts
        return batch[part * local : (part + 1) * local]

    if dataset.in_memory:
        images = tf.constant(dataset.images(split))

        def gather(idx):
            idx = share(idx)
            x = tf.cast(tf.gather(images, idx), tf.float32) / 255.0
            return x, label_of(idx)

        batches = indices.batch(batch_size, drop_remainder=drop_remainder)
        batches = batches.map(gather, num_parallel_calls=autotune)
    else:
        files = tf.constant(np.asarray(dataset.images(split), dtype=str))
        read = _make_file_reader(tf, dataset, policy)
        if policy == "imagenet":
            elements = tf.data.Dataset.zip((indices, _seed_stream(tf, seed, offset=1)))
        else:
            elements = indices.map(lambda idx: (idx, tf.zeros([2], tf.int64)))
        if parts > 1:
            # Cut every global batch before reading: each process decodes
            # only its own files (with the per-image seeds of one process).
            elements = elements.batch(batch_size, drop_remainder=drop_remainder)
            elements = elements.map(lambda idx, s: (share(idx), share(s)))
            elements = elements.unbatch()
        elements = elements.map(
            lambda idx, s: (
                read(tf.gather(files, idx), s if policy == "imagenet" else None),
                label_of(idx),
            ),
            num_parallel_calls=autotune,
        )
        local_batch = batch_size // parts
        batches = elements.batch(local_batch, drop_remainder=drop_remainder)
        batches = batches.map(lambda x, y: (x / 255.0, y), num_parallel_calls=autotune)

    augment_batch = _batch_augmentation(tf, dataset, policy)
    if augment_batch is not None:
        sizes = _global_sizes(tf, n, batch_size, drop_remainder, repeat)
        seeds = _seed_stream(tf, seed, offset=0)
        batches = tf.data.Dataset.zip((batches, seeds, sizes))
        batches = batches.map(
            lambda xy, s, total: (
                augment_batch(xy[0], s, _Share(part, parts, total)),
                xy[1],
            ),
            num_parallel_calls=autotune,
        )

    mean = tf.constant(dataset.mean, tf.float32)
    std = tf.constant(dataset.std, tf.float32)
    has_logits = teacher_logits is not None

    def finish(x, y):
        x = (x - mean) / std
        if not tables and not example_index:
            return x, y
        y, *rest = y
        if has_logits or example_index:
            x = {INPUTS_KEY: x}
            if has_logits:
                x[TEACHER_LOGITS_KEY] = rest.pop(0)
            if example_index:
                x[EXAMPLE_INDEX_KEY] = rest.pop()
        return (x, y, *rest)

    batches = batches.map(finish, num_parallel_calls=autotune)
    return batches.prefetch(autotune)


def _global_sizes(tf, n, batch_size, drop_remainder, repeat):
    """The size of every global batch, in order (what the random draws cover)."""
    rows = tf.data.Dataset.range(n)
    if repeat:
        rows = rows.repeat()
    rows = rows.batch(batch_size, drop_remainder=drop_remainder)
    return rows.map(lambda b: tf.shape(b)[0])


class _Share:
    """Which rows of a global batch's random draws belong to this batch.

    Every draw is made for `total` rows (the global batch) and rows
    ``part * local : (part + 1) * local`` are kept, ``local = total // parts``;
    one process (``parts == 1``) keeps them all.
    """

    def __init__(self, part, parts, total):
        self.total = total
        self.local = total // parts
        self.begin = part * self.local

    def take(self, draws):
        return draws[self.begin : self.begin + self.local]


def with_label_checks(dataset, num_classes):
    """A user's ``tf.data.Dataset`` whose labels are checked batch by batch.

    Integer labels outside ``[0, num_classes)`` raise in the input pipeline
    (used by `keras_tfkd.validation.check_fit_data`).
    """
    import tensorflow as tf

    def check(*batch):
        y = batch[1] if len(batch) > 1 else None
        if y is None:
            return batch
        if y.dtype.is_floating and (len(y.shape) < 2 or y.shape[-1] == 1):
            raise ValueError(
                f"The dataset yields labels of dtype {y.dtype.name}; class labels "
                "must be integers or one-hot rows."
            )
        checks = []
        if not y.dtype.is_floating and num_classes is not None:
            checks.append(
                tf.debugging.assert_less(
                    tf.cast(y, tf.int64),
                    tf.constant(num_classes, tf.int64),
                    message=f"labels must be in [0, {num_classes})",
                )
            )
            checks.append(
                tf.debugging.assert_non_negative(
                    tf.cast(y, tf.int64), message="labels must be >= 0"
                )
            )
        if not checks:
            return batch
        with tf.control_dependencies(checks):
            return tuple(tf.identity(t) if i == 1 else t for i, t in enumerate(batch))

    return dataset.map(check)


def tensorflow():
    """Import TensorFlow for tf.data; keep it off the GPUs of a JAX/torch run."""
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        try:  # tf.data runs on the CPU; without this TF grabs all GPU memory
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):  # GPUs already initialised: leave them
            pass
    return tf


def _seed_stream(tf, seed: int | None, offset: int):
    """An endless stream of int64 pairs, usable as stateless-op seeds."""
    stream_seed = None if seed is None else int(seed) * 2 + offset
    return tf.data.Dataset.random(
        seed=stream_seed, rerandomize_each_iteration=True
    ).batch(2)


def _transform(tf, images, transforms):
    """Apply one projective transform per image (nearest, zero fill)."""
    shape = tf.shape(images)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.cast(transforms, tf.float32),
        output_shape=shape[1:3],
        fill_value=tf.constant(0.0, tf.float32),
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )


def _random_shift(tf, images, seed, pad: int, share):
    """Zero-pad by ``pad`` then crop back at random: a shift in [-pad, pad]."""
    batch = tf.shape(images)[0]
    offsets = share.take(
        tf.random.stateless_uniform(
            [share.total, 2], seed=seed, minval=-pad, maxval=pad + 1, dtype=tf.int32
        )
    )
    offsets = tf.cast(offsets, tf.float32)
    ones = tf.ones([batch], tf.float32)
    zeros = tf.zeros([batch], tf.float32)
    # Output pixel (x, y) reads input pixel (x + dx, y + dy).
    transforms = tf.stack(
        [ones, zeros, offsets[:, 0], zeros, ones, offsets[:, 1], zeros, zeros], axis=1
    )
    return _transform(tf, images, transforms)


def _random_flip(tf, images, seed, share):
    flip = share.take(tf.random.stateless_uniform([share.total], seed=seed)) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def _random_rotation(tf, images, seed, degrees: float, share):
    angle = share.take(
        tf.random.stateless_uniform(
            [share.total], seed=seed, minval=-degrees, maxval=degrees
        )
    ) * (math.pi / 180.0)
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    zeros = tf.zeros_like(angle)
    transforms = tf.stack(
        [
            cos,
            -sin,
            cx - cos * cx + sin * cy,
            sin,
            cos,
            cy - sin * cx - cos * cy,
            zeros,
            zeros,
        ],
        axis=1,
    )
    return _transform(tf, images, transforms)


def _batch_augmentation(tf, dataset, policy: str):
    """A function ``(images in [0, 1], seed, share) -> images``, or None.

    `share` (a `_Share`) says which rows of the global batch's draws these
    images are.
    """
    if policy == "none":
        return None
    if policy == "imagenet":

        def imagenet(images, seed, share):
            return _random_flip(tf, images, seed, share)

        return imagenet
    if policy == "shift":
        pad = augment_lib.shift_pad(dataset.input_shape[0])

        def shift(images, seed, share):
            return _random_shift(tf, images, seed, pad, share)

        return shift
    if policy == "cifar":

        def cifar(images, seed, share):
            seeds = tf.random.experimental.stateless_split(seed, 3)
            images = _random_shift(tf, images, seeds[0], augment_lib.CIFAR_PAD, share)
            images = _random_flip(tf, images, seeds[1], share)
            return _random_rotation(
                tf, images, seeds[2], augment_lib.CIFAR_DEGREES, share
            )

        return cifar
    if policy == "tiny_imagenet":

        def tiny(images, seed, share):
            seeds = tf.random.experimental.stateless_split(seed, 2)
            degrees = augment_lib.TINY_IMAGENET_DEGREES
            images = _random_rotation(tf, images, seeds[0], degrees, share)
            return _random_flip(tf, images, seeds[1], share)

        return tiny
    raise ValueError(f"Unknown augmentation {policy!r}")


def _make_file_reader(tf, dataset, policy: str):
    """A function ``(path, seed or None) -> float32 HWC image in [0, 255]``."""
    height, width, _ = dataset.input_shape

    def decode(path):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=3, expand_animations=False
        )
        image.set_shape([None, None, 3])
        return image

    if dataset.name != "imagenet":

        def read(path, seed):
            image = tf.cast(decode(path), tf.float32)
            same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
            image = tf.cond(
                same,
                lambda: image,
                lambda: tf.image.resize(image, [height, width], antialias=True),
            )
            image.set_shape([height, width, 3])
            return image

        return read

    resize = dataset.eval_resize or 256

    def random_resized_crop(image, seed):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.zeros([1, 0, 4]),
            seed=seed,
            min_object_covered=0.08,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        crop = tf.slice(image, begin, size)
        return tf.image.resize(crop, [height, width], antialias=True)

    def resize_centre_crop(image):
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = float(resize) / tf.reduce_min(shape)
        new = tf.cast(tf.round(shape * scale), tf.int32)
        image = tf.image.resize(image, new, antialias=True)
        return tf.image.resize_with_crop_or_pad(image, height, width)

    def read(path, seed):
        image = decode(path)
        if policy == "imagenet":
            image = random_resized_crop(image, seed)
        else:
            image = resize_centre_crop(image)
        image = tf.clip_by_value(image, 0.0, 255.0)
        image.set_shape([height, width, 3])
        return image

    return read
