"""Chunked soft losses: the same value and gradient as the unchunked form.

Every token-level loss takes ``chunk_size`` (rows per chunk over the leading
axes); `keras_tfkd._chunked` computes the value and the gradient with respect
to the student's logits chunk by chunk on each backend's own loop. Here:
chunked == unchunked (value, per-row values, gradient) to 1e-6 for every
loss, with token masks, a fully masked sequence and a ragged last chunk, on
``(N, K)`` and ``(N, L, V)``; the same weights after a Distiller's fit step;
the setting's checks, default and config round trip.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfkd import Distiller, _chunked, losses
from keras_tfkd.losses import targets_with_labels

BACKEND = keras.backend.backend()

LOSSES = {
    "soft_target_kl": lambda c: losses.SoftTargetKL(temperature=2.0, chunk_size=c),
    # The virtual teacher's loss (recipes.tfkd_reg): teacher softened only.
    "tfkd_reg_kl": lambda c: losses.SoftTargetKL(
        temperature=1.0,
        teacher_temperature=5.0,
        multiplier=3.0,
        kl="reference",
        temperature_squared=False,
        chunk_size=c,
    ),
    "soft_target_ce": lambda c: losses.SoftTargetCrossEntropy(
        temperature=3.0, chunk_size=c
    ),
    "soft_target_ce_probabilities": lambda c: losses.SoftTargetCrossEntropy(
        targets="probabilities", chunk_size=c
    ),
    "reverse_kl": lambda c: losses.ReverseKL(temperature=2.0, chunk_size=c),
    "generalized_jsd": lambda c: losses.GeneralizedJSD(
        beta=0.3, temperature=2.0, temperature_squared=True, chunk_size=c
    ),
    "generalized_jsd_forward": lambda c: losses.GeneralizedJSD(beta=0.0, chunk_size=c),
    "skew_kl": lambda c: losses.SkewKL(skew=0.1, chunk_size=c),
    "skew_reverse_kl": lambda c: losses.SkewKL(skew=0.2, reverse=True, chunk_size=c),
    "total_variation": lambda c: losses.TotalVariation(temperature=1.5, chunk_size=c),
    "dkd": lambda c: losses.DecoupledKD(
        tckd_weight=1.0, nckd_weight=8.0, temperature=4.0, chunk_size=c
    ),
}

# (shape, chunk): 7 rows in chunks of 3 and 10 tokens in chunks of 4 both end
# on a ragged chunk; chunk 1 is one row at a time.
SHAPES = {
    "N,K ragged": ((7, 11), 3),
    "N,L,V ragged": ((2, 5, 13), 4),
}


def _student_grad(fn, z_s):
    """``fn(z_s) -> (scalar, aux)``: the scalar, its gradient for `z_s`, aux."""
    if BACKEND == "jax":
        import jax

        # One compiled function: far faster than op-by-op on a loaded CPU.
        grad_fn = jax.jit(jax.value_and_grad(fn, has_aux=True))
        (value, aux), grad = grad_fn(z_s)
        return float(value), np.asarray(grad), np.asarray(aux)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        v = tf.convert_to_tensor(z_s)
        with tf.GradientTape() as tape:
            tape.watch(v)
            out, aux = fn(v)
        return float(out), tape.gradient(out, v).numpy(), aux.numpy()
    v = ops.convert_to_tensor(z_s)
    v.requires_grad_(True)
    out, aux = fn(v)
    out.backward()
    return (
        float(out.detach()),
        v.grad.detach().cpu().numpy(),
        aux.detach().cpu().numpy(),
    )


def _case(shape, seed=0):
    r = np.random.default_rng(seed)
    z_t = (r.normal(size=shape) * 3).astype("float32")
    z_s = (r.normal(size=shape) * 3).astype("float32")
    labels = r.integers(0, shape[-1], size=shape[:-1]).astype("int32")
    weights = r.uniform(0.5, 2.0, size=shape[:-1]).astype("float32")
    if len(shape) == 3:
        weights[1] = 0.0  # a fully masked sequence
        weights[0, -1] = 0.0  # a padding token
    else:
        weights[2] = 0.0
    return z_t, z_s, labels, weights


def _y_true(name, z_t, labels):
    if name == "dkd":
        return targets_with_labels(z_t, labels)
    if name == "soft_target_ce_probabilities":
        e = np.exp(z_t - z_t.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype("float32")
    return z_t


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_chunked_equals_unchunked_value_and_gradient(name, shape_name):
    _check_chunked(name, *SHAPES[shape_name])


@pytest.mark.parametrize("name", ["soft_target_kl", "dkd"])
def test_chunks_of_one_row(name):
    _check_chunked(name, (2, 3, 9), 1)


def _check_chunked(name, shape, chunk):
    z_t, z_s, labels, weights = _case(shape)
    y_true = _y_true(name, z_t, labels)
    results = {}
    for c in (None, chunk):
        loss = LOSSES[name](c)
        assert _chunked.resolve_chunk_size(loss.chunk_size, shape) == c
        results[c] = _student_grad(
            lambda v, loss=loss: (loss(y_true, v, weights), loss.call(y_true, v)),
            z_s,
        )
    (v0, g0, r0), (v1, g1, r1) = results[None], results[chunk]
    assert r1.shape == shape[:-1]
    np.testing.assert_allclose(v1, v0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r1, r0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-6)
    # The masked rows get no gradient; the others do.
    masked = weights == 0
    assert np.all(g1[masked] == 0)
    assert np.all(np.abs(g1[~masked]).sum(-1) > 0)


def test_chunked_equals_unchunked_without_weights_and_reduced_none():
    z_t, z_s, _, _ = _case((3, 4, 17), seed=1)
    for reduction in ("sum_over_batch_size", "none", "sum"):
        got = {}
        for c in (None, 5):
            loss = losses.ReverseKL(reduction=reduction, chunk_size=c)
            got[c] = _student_grad(lambda v, loss=loss: (ops.sum(loss(z_t, v)), v), z_s)
        np.testing.assert_allclose(got[5][0], got[None][0], rtol=1e-6, atol=1e-6)
        # Gradients of size up to 2.2 here: float32 rounds them to about 2e-7,
        # and the reverse KL's (through the first argument's log p - log q)
        # is 1.6e-6 from float64 in either form (TensorFlow's chunks run
        # under XLA, the unchunked form op by op).
        np.testing.assert_allclose(got[5][1], got[None][1], rtol=1e-6, atol=2e-6)


def test_chunked_loss_in_a_compiled_function():
    """Inside the backend's compiled step (jit / tf.function / eager torch)."""
    z_t, z_s, _, weights = _case((2, 5, 13), seed=2)
    loss = {c: losses.SoftTargetKL(temperature=2.0, chunk_size=c) for c in (None, 4)}
    fn = {c: (lambda v, c=c: loss[c](z_t, v, weights)) for c in loss}
    if BACKEND == "jax":
        import jax

        fn = {c: jax.jit(f) for c, f in fn.items()}
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        # Unknown rows: the chunk loop's shapes are dynamic here.
        spec = tf.TensorSpec((None, 5, 13), "float32")
        z_t = tf.constant(z_t)
        fn = {
            c: tf.function(lambda v, c=c: loss[c](z_t[: tf.shape(v)[0]], v, weights))
            for c in loss
        }
        fn = {c: f.get_concrete_function(spec) for c, f in fn.items()}
    v0, g0, _ = _student_grad(lambda v: (fn[None](v), v), z_s)
    v1, g1, _ = _student_grad(lambda v: (fn[4](v), v), z_s)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------- in a Distiller
L, V = 6, 11


def _lm(name, seed):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((L,), dtype="int32")
    h = keras.layers.Embedding(V, 8)(inp)
    return keras.Model(inp, keras.layers.Dense(V)(h), name=name)


@pytest.mark.parametrize(
    "make",
    [
        lambda c: losses.SoftTargetKL(temperature=2.0, chunk_size=c),
        lambda c: losses.GeneralizedJSD(beta=0.5, chunk_size=c),
        lambda c: losses.DecoupledKD(temperature=2.0, chunk_size=c),
    ],
    ids=["kl", "jsd", "dkd"],
)
def test_one_fit_step_gives_the_same_weights_chunked_and_unchunked(make):
    r = np.random.default_rng(4)
    x = r.integers(0, V, size=(5, L)).astype("int32")
    y = np.roll(x, -1, axis=1)
    mask = (np.arange(L)[None] < np.array([[6], [3], [1], [6], [4]])).astype("float32")
    weights = {}
    for c in (None, 5):
        distiller = Distiller(
            student=_lm("student", 0),
            teacher=_lm("teacher", 1),
            soft_loss=make(c),
            alpha=0.7,
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.5))
        distiller.fit(x, y, sample_weight=mask, batch_size=5, epochs=1, verbose=0)
        weights[c] = distiller.student.get_weights()
    before = _lm("student", 0).get_weights()
    for a, b, w0 in zip(weights[None], weights[5], before):
        assert not np.allclose(a, w0)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- the setting
def test_auto_chunks_only_large_vocabularies():
    resolve = _chunked.resolve_chunk_size
    assert resolve("auto", (128, 100)) is None
    assert resolve("auto", (8, 2048, 8191)) is None
    assert resolve("auto", (8, 2048, 32768)) == _chunked.AUTO_CHUNK_ELEMENTS // 32768
    assert resolve("auto", (2048, 256000)) == 8
    assert resolve("auto", (None, 32768)) == 64
    assert resolve("auto", (3, 32768)) is None  # one chunk would hold every row
    assert resolve(None, (8, 2048, 32768)) is None
    assert resolve(4, (3, 4)) is None
    assert resolve(4, (2, 3, 4)) == 4
    for make in LOSSES.values():
        assert make("auto").chunk_size == "auto"
    assert losses.SoftTargetKL().chunk_size == "auto"


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_chunk_size_round_trips_through_the_config(name):
    loss = LOSSES[name](7)
    config = loss.get_config()
    assert config["chunk_size"] == 7
    again = type(loss).from_config(config)
    assert again.chunk_size == 7
    assert type(loss).from_config(LOSSES[name](None).get_config()).chunk_size is None
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(LOSSES[name]("auto"))
    )
    assert restored.chunk_size == "auto"


@pytest.mark.parametrize(
    "bad, error",
    [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)],
)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_chunk_size_is_refused_with_its_value(name, bad, error):
    with pytest.raises(error, match=rf"chunk_size={bad!r}"):
        LOSSES[name](bad)


def test_chunked_loss_refuses_teacher_and_student_of_different_shapes():
    loss = losses.SoftTargetKL(chunk_size=2)
    with pytest.raises(ValueError, match=r"same shape.*\(3, 4\).*\(3, 5\)"):
        loss(np.zeros((3, 4), "float32"), np.zeros((3, 5), "float32"))
