"""The on-disk cache of a language-model teacher's top-k (or sampled) tokens.

Written once by `write_topk_cache`, which runs the teacher over the token
sequences; read back memory-mapped by `TopKCache` (the whole cache is never
loaded into memory: a batch reads its rows only). A cache is a folder of
three files:

* ``ids.npy`` -- ``(N, L, k)`` token ids, ``uint16`` when the vocabulary has
  at most 65,535 tokens, else ``int32``;
* ``values.npy`` -- ``(N, L, k + 1)`` log-probabilities (``float16`` by
  default, or ``float32``): column ``j < k`` belongs to ``ids[..., j]``,
  column ``k`` is the log of the teacher's mass on every other token (the
  *tail*), computed in float64 from the full row;
* ``meta.json`` -- k, the vocabulary size V, the temperature, the
  selection, the dtypes, the data's fingerprint and the bytes per token.

Two selections:

* ``selection="top"``: the ``k`` most probable tokens of
  ``p = softmax(z / T)``, most probable first; ``values[..., j] = log p[id_j]``
  and ``values[..., k] = log(1 - sum_j p[id_j])``.
* ``selection="sampled"`` (as Gemma's distillation): ``k`` tokens drawn
  from ``p`` with replacement (seeded per token position); each distinct id is
  stored once with ``values = log(count / k)``, the empirical distribution
  ``q`` of the draws, and the unused slots hold the id ``V`` (no token) and
  the floor value; the tail column holds the floor (``q`` has no other
  mass). ``E[q] = p``, so a cross-entropy against ``q`` is an unbiased
  estimate of the cross-entropy against ``p``, value and gradient.

Log-probabilities below `FLOOR` (-10,000: a probability that is 0 in
float32) are stored as `FLOOR`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import keras
import numpy as np

from keras_tfkd import _io

__all__ = [
    "FLOOR",
    "SELECTIONS",
    "VALUE_DTYPES",
    "TopKCache",
    "write_topk_cache",
    "data_fingerprint",
]

#: The stored log-probability of a token without mass (and of unused slots).
FLOOR = -1.0e4
#: How the k tokens of each position are chosen.
SELECTIONS = ("top", "sampled")
#: The dtypes the log-probabilities may be stored in.
VALUE_DTYPES = ("float16", "float32")
#: The version of the folder's layout, in ``meta.json``.
FORMAT = 1
#: Ids travel to the loss as float32, exact below 2**24.
_MAX_VOCABULARY = 2**24
#: Rows of logits compressed at once by the writer (bounds its float64 copy).
_WRITER_ELEMENTS = 2**23
META, IDS, VALUES = "meta.json", "ids.npy", "values.npy"


def data_fingerprint(x):
    """A 16-hex-digit SHA-256 of the inputs `x` (an array or a dict of arrays).

    The dtype, shape and bytes of every array enter it (a dict's in key
    order), so a cache refuses inputs that differ in any token.

    >>> data_fingerprint(np.zeros((2, 3), "int32")) == data_fingerprint(
    ...     np.zeros((2, 3), "int32"))
    True
    """
    digest = hashlib.sha256()
    for key, a in _leaves(x):
        a = np.ascontiguousarray(np.asarray(a))
        digest.update(f"{key}{a.dtype.str}{a.shape}".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()[:16]


def _leaves(x):
    if isinstance(x, dict):
        return [(str(k), x[k]) for k in sorted(x, key=str)]
    if isinstance(x, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(x)]
    return [("", x)]


def _rows(x, index):
    if isinstance(x, dict):
        return {k: np.asarray(v)[index] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(np.asarray(v)[index] for v in x)
    return np.asarray(x)[index]


def _shape(x):
    """``(N, L)`` of the inputs: the leading axes of their first leaf."""
    leaf = np.asarray(_leaves(x)[0][1])
    if leaf.ndim < 2:
        raise ValueError(
            "The top-k cache needs token sequences: `x` must be an array (N, L) "
            "of token ids or a dict of arrays (N, L, ...) such as {'token_ids', "
            f"'padding_mask'}}, got an array of shape {leaf.shape}."
        )
    return int(leaf.shape[0]), int(leaf.shape[1])


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer, got {name}={value!r}.")
    if value < low:
        raise ValueError(f"`{name}` must be >= {low}, got {name}={value!r}.")
    return int(value)


def _check_arguments(k, temperature, selection, dtype, batch_size):
    k = _check_int("k", k, 1)
    number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not number or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(
            "`temperature` must be a finite number > 0, got "
            f"temperature={temperature!r}."
        )
    if selection not in SELECTIONS:
        raise ValueError(
            f"`selection` must be one of {list(SELECTIONS)}, got "
            f"selection={selection!r}."
        )
    if dtype not in VALUE_DTYPES:
        raise ValueError(
            f"`dtype` must be one of {list(VALUE_DTYPES)}, got dtype={dtype!r}."
        )
    return k, float(temperature), _check_int("batch_size", batch_size, 1)


def _check_k(k, vocabulary_size):
    if k > vocabulary_size:
        raise ValueError(
            f"`k` must be at most the vocabulary size V={vocabulary_size:,}, "
            f"got k={k:,}."
        )
    if vocabulary_size >= _MAX_VOCABULARY:
        raise ValueError(
            f"The teacher's vocabulary of {vocabulary_size:,} tokens is too large for "
            f"the cache (at most {_MAX_VOCABULARY - 1:,}: ids reach the loss as "
            "float32)."
        )


def id_dtype(vocabulary_size):
    """``uint16`` when the ids and the no-token id ``V`` fit, else ``int32``."""
    return "uint16" if vocabulary_size < 2**16 else "int32"


def bytes_per_token(k, vocabulary_size, dtype):
    """Bytes on disk per token: ``k`` ids and ``k + 1`` log-probabilities.

    >>> bytes_per_token(128, 32_000, "float16")  # 128 * 2 + 129 * 2
    514
    """
    ids = np.dtype(id_dtype(vocabulary_size)).itemsize
    return k * ids + (k + 1) * np.dtype(dtype).itemsize


def _logsumexp(a):
    m = np.max(a, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.sum(np.exp(a - m), axis=-1)) + m[..., 0])[..., None]


def _top(s, k):
    """Ids (most probable first), log-probabilities and the tail, float64 rows."""
    lse = _logsumexp(s)
    v = s.shape[-1]
    ids = np.argpartition(-s, k - 1, axis=-1)[:, :k] if k < v else None
    if ids is None:
        ids = np.broadcast_to(np.arange(v), s.shape).copy()
    order = np.argsort(-np.take_along_axis(s, ids, -1), axis=-1, kind="stable")
    ids = np.take_along_axis(ids, order, -1)
    logp = np.take_along_axis(s, ids, -1) - lse
    rest = s.copy()
    np.put_along_axis(rest, ids, -np.inf, -1)
    tail = _logsumexp(rest) - lse
    return ids, logp, tail


def _sampled(s, k, rngs):
    """`k` draws per row: the distinct ids, ``log(count / k)``, the floor tail."""
    lse = _logsumexp(s)
    p = np.exp(s - lse)
    v = s.shape[-1]
    ids = np.full((len(s), k), v, dtype="int64")
    logq = np.full((len(s), k), FLOOR)
    for row, (probs, rng) in enumerate(zip(p, rngs)):
        counts = rng.multinomial(k, probs / probs.sum())
        drawn = np.flatnonzero(counts)
        ids[row, : len(drawn)] = drawn
        logq[row, : len(drawn)] = np.log(counts[drawn] / k)
    return ids, logq, np.full((len(s), 1), FLOOR)


def _compress(logits, k, temperature, selection, rngs):
    """The cache's ids and values of float32 logits ``(R, V)``."""
    s = logits.astype("float64") / temperature
    if not np.all(np.isfinite(s)):
        raise ValueError("The teacher produced NaN or Inf logits: check its weights.")
    if selection == "top":
        ids, logp, tail = _top(s, k)
    else:
        ids, logp, tail = _sampled(s, k, rngs)
    values = np.maximum(np.concatenate([logp, tail], axis=-1), FLOOR)
    return ids, values


class TopKCache:
    """A top-k teacher cache on disk, read memory-mapped (see the module doc).

    Open one with ``TopKCache(path)``; `write_topk_cache` writes one.
    `targets(rows)` reads the rows of a batch; nothing else is loaded.

    Example:

    >>> cache = write_topk_cache("cache/", lm, token_ids, k=128)  # doctest: +SKIP
    >>> cache.bytes_per_token, cache.k, cache.vocabulary_size  # doctest: +SKIP
    (514, 128, 32000)
    """

    def __init__(self, path):
        self.path = Path(path)
        meta = self.path / META
        if not meta.is_file():
            raise FileNotFoundError(
                f"No top-k cache at path={str(self.path)!r} (its {META} is missing): "
                "write one with keras_tfkd.topk.write_topk_cache."
            )
        self.meta = json.loads(meta.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(
                f"The top-k cache at {str(self.path)!r} has format "
                f"{self.meta.get('format')!r}; this version reads format {FORMAT}."
            )
        self.ids = np.load(self.path / IDS, mmap_mode="r")
        self.values = np.load(self.path / VALUES, mmap_mode="r")
        n, length, k = self.num_sequences, self.sequence_length, self.k
        if self.ids.shape != (n, length, k) or self.values.shape != (n, length, k + 1):
            raise ValueError(
                f"The top-k cache at {str(self.path)!r} is damaged: ids "
                f"{self.ids.shape} "
                f"and values {self.values.shape}, but {META} says (N, L, k) = "
                f"{(n, length, k)}. Write it again."
            )

    k = property(lambda self: int(self.meta["k"]), doc="Tokens kept per position.")
    vocabulary_size = property(
        lambda self: int(self.meta["vocabulary_size"]), doc="The teacher's V."
    )
    temperature = property(
        lambda self: float(self.meta["temperature"]),
        doc="The T of ``softmax(z / T)`` the values were taken from.",
    )
    selection = property(lambda self: self.meta["selection"], doc="top or sampled.")
    fingerprint = property(lambda self: self.meta["fingerprint"], doc="Of the inputs.")
    num_sequences = property(lambda self: int(self.meta["num_sequences"]))
    sequence_length = property(lambda self: int(self.meta["sequence_length"]))

    @property
    def bytes_per_token(self):
        """Bytes on disk per token (ids and values; ``meta.json`` aside)."""
        return self.ids.itemsize * self.k + self.values.itemsize * (self.k + 1)

    def check_data(self, x):
        """Raise a ValueError unless `x` are the inputs the cache was written for."""
        shape = _shape(x)
        got = data_fingerprint(x)
        if got != self.fingerprint:
            raise ValueError(
                f"The top-k cache at {str(self.path)!r} was written for other data "
                f"({self.num_sequences} sequences of {self.sequence_length} tokens, "
                f"fingerprint {self.fingerprint}), but x has shape {shape} and "
                f"fingerprint {got}: cached teacher targets describe exactly the "
                "inputs they were computed on, in order. Write the cache again for "
                "these inputs (write_topk_cache(..., overwrite=True))."
            )

    def targets(self, rows):
        """The packed float32 targets ``(b, L, 2k + 2)`` of the sequences `rows`.

        ``[ids (k) | log-probabilities (k) | tail (1) | temperature (1)]``, the
        form `keras_tfkd.topk.TopKLoss` unpacks (ids are exact in float32).
        """
        rows = np.asarray(rows)
        ids = self.ids[rows].astype("float32")
        values = self.values[rows].astype("float32")
        temperature = np.full(ids.shape[:-1] + (1,), self.temperature, "float32")
        return np.concatenate([ids, values, temperature], axis=-1)

    def __repr__(self):
        return (
            f"TopKCache({str(self.path)!r}, k={self.k}, V={self.vocabulary_size}, "
            f"selection={self.selection!r}, bytes_per_token={self.bytes_per_token})"
        )


def write_topk_cache(
    path,
    teacher,
    x,
    *,
    k=128,
    temperature=1.0,
    selection="top",
    dtype="float16",
    seed=0,
    batch_size=8,
    overwrite=False,
):
    """Run a language-model `teacher` once over `x`; store its top-k per token.

    Args:
        path: the cache's folder (created).
        teacher: a `keras.Model` returning logits ``(b, L, V)`` for a batch
            of `x` (a KerasHub CausalLM built with ``preprocessor=None``, or
            any token model); run frozen, in inference mode.
        x: the training inputs in training order: token ids ``(N, L)`` or a
            dict of ``(N, L, ...)`` arrays (``{"token_ids", "padding_mask"}``).
            Their fingerprint is stored; another `x` is refused when training.
        k: tokens kept per position, ``1 <= k <= V``.
        temperature: the ``T`` of ``softmax(z / T)`` the log-probabilities are
            taken from (the loss's teacher temperature must be the same with
            ``tail="bucket"``).
        selection: ``"top"`` (the k most probable tokens) or ``"sampled"``
            (k draws, their counts; see the module docstring).
        dtype: ``"float16"`` (default, 2 bytes a value) or ``"float32"``.
        seed: seeds the draws of ``selection="sampled"`` (one generator per
            sequence and position, so the batch size does not change them).
        batch_size: sequences per teacher call.
        overwrite: replace an existing cache at `path` (else refused).

    Returns:
        the `TopKCache`, opened memory-mapped.

    Example:

    >>> cache = write_topk_cache("cache/", teacher_lm, x, k=64)  # doctest: +SKIP
    """
    k, temperature, batch_size = _check_arguments(
        k, temperature, selection, dtype, batch_size
    )
    path = Path(path)
    if (path / META).exists() and not overwrite:
        raise FileExistsError(
            f"A top-k cache exists at path={str(path)!r}: open it with "
            "TopKCache(path), or pass overwrite=True to write it again."
        )
    if not isinstance(teacher, keras.Model):
        raise TypeError(
            f"`teacher` must be a keras.Model that outputs logits, got {teacher!r}."
        )
    from keras_tfkd import _backend
    from keras_tfkd.teachers import check_logits_teacher, teacher_num_classes

    check_logits_teacher(teacher)
    known = teacher_num_classes(teacher) if teacher.built else None
    if known is not None:
        _check_k(k, int(known))
    n, length = _shape(x)
    fingerprint = data_fingerprint(x)
    path.mkdir(parents=True, exist_ok=True)
    (path / META).unlink(missing_ok=True)
    ids_file = values_file = None
    vocabulary = None
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        logits = keras.ops.convert_to_numpy(
            _backend.frozen_forward(teacher, _rows(x, rows))
        )
        if logits.ndim != 3 or logits.shape[:2] != (len(rows), length):
            raise ValueError(
                f"The teacher returned logits of shape {logits.shape} for "
                f"{len(rows)} sequences of {length} tokens; expected "
                f"({len(rows)}, {length}, V)."
            )
        if vocabulary is None:
            vocabulary = int(logits.shape[-1])
            _check_k(k, vocabulary)
            ids_file = np.lib.format.open_memmap(
                path / IDS, "w+", id_dtype(vocabulary), (n, length, k)
            )
            values_file = np.lib.format.open_memmap(
                path / VALUES, "w+", dtype, (n, length, k + 1)
            )
        flat = logits.reshape(-1, vocabulary)
        # One generator per token, keyed by (sequence, position): the draws
        # do not depend on the batch size.
        rngs = (
            [
                np.random.default_rng(
                    np.random.SeedSequence(seed, spawn_key=(int(r), i))
                )
                for r in rows
                for i in range(length)
            ]
            if selection == "sampled"
            else None
        )
        step = max(1, _WRITER_ELEMENTS // vocabulary)
        out_ids = np.empty((len(flat), k), "int64")
        out_values = np.empty((len(flat), k + 1))
        for a in range(0, len(flat), step):
            chunk_rngs = None if rngs is None else rngs[a : a + step]
            out_ids[a : a + step], out_values[a : a + step] = _compress(
                flat[a : a + step], k, temperature, selection, chunk_rngs
            )
        ids_file[rows] = out_ids.reshape(len(rows), length, k)
        values_file[rows] = out_values.reshape(len(rows), length, k + 1)
    ids_file.flush()
    values_file.flush()
    del ids_file, values_file
    meta = {
        "format": FORMAT,
        "k": k,
        "vocabulary_size": vocabulary,
        "temperature": temperature,
        "selection": selection,
        "seed": int(seed) if selection == "sampled" else None,
        "dtype": dtype,
        "id_dtype": id_dtype(vocabulary),
        "tail": "values[..., k] = log of the teacher's mass outside the k ids",
        "floor": FLOOR,
        "num_sequences": n,
        "sequence_length": length,
        "fingerprint": fingerprint,
        "bytes_per_token": bytes_per_token(k, vocabulary, dtype),
        "teacher": getattr(teacher, "name", None),
    }
    _io.write_json_atomic(path / META, meta)
    return TopKCache(path)
