"""`pipeline`: batches of a data set for ``model.fit``, on every Keras backend.

:func:`pipeline` turns a split into batches of ``(float32 normalised images,
int32 labels)`` with the reference augmentation. On JAX and PyTorch it is a
``keras.utils.PyDataset`` built on NumPy (`keras_tfkd.data.pydataset`), so
TensorFlow is not needed; on the TensorFlow backend it is a ``tf.data``
pipeline (`keras_tfkd.data._tfdata`). ``engine=`` picks one explicitly
(`pipeline_engine`). This module checks the arguments, resolves the
augmentation policy and hands the engine its options; the engines build the
batches.

Reference augmentation (``augment=None`` on the train split; see
:data:`AUGMENTATIONS`; the ops are in `keras_tfkd.data.augment` and
`keras_tfkd.data._tfdata`):

- CIFAR-10/100 (``"cifar"``): 4-pixel zero padding + random 32x32 crop,
  horizontal flip, random rotation in [-15, 15] degrees (nearest neighbour,
  black fill), as the reference ``RandomCrop(32, 4)``, ``RandomHorizontalFlip``,
  ``RandomRotation(15)``; then normalisation with the CIFAR-100 mean/std (used
  for CIFAR-10 too, as in the reference code).
- Tiny-ImageNet (``"tiny_imagenet"``): rotation in [-20, 20] degrees, flip.
- digits / Fashion-MNIST (``"shift"``): a random shift by up to 1 pixel
  (digits, 8x8) or 2 pixels (Fashion-MNIST, 28x28) with zero fill, the same
  pad-and-crop as CIFAR. No flips (they change digits, and every shoe in
  Fashion-MNIST points the same way).
- ImageNet (``"imagenet"``): random-resized crop to 224 (area 8-100%, aspect
  3/4-4/3) + flip; evaluation resizes the short side to 256 and centre-crops 224.

Randomness is seeded: a pipeline with a fixed ``seed`` yields the same
batches every time it is built, and fresh augmentation on each pass.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from keras_tfkd._batches import num_batches  # noqa: F401 (public here)
from keras_tfkd._input_checks import check_sample_weight
from keras_tfkd.data.dataset import Dataset, _split
from keras_tfkd.data.loaders import load

__all__ = [
    "AUGMENTATIONS",
    "ENGINES",
    "augmentation_is_random",
    "num_batches",
    "pipeline",
    "pipeline_engine",
    "pipeline_throughput",
    "reference_augmentation",
]

#: Augmentation policies understood by :func:`pipeline`.
AUGMENTATIONS = ("none", "shift", "cifar", "tiny_imagenet", "imagenet")
_REFERENCE_AUGMENTATION = {
    "digits": "shift",
    "fashion_mnist": "shift",
    "cifar10": "cifar",
    "cifar100": "cifar",
    "tiny_imagenet": "tiny_imagenet",
    "imagenet": "imagenet",
}


def reference_augmentation(dataset: Dataset | str) -> str:
    """The name of the reference augmentation policy of a data set
    (``"none"`` for a set of your own, `keras_tfkd.data.from_arrays`).

    Example:
        >>> reference_augmentation("cifar10")
        'cifar'
    """
    name = dataset.name if isinstance(dataset, Dataset) else str(dataset)
    return _REFERENCE_AUGMENTATION.get(name.lower().replace("-", "_"), "none")


def augmentation_is_random(
    dataset: Dataset | str, split: str = "train", augment: bool | str | None = None
) -> bool:
    """Whether :func:`pipeline` with these arguments augments at random.

    Use it to refuse caching model outputs (e.g. teacher logits) on data that
    changes every epoch. ImageNet's evaluation resize + centre crop is
    deterministic and does not count as random.

    Example:
        >>> augmentation_is_random("cifar100", "train")
        True
        >>> augmentation_is_random("cifar100", "test")
        False
        >>> augmentation_is_random("cifar100", "train", augment=False)
        False
    """
    return _resolve_augmentation(dataset, _split(split), augment) != "none"


#: Values of `pipeline`'s ``engine``.
ENGINES = ("auto", "numpy", "tf.data")


def pipeline_engine(engine: str = "auto") -> str:
    """The engine that `pipeline` runs for ``engine`` on this Keras backend.

    ``"auto"`` is ``"tf.data"`` on the TensorFlow backend (TensorFlow is then
    installed and ``fit`` consumes a ``tf.data.Dataset`` natively) and
    ``"numpy"`` on JAX and PyTorch, which then need no TensorFlow at all.

    Example:
        >>> pipeline_engine("numpy")
        'numpy'
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}; got {engine!r}")
    if engine != "auto":
        return engine
    import keras

    return "tf.data" if keras.backend.backend() == "tensorflow" else "numpy"


def pipeline(
    dataset: Dataset | str,
    split: str,
    batch_size: int,
    *,
    augment: bool | str | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    drop_remainder: bool = False,
    repeat: bool = False,
    teacher_logits: Any = None,
    sample_weight: Any = None,
    example_index: bool = False,
    engine: str = "auto",
    workers: int | None = None,
):
    """Batches of ``(x, y)`` for ``model.fit``, on every Keras backend.

    ``x`` is float32 ``(B, H, W, C)``, scaled to [0, 1] then normalised with
    the data set's per-channel ``mean``/``std``; ``y`` is int32 ``(B,)``. It
    works as input to ``fit``/``evaluate``/``predict`` on every backend.

    Which path runs (``engine``, see `pipeline_engine`):

    * ``"numpy"`` (the default on JAX and PyTorch): a
      `keras_tfkd.data.pydataset.BatchPipeline`, a ``keras.utils.PyDataset``
      built on NumPy (and PIL for image files); no TensorFlow needed;
    * ``"tf.data"`` (the default on TensorFlow): a prefetched
      ``tf.data.Dataset`` with the same augmentations as TensorFlow ops.

    Both draw the augmentation from the same distributions (the reference
    code's: `keras_tfkd.data.augment` lists them) and are deterministic for a
    fixed ``seed``; the random streams differ, so the two engines give
    different (equally distributed) batches for one seed.
    ``benchmarks/run.py`` measures both against training step rates.

    Args:
        dataset: a :class:`Dataset` or a name for :func:`load`.
        split: ``"train"`` or ``"test"`` (``"val"`` is an alias of test).
        batch_size: examples per batch.
        augment: ``None``: the reference augmentation of the data set for the
            train split, none for test; ``True``: the reference augmentation;
            ``False``: none; or a policy name from :data:`AUGMENTATIONS`.
        shuffle: shuffle the examples each pass (default: train split only).
            The whole split is shuffled (a permutation of indices).
        seed: fixes shuffling and augmentation: the same seed gives the same
            batches every time the pipeline is built; each pass still differs.
            An integer >= 0.
        drop_remainder: drop a last, smaller batch.
        repeat: repeat forever (then pass ``steps_per_epoch`` to ``fit``).
        teacher_logits: cached teacher logits of this split in order (a
            `keras_tfkd.teachers.CachedTeacher` or an ``(N, K)`` array, e.g.
            from ``CachedTeacher.from_model(model, dataset, split,
            augment=False)``). Each batch is then ``({"inputs": x,
            "teacher_logits": z}, y)``, the rows of ``z`` following their
            images through the shuffle. A random augmentation is refused
            (ValueError): the logits of one view do not describe another.
        example_index: also hand over each example's row in the split:
            batches are then ``({"inputs": x, "example_index": i}, y)`` (with
            ``"teacher_logits"`` too if given), ``i`` int32 following the
            images through the shuffle -- what PS-KD's per-example store
            (`keras_tfkd.online.PastPredictions`) needs.
        sample_weight: an ``(N,)`` array of per-example weights of this split;
            each batch then ends with its weights, ``(x, y, w)``, which ``fit``
            applies to the loss (both terms of a Distiller's loss).
        engine: ``"auto"``, ``"numpy"`` or ``"tf.data"`` (see above).
        workers: threads of the NumPy engine that read batches ahead (default:
            1 for in-memory sets, the CPU count up to 8 for image folders).
            ``tf.data`` tunes its own parallelism and refuses this argument.

    Several processes (a JAX job on several hosts,
    `keras_tfkd.distribution.initialize`): ``batch_size`` is the *global*
    batch; every process builds the same pipeline and yields only its share,
    the contiguous slice ``index * B / P : (index + 1) * B / P`` of each
    global batch (`keras_tfkd.distribution.process_shard`), so that the P
    processes together train on exactly the batches one process would. The
    example indices, cached logits and sample weights of the rows are those
    of the whole split. ``batch_size`` must be a multiple of P and a last,
    smaller batch must split evenly (else ``drop_remainder=True``); a
    ``seed`` of None is drawn once and shared by all processes. Only the
    NumPy engine's ImageNet random-resized crop is drawn per process (the
    same distribution, other crops than one process would draw).

    On the JAX and PyTorch backends with ``engine="tf.data"`` TensorFlow is
    told not to use the GPUs (``tf.config.set_visible_devices([], "GPU")``,
    if TF has not touched them yet), so the input pipeline does not take the
    model's GPU memory.

    Example:
        >>> ds = load("digits")
        >>> train = pipeline(ds, "train", 64, seed=0, engine="numpy")
        >>> x, y = train[0]
        >>> tuple(x.shape), x.dtype.name, y.dtype.name
        ((64, 8, 8, 1), 'float32', 'int32')
        >>> # model.fit(train, validation_data=pipeline(ds, "test", 256), epochs=5)
    """
    engine = pipeline_engine(engine)
    if isinstance(dataset, str):
        dataset = load(dataset)
    split = _split(split)
    batch_size = _check_batch_size(batch_size)
    _check_seed(seed)
    policy = _resolve_augmentation(dataset, split, augment)
    options = _engine_options(
        dataset,
        split,
        policy,
        shuffle=shuffle,
        seed=seed,
        drop_remainder=drop_remainder,
        repeat=repeat,
        teacher_logits=teacher_logits,
        sample_weight=sample_weight,
    )
    options["example_index"] = bool(example_index)
    options["shard"] = _process_shard(dataset, split, batch_size, options)
    _check_workers(engine, workers)
    return _build(engine, dataset, split, batch_size, workers, options)


def _process_shard(dataset, split, batch_size, options) -> tuple:
    """``(index, count)`` of this process's share of every global batch.

    One process: ``(0, 1)``, the whole batch. Several (a multi-process JAX
    job, `keras_tfkd.distribution.initialize`): ``batch_size`` is the global
    batch and every process yields its contiguous slice of ``batch_size /
    count`` rows, so the processes must draw the same order and the same
    augmentation: a ``seed`` of None becomes one agreed by all of them.
    """
    from keras_tfkd import distribution

    index, count = distribution.process_shard()
    if count == 1:
        return index, count
    distribution.check_batch_share(
        count,
        batch_size,
        dataset.num_examples(split),
        options["drop_remainder"],
        what=f"the {split!r} split of {dataset.name!r}",
    )
    options["seed"] = distribution.agreed_seed(options["seed"])
    return index, count


# ------------------------------------------------------------ checks
def _check_batch_size(batch_size) -> int:
    """``batch_size`` as an int; a ValueError unless it is an integer >= 1."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def _check_seed(seed) -> None:
    """A ValueError unless ``seed`` is None or an integer >= 0."""
    if seed is not None and (isinstance(seed, bool) or int(seed) != seed or seed < 0):
        raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")


def _check_workers(engine: str, workers) -> None:
    """A ValueError unless ``workers`` is None or, for NumPy, an integer >= 1."""
    if engine == "tf.data":
        if workers is not None:
            raise ValueError(
                f"workers={workers!r} is for engine='numpy'; tf.data tunes its "
                "own parallelism (leave workers unset)."
            )
    elif workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")


# ------------------------------------------------------------ the engine
def _engine_options(
    dataset,
    split,
    policy,
    *,
    shuffle,
    seed,
    drop_remainder,
    repeat,
    teacher_logits,
    sample_weight,
) -> dict:
    """The keyword arguments that both engines take, checked and normalised.

    ``shuffle=None`` shuffles the train split only; an empty split, logits
    with a random augmentation and badly shaped logits or weights raise a
    ValueError.
    """
    if shuffle is None:
        shuffle = split == "train"
    if dataset.num_examples(split) == 0:
        raise ValueError(f"The {split} split of {dataset.name!r} is empty")
    return dict(
        policy=policy,
        shuffle=bool(shuffle),
        seed=seed,
        drop_remainder=bool(drop_remainder),
        repeat=bool(repeat),
        labels=np.asarray(dataset.labels(split), dtype=np.int32),
        teacher_logits=_teacher_logits(dataset, split, policy, teacher_logits),
        sample_weight=_sample_weight(dataset, split, sample_weight),
    )


def _teacher_logits(dataset, split, policy, teacher_logits):
    """Cached logits as a float32 ``(N, K)`` array, checked; or None."""
    if teacher_logits is None:
        return None
    if policy != "none":
        raise ValueError(
            f"teacher_logits cannot be combined with the random {policy!r} "
            f"augmentation of the {split!r} split of {dataset.name!r}: cached "
            "logits describe the un-augmented images, not each epoch's new "
            "views. Pass augment=False, or distil from the live teacher model."
        )
    logits = getattr(teacher_logits, "logits", teacher_logits)
    if logits is None:
        raise ValueError("teacher_logits holds no logits yet (a bare CachedTeacher).")
    logits = np.asarray(logits, dtype=np.float32)
    n = dataset.num_examples(split)
    if logits.ndim != 2 or len(logits) != n:
        raise ValueError(
            f"teacher_logits must have shape (N, K) with N = {n}, the size of the "
            f"{split!r} split of {dataset.name!r}; got shape {logits.shape}."
        )
    return logits


def _sample_weight(dataset, split, sample_weight):
    """Per-example weights as a float32 ``(N,)`` array, checked; or None."""
    if sample_weight is None:
        return None
    weights = np.asarray(sample_weight, dtype=np.float32)
    n = dataset.num_examples(split)
    if weights.shape != (n,):
        raise ValueError(
            f"sample_weight must have shape (N,) with N = {n}, the size of the "
            f"{split!r} split of {dataset.name!r}; got shape {weights.shape}."
        )
    check_sample_weight(weights)
    return weights


def _build(engine: str, dataset, split, batch_size, workers, options):
    """The engine's pipeline; every argument has been checked by `pipeline`."""
    if engine == "tf.data":
        from keras_tfkd.data import _tfdata

        built = _tfdata.build(dataset, split, batch_size, **options)
        if options["shard"][1] > 1:
            from keras_tfkd import distribution

            # Keras's DataParallel would cut it again (auto_shard_dataset).
            distribution.mark_sharded(built)
        return built
    from keras_tfkd.data.pydataset import BatchPipeline

    return BatchPipeline(dataset, split, batch_size, workers=workers, **options)


# ------------------------------------------------------------ benchmarks
def pipeline_throughput(
    dataset: Dataset | str,
    split: str = "train",
    batch_size: int = 128,
    steps: int = 50,
    clock=time.perf_counter,
    **kwargs: Any,
) -> float:
    """Images per second of :func:`pipeline` alone (no model), for benchmarks.

    Batches are read as ``fit`` reads them: the next element of a ``tf.data``
    iterator, or ``pipeline[i]`` of the NumPy engine's PyDataset (one thread
    for arrays). One warm-up batch is taken first; then ``steps`` batches are
    timed with ``clock`` (``time.process_time`` counts the CPU time of every
    thread, tf.data's included). Extra keyword arguments go to
    :func:`pipeline` (``repeat=True`` is forced), e.g. ``engine="numpy"``.

    Example:
        >>> rate = pipeline_throughput("digits", "train", 64, steps=5)
        >>> rate > 0
        True
    """
    if isinstance(dataset, str):
        dataset = load(dataset)
    kwargs["repeat"] = True
    stream = pipeline(dataset, split, batch_size, **kwargs)
    if hasattr(stream, "element_spec"):  # tf.data
        iterator = iter(stream)

        def take(_):
            return next(iterator)

    else:
        take = stream.__getitem__
    take(0)
    count = 0
    start = clock()
    for i in range(1, int(steps) + 1):
        count += int(take(i)[0].shape[0])
    return count / max(clock() - start, 1e-9)


# ------------------------------------------------------ augmentation policy
def _resolve_augmentation(dataset, split: str, augment) -> str:
    name = dataset.name if isinstance(dataset, Dataset) else str(dataset)
    name = name.lower().replace("-", "_")
    if augment is None:
        policy = (
            _REFERENCE_AUGMENTATION.get(name, "none") if split == "train" else "none"
        )
    elif augment is True:
        policy = _REFERENCE_AUGMENTATION.get(name, "none")
    elif augment is False:
        policy = "none"
    elif isinstance(augment, str) and augment in AUGMENTATIONS:
        policy = augment
    else:
        raise ValueError(
            f"augment must be None, True, False or one of {AUGMENTATIONS}; "
            f"got {augment!r}"
        )
    if policy == "imagenet" and name != "imagenet":
        raise ValueError("augment='imagenet' needs the imagenet data set (files)")
    shape = getattr(dataset, "input_shape", None)
    if policy != "none" and shape is not None and len(shape) != 3:
        raise ValueError(
            f"augment={policy!r} transforms images (H, W, C), but the examples of "
            f"{name!r} have shape {tuple(shape)}: use augment='none'."
        )
    return policy
