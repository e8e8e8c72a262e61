"""Offline top-k teacher logits (`keras_tfkd.topk`): cache, compression, losses, fit."""

import json

import keras
import numpy as np
import pytest
from keras import ops
from test_divergences import _student_grad  # gradient with respect to z_s

from keras_tfkd import Distiller, losses, topk
from keras_tfkd.divergences import GeneralizedJSD, ReverseKL, SkewKL, TotalVariation

BACKEND = keras.backend.backend()
N, L, V = 4, 6, 13


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _teacher(seed=0, vocabulary=V, scale=3.0):
    """A token model (Embedding + Dense) whose logits differ per token."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((L,), dtype="int32"),
            keras.layers.Embedding(vocabulary, 8),
            keras.layers.Dense(
                vocabulary,
                kernel_initializer=keras.initializers.RandomNormal(stddev=scale),
            ),
        ]
    )


def _tokens(seed=0):
    r = np.random.default_rng(seed)
    x = r.integers(0, V, size=(N, L)).astype("int32")
    y = np.roll(x, -1, axis=1)
    mask = (np.arange(L)[None] < r.integers(2, L + 1, size=(N, 1))).astype("float32")
    return x, y, mask


def _np(t):
    return np.asarray(ops.convert_to_numpy(t))


def _dense_losses(t):
    return [
        losses.SoftTargetKL(t),
        losses.SoftTargetCrossEntropy(t),
        ReverseKL(t, temperature_squared=True),
        GeneralizedJSD(0.3, temperature=t),
        SkewKL(0.2, temperature=t),
        SkewKL(0.2, reverse=True, temperature=t),
        TotalVariation(t),
    ]


@pytest.fixture(scope="module")
def dense_cache(tmp_path_factory):
    """k = V, float32 values, written at T = 2."""
    x, _, _ = _tokens()
    teacher = _teacher()
    path = tmp_path_factory.mktemp("dense")
    cache = topk.write_topk_cache(
        path, teacher, x, k=V, temperature=2.0, dtype="float32", batch_size=3
    )
    return cache, _np(teacher(x)), x


@pytest.mark.parametrize("tail", topk.TAILS)
@pytest.mark.parametrize("index", range(7))
def test_k_equal_to_v_is_dense_kd_value_and_gradient(dense_cache, tail, index):
    cache, z_t, x = dense_cache
    inner = _dense_losses(2.0)[index]
    loss = topk.TopKLoss(inner, tail=tail)
    packed = cache.targets(np.arange(N))
    z_s = np.random.default_rng(1).normal(size=(N, L, V)).astype("float32") * 3
    _, _, mask = _tokens()
    got = float(loss(packed, z_s, sample_weight=mask))
    want = float(inner(z_t, z_s, sample_weight=mask))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    g = _student_grad(loss, packed, z_s, mask)
    g_dense = _student_grad(inner, z_t, z_s, mask)
    np.testing.assert_allclose(g, g_dense, rtol=1e-5, atol=1e-6)
    assert np.all(g[mask == 0] == 0)  # padding never counts


def test_k_equal_to_v_with_two_temperatures(dense_cache):
    cache, z_t, _ = dense_cache
    inner = losses.SoftTargetKL(temperature=3.0, teacher_temperature=2.0)
    z_s = np.random.default_rng(2).normal(size=(N, L, V)).astype("float32")
    packed = cache.targets(np.arange(N))
    for tail in topk.TAILS:
        got = float(topk.TopKLoss(inner, tail=tail)(packed, z_s))
        np.testing.assert_allclose(got, float(inner(z_t, z_s)), rtol=1e-6, atol=1e-6)


def _numpy_compressed(z_t, z_s, k, t, tail):
    """The two compressed distributions of a top-k cache, in float64."""
    lt, ls = _log_softmax(z_t / t), _log_softmax(z_s / t)
    ids = np.argsort(-lt, axis=-1, kind="stable")[..., :k]
    pt, ps = (np.take_along_axis(np.exp(a), ids, -1) for a in (lt, ls))
    if tail == "renormalise":
        return pt / pt.sum(-1, keepdims=True), ps / ps.sum(-1, keepdims=True)
    rest_t = np.exp(lt).sum(-1, keepdims=True) - pt.sum(-1, keepdims=True)
    rest_s = np.exp(ls).sum(-1, keepdims=True) - ps.sum(-1, keepdims=True)
    return (
        np.concatenate([pt, np.maximum(rest_t, 0)], -1),
        np.concatenate([ps, np.maximum(rest_s, 0)], -1),
    )


@pytest.mark.parametrize("tail", topk.TAILS)
def test_k_below_v_matches_numpy(tmp_path, tail):
    x, _, mask = _tokens()
    teacher = _teacher(scale=1.0)
    t, k = 2.0, 4
    cache = topk.write_topk_cache(
        tmp_path, teacher, x, k=k, temperature=t, dtype="float32"
    )
    z_t = _np(teacher(x)).astype("float64")
    z_s = np.random.default_rng(3).normal(size=(N, L, V))
    p, q = _numpy_compressed(z_t, z_s, k, t, tail)
    packed = cache.targets(np.arange(N))
    kl = t**2 * (p * (np.log(p) - np.log(q))).sum(-1)
    tv = 0.5 * np.abs(p - q).sum(-1)
    for inner, per_token in [(losses.SoftTargetKL(t), kl), (TotalVariation(t), tv)]:
        got = float(topk.TopKLoss(inner, tail=tail)(packed, z_s, sample_weight=mask))
        want = (per_token * mask).sum() / per_token.size
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_the_student_tail_has_no_cancellation():
    # k tokens hold all but ~1e-12 of the mass: log(1 - sum p) in float32
    # would be log(0) or a wrong power of ten; the complement logsumexp is not.
    z = np.array([[[30.0, 29.0, 28.5, 1.0, 0.0, -1.0]]], "float32")
    c = _np(topk.compress_student(z, np.array([[[0, 1, 2]]]), 1.0))
    z64 = z.astype("float64")[0, 0]
    want = np.log(np.exp(z64[3:]).sum()) - np.log(np.exp(z64).sum())
    np.testing.assert_allclose(c[0, 0, -1], want, rtol=1e-5)
    np.testing.assert_allclose(c[0, 0, :3], _log_softmax(z64)[:3], rtol=1e-6, atol=1e-7)


def test_cache_round_trip_is_memory_mapped_and_reports_its_size(tmp_path):
    x, _, _ = _tokens()
    teacher = _teacher()
    k = 5
    cache = topk.write_topk_cache(tmp_path, teacher, x, k=k, batch_size=3)
    again = topk.TopKCache(tmp_path)
    assert isinstance(again.ids, np.memmap) and isinstance(again.values, np.memmap)
    assert again.ids.dtype == np.uint16 and again.values.dtype == np.float16
    lt = _log_softmax(_np(teacher(x)).astype("float64"))
    ids = np.argsort(-lt, axis=-1, kind="stable")[..., :k]
    np.testing.assert_array_equal(again.ids, ids)
    logp = np.take_along_axis(lt, ids, -1)
    tail = np.log1p(-np.exp(logp).sum(-1))
    np.testing.assert_allclose(again.values[..., :k], logp, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(again.values[..., k], tail, rtol=2e-3, atol=2e-3)
    packed = again.targets([1, 3])
    assert packed.shape == (2, L, 2 * k + 2) and packed.dtype == np.float32
    np.testing.assert_array_equal(packed[..., :k], ids[[1, 3]])
    np.testing.assert_array_equal(packed[..., -1], 1.0)
    on_disk = sum(
        (tmp_path / name).stat().st_size - 128 for name in ("ids.npy", "values.npy")
    )
    assert cache.bytes_per_token == k * 2 + (k + 1) * 2 == on_disk / (N * L)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["bytes_per_token"] == cache.bytes_per_token
    assert (meta["k"], meta["vocabulary_size"], meta["dtype"]) == (k, V, "float16")
    assert topk.bytes_per_token(128, 32_000, "float16") == 514
    assert topk.bytes_per_token(128, 128_000, "float16") == 128 * 4 + 129 * 2


def test_a_cache_refuses_changed_data(tmp_path):
    x, y, mask = _tokens()
    cache = topk.write_topk_cache(tmp_path, _teacher(), x, k=3)
    changed = x.copy()
    changed[2, 1] = (changed[2, 1] + 1) % V
    with pytest.raises(ValueError, match="written for other data"):
        cache.check_data(changed)
    student = _teacher(seed=5)
    before = [w.copy() for w in student.get_weights()]
    distiller = Distiller(
        student=student,
        teacher=topk.TopKTeacher(cache),
        soft_loss=topk.TopKLoss(losses.SoftTargetKL()),
    )
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="written for other data"):
        distiller.fit(changed, y, sample_weight=mask, batch_size=2, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        topk.write_topk_cache(tmp_path, _teacher(), x, k=3)


def test_bad_arguments_get_clear_errors(tmp_path):
    x, _, _ = _tokens()
    with pytest.raises(ValueError, match=r"at most the vocabulary size V=13, got k=14"):
        topk.write_topk_cache(tmp_path / "a", _teacher(), x, k=V + 1)
    with pytest.raises(ValueError, match="`k` must be >= 1, got k=0"):
        topk.write_topk_cache(tmp_path / "b", _teacher(), x, k=0)
    with pytest.raises(ValueError, match="selection"):
        topk.write_topk_cache(tmp_path / "c", _teacher(), x, selection="best")
    with pytest.raises(FileNotFoundError, match="No top-k cache"):
        topk.TopKCache(tmp_path / "missing")
    cache = topk.write_topk_cache(tmp_path / "d", _teacher(), x, k=3, temperature=2.0)
    loss = topk.TopKLoss(losses.SoftTargetKL(2.0))
    with pytest.raises(ValueError, match="ids shape mismatch"):
        loss(cache.targets([0, 1]), np.zeros((2, L + 1, V), "float32"))
    with pytest.raises(ValueError, match="2k \\+ 2 columns"):
        loss(np.zeros((2, L, 7), "float32"), np.zeros((2, L, V), "float32"))
    with pytest.raises(TypeError, match="cannot wrap DecoupledKD"):
        topk.TopKLoss(losses.DecoupledKD())
    with pytest.raises(ValueError, match='kl="reference"'):
        topk.TopKLoss(losses.SoftTargetKL(kl="reference"))
    with pytest.raises(ValueError, match="tail"):
        topk.TopKLoss(losses.SoftTargetKL(), tail="drop")
    teacher = topk.TopKTeacher(cache)
    student = _teacher(seed=3)
    with pytest.raises(ValueError, match=r"wrap it, keras_tfkd.topk.TopKLoss"):
        Distiller(student=student, teacher=teacher, soft_loss=losses.SoftTargetKL(2.0))
    with pytest.raises(
        ValueError, match="temperature 2, but SoftTargetKL softens the teacher with 1"
    ):
        Distiller(
            student=student,
            teacher=teacher,
            soft_loss=topk.TopKLoss(losses.SoftTargetKL(1.0)),
        )
    # renormalising over the k is exact at any temperature
    Distiller(
        student=student,
        teacher=teacher,
        soft_loss=topk.TopKLoss(losses.SoftTargetKL(1.0), tail="renormalise"),
    )


def test_sampled_cache_stores_counts_and_is_unbiased(tmp_path):
    # Every position sees token 0, so every position has the same p_T.
    x = np.zeros((N, L), "int32")
    vocabulary = k = 64
    teacher = _teacher(scale=0.7, vocabulary=vocabulary)
    cache = topk.write_topk_cache(
        tmp_path / "a", teacher, x, k=k, selection="sampled", seed=7, batch_size=3
    )
    ids = np.asarray(cache.ids).astype("int64")
    q = np.exp(np.asarray(cache.values, "float64")[..., :k])
    valid = ids < vocabulary
    np.testing.assert_allclose((q * valid).sum(-1), 1.0, atol=1e-3)
    assert np.all(q[~valid] == 0) and np.all(cache.values[..., k] == topk.FLOOR)
    counts = np.rint(q * k)
    for row_ids, row_valid in zip(ids.reshape(-1, k), valid.reshape(-1, k)):
        assert len(set(row_ids[row_valid])) == row_valid.sum()  # distinct ids
    mean_q = np.zeros(vocabulary)
    for row_ids, row_c, row_valid in zip(
        ids.reshape(-1, k), counts.reshape(-1, k), valid.reshape(-1, k)
    ):
        np.add.at(mean_q, row_ids[row_valid], row_c[row_valid] / k)
    mean_q /= N * L
    p = np.exp(_log_softmax(_np(teacher(x))[0, 0].astype("float64")))
    np.testing.assert_allclose(mean_q, p, atol=0.02)
    # The draws depend on the seed, not on the batch size.
    again = topk.write_topk_cache(
        tmp_path / "b", teacher, x, k=k, selection="sampled", seed=7, batch_size=4
    )
    np.testing.assert_array_equal(again.ids, cache.ids)
    # Cross-entropy against q: an unbiased estimate of the dense CE.
    z_s = np.random.default_rng(0).normal(size=(N, L, vocabulary)).astype("float32")
    ce = topk.TopKLoss(losses.SoftTargetCrossEntropy())
    got = _np(ce.call(cache.targets(np.arange(N)), z_s))
    ls = _log_softmax(z_s.astype("float64"))
    want = -np.array(
        [
            (qq[vv] * ll[ii[vv]]).sum()
            for qq, vv, ii, ll in zip(
                q.reshape(-1, k),
                valid.reshape(-1, k),
                ids.reshape(-1, k),
                ls.reshape(-1, vocabulary),
            )
        ]
    ).reshape(N, L)
    np.testing.assert_allclose(got, want, rtol=2e-3)
    student = _teacher(seed=1, vocabulary=vocabulary)
    with pytest.raises(ValueError, match="unbiased targets for the forward"):
        Distiller(
            student=student,
            teacher=topk.TopKTeacher(cache),
            soft_loss=topk.TopKLoss(ReverseKL()),
        )


def test_topk_loss_serialises():
    loss = topk.TopKLoss(GeneralizedJSD(0.3, temperature=2.0), tail="renormalise")
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(again.loss, GeneralizedJSD) and again.tail == "renormalise"
    assert float(_np(again.temperature)) == 2.0


def _token_mean_topk_kd(student, cache, x, y, mask, t):
    """``0.5 CE + 0.5 t^2 KL(p_T' || p_S')`` over the unmasked tokens, in NumPy."""
    z_s = _np(student(x)).astype("float64")
    ls = _log_softmax(z_s / t)
    k = cache.k
    ids = np.asarray(cache.ids).astype("int64")
    p = np.exp(np.asarray(cache.values, "float64"))
    p = p / p.sum(-1, keepdims=True)
    q = np.take_along_axis(np.exp(ls), ids, -1)
    q = np.concatenate([q, 1 - q.sum(-1, keepdims=True)], -1)
    kl = t**2 * (p * (np.log(p) - np.log(q))).sum(-1)
    ce = -np.take_along_axis(_log_softmax(z_s), y[..., None], -1)[..., 0]
    assert k == ids.shape[-1]
    return 0.5 * (ce * mask).sum() / mask.sum() + 0.5 * (kl * mask).sum() / mask.sum()


def test_a_distiller_fits_a_token_model_from_the_cache(tmp_path):
    x, y, mask = _tokens()
    cache = topk.write_topk_cache(
        tmp_path, _teacher(scale=30.0), x, k=4, temperature=2.0
    )
    student = _teacher(seed=4, scale=0.1)
    teacher = topk.TopKTeacher(cache)
    distiller = Distiller(
        student=student,
        teacher=teacher,
        soft_loss=topk.TopKLoss(losses.SoftTargetKL(2.0)),
        alpha=0.5,
    )
    # The loss of one batch is the token mean over the unmasked tokens.
    batch = teacher.batches(x, y, mask, batch_size=N, shuffle=False)[0]
    got = float(
        distiller.compute_loss(x=batch[0], y=y, y_pred=student(x), sample_weight=mask)
    )
    want = _token_mean_topk_kd(student, cache, x, y, mask, 2.0)
    np.testing.assert_allclose(got, want, rtol=2e-4)
    distiller.compile(optimizer=keras.optimizers.Adam(0.05))
    history = distiller.fit(x, y, sample_weight=mask, batch_size=2, epochs=4, verbose=0)
    soft = history.history["soft_loss"]
    assert np.all(np.isfinite(history.history["loss"]))
    assert soft[-1] < soft[0]
