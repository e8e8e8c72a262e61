"""Offline top-k teacher logits: distil a language model from a cache on disk.

A language model's dense teacher targets are ``N x L x V`` numbers (V =
32,000 to 256,000 tokens). `write_topk_cache` runs the teacher once and
keeps, per token, the ``k`` most probable token ids (or ``k`` sampled ones)
and their log-probabilities, plus the log of the mass on every other token
(``514`` bytes a token at ``k = 128``, V = 32,000, float16, against 64,000
for dense float16 logits). `TopKTeacher` streams the cache memory-mapped
into `Distiller.fit`, and `TopKLoss` lets every token-level loss
(`SoftTargetKL`, `SoftTargetCrossEntropy`, `ReverseKL`, `GeneralizedJSD`,
`SkewKL`, `TotalVariation`) compare the two models on those ``k`` tokens.

Both distributions are compressed alike before the wrapped loss sees them:

* ``tail="bucket"`` (default, as DistillKit): ``k + 1`` categories, the
  ``k`` ids and "every other token"::

      p_T' = [p_T[id_1], ..., p_T[id_k], 1 - sum_j p_T[id_j]]
      p_S' = [p_S[id_1], ..., p_S[id_k], 1 - sum_j p_S[id_j]]

  with ``p = softmax(z / T)``. The student's tail is computed without
  cancellation, as ``logsumexp`` of its scaled logits outside the ids minus
  the ``logsumexp`` of the whole row. The teacher's tail is stored, so the
  teacher side is the distribution at the cache's temperature: the loss's
  teacher temperature must equal it (checked by the `Distiller`).
* ``tail="renormalise"``: ``k`` categories, both sides renormalised over
  the ids: ``p_T' = softmax(z_T[ids] / T_t)``, ``p_S' = softmax(z_S[ids] / T_s)``.
  The cached log-probabilities are the logits up to a constant (times the
  cache's temperature), so any temperature is exact, and a schedule may
  change it.

With ``k = V`` both equal the dense loss (to float rounding). With
``selection="sampled"`` caches the teacher side is the empirical
distribution ``q`` of ``k`` draws (`keras_tfkd.topk_cache`); only
``tail="bucket"`` and the forward losses `SoftTargetCrossEntropy` (an
unbiased estimate of the dense cross-entropy, value and gradient) and
`SoftTargetKL` (the same minus the entropy of ``q``: the same gradient) are
accepted.

Example:

```python
from keras_tfkd import Distiller, losses, topk
cache = topk.write_topk_cache("cache/", teacher_lm, x, k=128, temperature=2.0)
distiller = Distiller(
    student=student_lm,
    teacher=topk.TopKTeacher(cache),
    soft_loss=topk.TopKLoss(losses.SoftTargetKL(temperature=2.0)),
    alpha=0.5,
)
distiller.compile(optimizer="adam")
distiller.fit(x, y, sample_weight=mask, batch_size=8, epochs=1)
```
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_tfkd._batches import INPUTS_KEY, TEACHER_LOGITS_KEY, is_packed
from keras_tfkd.divergences import GeneralizedJSD, ReverseKL, SkewKL, TotalVariation
from keras_tfkd.losses import LabelAwareLoss, SoftTargetKL
from keras_tfkd.teachers import Teacher, _is_array_input
from keras_tfkd.topk_cache import (
    FLOOR,
    SELECTIONS,
    TopKCache,
    _rows,
    bytes_per_token,
    data_fingerprint,
    write_topk_cache,
)

__all__ = [
    "TAILS",
    "SELECTIONS",
    "FLOOR",
    "TopKCache",
    "TopKLoss",
    "TopKTeacher",
    "TopKBatches",
    "bytes_per_token",
    "compress_student",
    "data_fingerprint",
    "write_topk_cache",
]

#: How the mass outside the k tokens is handled (see the module docstring).
TAILS = ("bucket", "renormalise")
#: The losses `TopKLoss` can wrap (they take logits; log-probabilities are logits).
WRAPPABLE = (SoftTargetKL, ReverseKL, GeneralizedJSD, SkewKL, TotalVariation)


def _unpack(packed, num_classes):
    """Ids (int32), validity, log-probabilities (k), tail (1), cache T (1)."""
    width = packed.shape[-1]
    if width is None or width < 4 or width % 2:
        raise ValueError(
            "TopKLoss needs the packed targets of a TopKTeacher (its y_true has "
            f"2k + 2 columns: ids, log-probabilities, tail, temperature), got "
            f"y_true with {width} columns on the last axis. Is the teacher a "
            "keras_tfkd.topk.TopKTeacher?"
        )
    k = (width - 2) // 2
    if num_classes is not None and k > num_classes:
        raise ValueError(
            f"The targets hold k={k} tokens per position but the student "
            f"predicts V={num_classes} (k must be at most V)."
        )
    ids = packed[..., :k]
    valid = ids < float(num_classes)
    ids = ops.cast(ops.where(valid, ids, 0.0), "int32")
    return (
        ids,
        valid,
        packed[..., k : 2 * k],
        packed[..., 2 * k : 2 * k + 1],
        (packed[..., 2 * k + 1 :]),
    )


def _outside_mask(ids, valid, num_rows, num_classes):
    """``(M, V)`` booleans: True at the ids of each row (the tail's complement)."""
    k = ids.shape[-1]
    rows = ops.repeat(ops.arange(num_rows, dtype="int32"), k)
    indices = ops.stack([rows, ops.reshape(ids, (-1,))], axis=1)
    counts = ops.scatter_update(
        ops.zeros((num_rows, num_classes), "float32"),
        indices,
        ops.reshape(ops.cast(valid, "float32"), (-1,)),
        reduction="add",
    )
    return counts > 0


def compress_student(logits, ids, temperature, tail="bucket", valid=None):
    """The student's logits on the ``k`` ids (and the tail), shape ``(..., k[+1])``.

    ``tail="bucket"``: ``T * [log p[id_1], ..., log p[id_k], log(1 - sum_j
    p[id_j])]`` with ``p = softmax(z / T)``, so that ``softmax(c / T)`` is
    the compressed distribution; the tail is the log of the sum of the
    other tokens' probabilities (no cancellation: never ``1 - sum``), floored
    at ``FLOOR``. ``tail="renormalise"``: ``z[ids]``. `valid` (booleans like
    `ids`) marks used slots; unused ones get ``T * FLOOR``.

    Example:

    >>> z = np.log(np.array([[0.5, 0.3, 0.2]], "float32"))
    >>> c = compress_student(z, np.array([[0]]), 1.0)
    >>> np.round(np.exp(keras.ops.convert_to_numpy(c)), 4).tolist()
    [[0.5, 0.5]]
    """
    if tail not in TAILS:
        raise ValueError(f"`tail` must be one of {list(TAILS)}, got tail={tail!r}.")
    z = ops.cast(logits, "float32")
    ids = ops.cast(ids, "int32")
    valid = ops.ones_like(ids, dtype="bool") if valid is None else valid
    if tail == "renormalise":
        picked = ops.take_along_axis(z, ids, axis=-1)
        return ops.where(valid, picked, FLOOR * temperature)
    num_classes = z.shape[-1]
    s = z / temperature
    # One exponential pass serves the normaliser and the tail: with the row's
    # maximum m, log p[id] = s[id] - m - log(sum e) and the tail is
    # log(sum of e outside the ids) - log(sum e), e = exp(s - m): a sum of
    # the other tokens' own terms, never 1 - (sum of the k).
    m = ops.stop_gradient(ops.max(s, axis=-1, keepdims=True))
    e = ops.exp(s - m)
    log_total = ops.log(ops.sum(e, axis=-1, keepdims=True))
    picked = ops.take_along_axis(s, ids, axis=-1) - m - log_total
    picked = ops.where(valid, ops.maximum(picked, FLOOR), FLOOR)
    flat = ops.reshape(e, (-1, num_classes))
    inside = _outside_mask(ids, valid, ops.shape(flat)[0], num_classes)
    rest = ops.sum(ops.where(inside, 0.0, flat), axis=-1)
    rest = ops.reshape(rest, ops.shape(log_total))
    some = rest > 0
    tail_value = ops.where(some, ops.log(ops.where(some, rest, 1.0)) - log_total, FLOOR)
    tail_value = ops.maximum(tail_value, FLOOR)
    return temperature * ops.concatenate([picked, tail_value], axis=-1)


def _temperatures(loss):
    """The loss's (student, teacher) temperature variables."""
    teacher = getattr(loss, "teacher_temperature", loss.temperature)
    return loss.temperature, teacher


@keras.saving.register_keras_serializable(package="keras_tfkd")
class TopKLoss(keras.losses.Loss):
    """A token-level loss on the top-k (or sampled) tokens of a `TopKTeacher`.

    Called by the `Distiller` as ``loss(packed_targets, student_logits,
    sample_weight)``: it compresses both sides to the cached ids (``k + 1``
    categories with ``tail="bucket"``, ``k`` with ``tail="renormalise"``;
    formulas in the module docstring) and returns the wrapped loss's
    per-token value on them::

        loss = inner(c_T, c_S)      c_T = T_t * log p_T',  c_S = T_s * log p_S'

    (log-probabilities are logits: ``softmax(c / T) = p'``). With ``k = V``
    it equals ``inner(z_T, z_S)``. The reduction (with the token mask as
    `sample_weight`) is this loss's own, so padding never counts.

    Args:
        loss: the loss to wrap: `SoftTargetKL` (``kl="batchmean"``),
            `SoftTargetCrossEntropy` (on logits), `ReverseKL`,
            `GeneralizedJSD`, `SkewKL` or `TotalVariation`. Its temperature
            variables stay its own (schedulers find them through this loss).
        tail: ``"bucket"`` (default) or ``"renormalise"``.

    Example:

    >>> loss = TopKLoss(SoftTargetKL(temperature=2.0))
    >>> loss.tail
    'bucket'
    """

    #: What `y_true` holds: the packed targets of a `TopKTeacher`.
    targets = "topk"

    def __init__(
        self,
        loss,
        tail="bucket",
        reduction="sum_over_batch_size",
        name=None,
        dtype=None,
    ):
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if isinstance(loss, LabelAwareLoss) or not isinstance(loss, WRAPPABLE):
            raise TypeError(
                f"TopKLoss cannot wrap {type(loss).__name__}: it needs a loss of two "
                "distributions given as logits, which it hands the compressed "
                "(top-k) distributions: one of "
                f"{', '.join(c.__name__ for c in WRAPPABLE)} or "
                "SoftTargetCrossEntropy."
            )
        if getattr(loss, "targets", "logits") != "logits":
            raise ValueError(
                f"TopKLoss wraps losses on teacher logits, got {type(loss).__name__}"
                f"(targets={loss.targets!r})."
            )
        if getattr(loss, "kl", "batchmean") != "batchmean":
            raise ValueError(
                f'TopKLoss cannot wrap {type(loss).__name__}(kl="reference"): it '
                "divides by the number of classes, which the compression changes "
                '(V to k + 1). Use kl="batchmean" with multiplier=m / V.'
            )
        if tail not in TAILS:
            raise ValueError(f"`tail` must be one of {list(TAILS)}, got tail={tail!r}.")
        super().__init__(
            name=name or f"topk_{loss.name}", reduction=reduction, dtype=dtype
        )
        self.loss = loss
        self.tail = tail

    @property
    def temperature(self):
        """The wrapped loss's (student) temperature variable."""
        return self.loss.temperature

    @property
    def teacher_temperature(self):
        """The wrapped loss's teacher temperature variable."""
        return _temperatures(self.loss)[1]

    @property
    def variables(self):
        return list(getattr(self.loss, "variables", []))

    def compress(self, y_true, y_pred):
        """``(c_T, c_S)``: the compressed teacher and student logits."""
        packed = ops.cast(y_true, "float32")
        num_classes = y_pred.shape[-1]
        t_shape, s_shape = tuple(packed.shape[:-1]), tuple(y_pred.shape[:-1])
        if len(t_shape) != len(s_shape) or any(
            a is not None and b is not None and a != b for a, b in zip(t_shape, s_shape)
        ):
            raise ValueError(
                f"The top-k targets cover positions {t_shape} but the student's "
                f"logits {s_shape}: the cache must hold one row per token of the "
                "batch (ids shape mismatch)."
            )
        ids, valid, logp, tail, cache_t = _unpack(packed, num_classes)
        t_s, t_t = (ops.cast(v, "float32") for v in _temperatures(self.loss))
        c_s = compress_student(y_pred, ids, t_s, self.tail, valid)
        if self.tail == "renormalise":
            c_t = ops.where(valid, cache_t * logp, FLOOR * t_t)
        else:
            c_t = t_t * ops.concatenate([logp, tail], axis=-1)
        return c_t, c_s

    def call(self, y_true, y_pred):
        c_t, c_s = self.compress(y_true, y_pred)
        return self.loss.call(c_t, c_s)

    def get_config(self):
        return {
            "loss": keras.saving.serialize_keras_object(self.loss),
            "tail": self.tail,
            "reduction": self.reduction,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="keras_tfkd")
class TopKTeacher(Teacher):
    """A language-model teacher read from a top-k cache on disk (`TopKCache`).

    Its targets are the packed ``(b, L, 2k + 2)`` rows of the batch (ids,
    log-probabilities, tail, temperature), which only `TopKLoss` takes.
    `Distiller.fit` given arrays ``x`` (token ids or a dict of them) checks
    that they are the cache's inputs (a `ValueError` otherwise) and streams
    them with their rows of the cache through `TopKBatches` (``batch_size``,
    ``shuffle`` and ``sample_weight``, the padding mask, are read from
    `fit`'s arguments). `predict`/`evaluate` on plain ``x`` give a soft
    term of 0, as `CachedTeacher`.

    Args:
        cache: a `TopKCache` or the path of one.
        seed: seeds the batch order of each epoch.

    Example:

    >>> teacher = TopKTeacher("cache/")  # doctest: +SKIP
    """

    targets = "topk"
    #: The fix named when a soft loss is not a `TopKLoss` (`Distiller` checks).
    loss_hint = "keras_tfkd.topk.TopKLoss(<the loss>)"

    def __init__(self, cache, seed=0, **kwargs):
        if not isinstance(cache, TopKCache):
            cache = TopKCache(cache)
        kwargs.pop("num_classes", None)
        super().__init__(num_classes=cache.vocabulary_size, **kwargs)
        self.cache = cache
        self.seed = int(seed)

    @property
    def bytes_per_token(self):
        """The cache's bytes per token on disk."""
        return self.cache.bytes_per_token

    def check_logits_shape(self, shape):
        if shape is not None and len(shape) != 3:
            raise ValueError(
                "TopKTeacher teaches language models: the student must output "
                f"logits (N, L, V), got shape {shape}."
            )
        length = None if shape is None else shape[1]
        if length is not None and length != self.cache.sequence_length:
            raise ValueError(
                f"The student outputs {length} positions per sequence but the cache "
                f"holds {self.cache.sequence_length}."
            )

    def check_losses(self, losses):
        """Raise unless every loss is a `TopKLoss` this cache can feed."""
        for loss in losses:
            if not isinstance(loss, TopKLoss):
                raise ValueError(
                    f"TopKTeacher hands its losses top-k targets, but soft_loss "
                    f"{type(loss).__name__} takes dense logits: wrap it, "
                    f"{self.loss_hint}."
                )
            inner = loss.loss
            if self.cache.selection == "sampled":
                if loss.tail != "bucket" or not isinstance(inner, SoftTargetKL):
                    raise ValueError(
                        "A sampled cache gives unbiased targets for the forward "
                        "cross-entropy only: use TopKLoss(SoftTargetCrossEntropy(...)) "
                        'or TopKLoss(SoftTargetKL(...)) with tail="bucket", got '
                        f"TopKLoss({type(inner).__name__}, tail={loss.tail!r})."
                    )
            if loss.tail == "renormalise":
                continue
            t_t = float(loss.teacher_temperature.numpy())
            if not math.isclose(t_t, self.cache.temperature, rel_tol=1e-6):
                raise ValueError(
                    f"The cache at {str(self.cache.path)!r} holds the teacher's "
                    f"distribution at temperature {self.cache.temperature:g}, but "
                    f"{type(inner).__name__} softens the teacher with {t_t:g}: with "
                    'tail="bucket" they must be equal. Write the cache at that '
                    'temperature, or use tail="renormalise" (exact at any temperature).'
                )

    def batches(self, x, y, sample_weight=None, batch_size=32, shuffle=True):
        """`x`, `y` and `sample_weight` with their rows of the cache, as batches."""
        return TopKBatches(
            self.cache, x, y, sample_weight, batch_size, shuffle, seed=self.seed
        )

    def prepare_fit_data(self, x, y, fit_kwargs):
        if isinstance(x, TopKBatches) or is_packed(x):
            return x, y, fit_kwargs
        if not _is_array_input(x):
            raise TypeError(
                "TopKTeacher streams its cache beside array inputs: give fit the "
                "token arrays (or a dict of them) the cache was written for, or "
                "TopKTeacher.batches(x, y, ...); got x of type "
                f"{type(x).__name__}."
            )
        batches = self.batches(
            x,
            y,
            fit_kwargs.pop("sample_weight", None),
            fit_kwargs.pop("batch_size", None) or 32,
            fit_kwargs.pop("shuffle", True),
        )
        return batches, None, fit_kwargs

    def call(self, inputs, labels=None):
        if isinstance(inputs, dict) and TEACHER_LOGITS_KEY in inputs:
            return ops.cast(inputs[TEACHER_LOGITS_KEY], "float32")
        return None

    def get_config(self):
        config = super().get_config()
        config.pop("num_classes", None)
        config.update(cache=str(self.cache.path), seed=self.seed)
        return config


class TopKBatches(keras.utils.PyDataset):
    """Batches ``({"inputs": x, "teacher_logits": targets}, y[, w])`` from a cache.

    Each batch reads its rows of the memory-mapped cache (`TopKCache.targets`)
    and nothing else; each epoch is shuffled anew (seeded) unless
    ``shuffle=False``. The inputs are checked against the cache's
    fingerprint first.
    """

    #: `Distiller.fit` leaves the order alone and checks `labels`.
    shuffles_itself = True

    def __init__(
        self, cache, x, y, sample_weight=None, batch_size=32, shuffle=True, seed=0
    ):
        super().__init__()
        cache.check_data(x)
        self.cache, self.x, self.labels = cache, x, np.asarray(y)
        self.sample_weight = (
            None if sample_weight is None else np.asarray(sample_weight)
        )
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or batch_size < 1
        ):
            raise ValueError(
                f"`batch_size` must be an integer >= 1, got {batch_size!r}."
            )
        if len(self.labels) != cache.num_sequences:
            raise ValueError(
                f"`y` has {len(self.labels)} rows but the cache holds "
                f"{cache.num_sequences} sequences."
            )
        self.batch_size, self.shuffle, self.seed = batch_size, bool(shuffle), seed
        self.epoch = 0

    def __len__(self):
        return math.ceil(self.cache.num_sequences / self.batch_size)

    def _order(self):
        """This epoch's order of the sequences (drawn once per epoch)."""
        if getattr(self, "_drawn", None) != self.epoch:
            n = self.cache.num_sequences
            key = np.random.SeedSequence(self.seed, spawn_key=(self.epoch,))
            rng = np.random.default_rng(key)
            self._perm = rng.permutation(n) if self.shuffle else np.arange(n)
            self._drawn = self.epoch
        return self._perm

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        rows = np.sort(
            self._order()[index * self.batch_size : (index + 1) * self.batch_size]
        )
        packed = {
            INPUTS_KEY: _rows(self.x, rows),
            TEACHER_LOGITS_KEY: self.cache.targets(rows),
        }
        if self.sample_weight is None:
            return packed, self.labels[rows]
        return packed, self.labels[rows], self.sample_weight[rows]

    def on_epoch_end(self):
        self.epoch += 1
