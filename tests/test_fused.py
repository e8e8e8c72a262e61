"""The fused projection: the same loss and gradients as logits-then-loss.

`keras_tfkd.fused` applies the student's output projection chunk by chunk
inside the loss (`keras_tfkd._fused`, each backend's loop and custom
gradient). Here: `projection_losses` == the losses on the whole logits
(value, and gradient with respect to the hidden states, the kernel and the
bias) for a Dense head and a tied embedding, with a mask, a fully masked
sequence and a ragged last chunk; a KerasHub GPT2CausalLM distilled with
``fused_projection=True`` takes the same step as without (loss values, and
the gradient of every trainable weight, read off one SGD step); and the
refusals, each naming the argument.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfkd import Distiller, fused, losses, teachers

BACKEND = keras.backend.backend()
N, L, D, V = 2, 5, 6, 13


def _grads(fn, *arrays):
    """``fn(*arrays) -> scalar``: its value and gradient for every array."""
    if BACKEND == "jax":
        import jax

        value, grads = jax.jit(jax.value_and_grad(fn, argnums=range(len(arrays))))(
            *arrays
        )
        return float(value), [np.asarray(g) for g in grads]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(*tensors)
        return float(value), [g.numpy() for g in tape.gradient(value, tensors)]
    tensors = [ops.convert_to_tensor(a).requires_grad_(True) for a in arrays]
    value = fn(*tensors)
    value.backward()
    return float(value.detach()), [t.grad.cpu().numpy() for t in tensors]


def _case(seed=0):
    r = np.random.default_rng(seed)
    hidden = r.normal(size=(N, L, D)).astype("float32")
    z_t = (r.normal(size=(N, L, V)) * 3).astype("float32")
    labels = r.integers(0, V, size=(N, L)).astype("int32")
    weights = np.ones((N, L), "float32")
    weights[1] = 0.0  # a fully masked sequence
    weights[0, -2:] = 0.0  # padding tokens
    return hidden, z_t, labels, weights


SOFT = [
    lambda c: losses.SoftTargetKL(temperature=2.0, chunk_size=c),
    lambda c: losses.ReverseKL(temperature=1.5, chunk_size=c),
]
ALPHAS = (0.5, 0.3, 0.2)


def _whole(hidden, kernel, bias, labels, z_t, weights, tied):
    """The logits-then-loss reference: Keras's CE and the unchunked losses."""
    z = ops.matmul(hidden, ops.transpose(kernel) if tied else kernel)
    if bias is not None:
        z = z + bias
    w = weights * (N * L) / weights.sum()  # tokens.token_weights
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    total = ALPHAS[0] * ce(labels, z, sample_weight=w)
    for alpha, make in zip(ALPHAS[1:], SOFT):
        total = total + alpha * make(None)(z_t, z, sample_weight=w)
    return total


@pytest.mark.parametrize(
    "tied, chunk, coefficients",
    [(False, 4, None), (True, 4, None), (False, 64, None), (False, 4, ALPHAS)],
    ids=["dense_with_bias_ragged", "tied_ragged", "one_chunk", "one_gradient"],
)
def test_linear_losses_equal_the_losses_on_the_whole_logits(tied, chunk, coefficients):
    """Every output's own gradient, or (``coefficients``, as the Distiller
    passes its loss weights) one gradient per chunk, of the weighted sum."""
    hidden, z_t, labels, weights = _case()
    r = np.random.default_rng(1)
    kernel = r.normal(size=(V, D) if tied else (D, V)).astype("float32")
    bias = None if tied else r.normal(size=(V,)).astype("float32")

    def fused_loss(h, k, *b):
        hard, soft = fused.linear_losses(
            h,
            k,
            labels,
            bias=b[0] if b else None,
            soft=[(make(chunk), z_t) for make in SOFT],
            sample_weight=weights,
            chunk_size=chunk,
            tied=tied,
            coefficients=coefficients,
        )
        return ALPHAS[0] * hard + ALPHAS[1] * soft[0] + ALPHAS[2] * soft[1]

    def whole_loss(h, k, *b):
        return _whole(h, k, b[0] if b else None, labels, z_t, weights, tied)

    arrays = (hidden, kernel) + (() if tied else (bias,))
    got_value, got = _grads(fused_loss, *arrays)
    want_value, want = _grads(whole_loss, *arrays)
    np.testing.assert_allclose(got_value, want_value, rtol=1e-5)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_zero_coefficients_give_a_zero_gradient_and_the_values():
    """A warm-up's first step weighs every term 0: no NaN from c / |c|^2."""
    hidden, z_t, labels, weights = _case(4)
    kernel = np.random.default_rng(5).normal(size=(D, V)).astype("float32")
    zero = (0.0, 0.0, 0.0)

    def loss(h, k):
        hard, soft = fused.linear_losses(
            h,
            k,
            labels,
            soft=[(make(4), z_t) for make in SOFT],
            sample_weight=weights,
            chunk_size=4,
            coefficients=zero,
        )
        return 0.0 * hard + 0.0 * soft[0] + 0.0 * soft[1] + ops.stop_gradient(hard)

    value, grads = _grads(loss, hidden, kernel)
    assert value > 0.1  # the hard value is there
    for g in grads:
        assert np.all(g == 0.0)


def test_each_output_keeps_its_own_value():
    hidden, z_t, labels, weights = _case(2)
    kernel = np.random.default_rng(3).normal(size=(D, V)).astype("float32")
    hard, (kl, rkl) = fused.linear_losses(
        hidden,
        kernel,
        labels,
        soft=[(make(3), z_t) for make in SOFT],
        sample_weight=weights,
    )
    z = hidden @ kernel
    w = weights * (N * L) / weights.sum()
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(float(hard), float(ce(labels, z, w)), rtol=1e-5)
    np.testing.assert_allclose(float(kl), float(SOFT[0](None)(z_t, z, w)), rtol=1e-5)
    np.testing.assert_allclose(float(rkl), float(SOFT[1](None)(z_t, z, w)), rtol=1e-5)


# ------------------------------------------------------- the Distiller, GPT-2
keras_hub = pytest.importorskip("keras_hub")
from test_causal_lm import V as LM_V  # noqa: E402
from test_causal_lm import _gpt2  # noqa: E402  (GPT-2 from a config, V = LM_V)

LM_L = 7


def _lm_batch(seed=0, n=4):
    r = np.random.default_rng(seed)
    ids = r.integers(1, LM_V, size=(n, LM_L)).astype("int32")
    mask = np.arange(LM_L)[None] < r.integers(2, LM_L + 1, size=(n, 1))
    ids = np.where(mask, ids, 0).astype("int32")
    return {"token_ids": ids, "padding_mask": mask}, np.roll(ids, -1, 1), mask


@pytest.fixture(scope="module")
def teacher():
    return _gpt2(1, num_layers=2)


def _step(student, teacher, fused_projection, chunk=5, soft_loss=None, x=None):
    """One SGD step (learning rate 1): the logs and every weight's gradient.

    `soft_loss` defaults to every loss of `SOFT` with `chunk` rows a chunk;
    `x` to the batch's token ids (a teacher's packed inputs, say)."""
    distiller = Distiller(
        student=student,
        teacher=teacher,
        soft_loss=[make(chunk) for make in SOFT] if soft_loss is None else soft_loss,
        alpha=0.5,
        fused_projection=fused_projection,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(1.0))
    batch, y, mask = _lm_batch()
    x = batch if x is None else x
    before = [ops.convert_to_numpy(v) for v in student.trainable_weights]
    logs = distiller.train_on_batch(
        x, y, sample_weight=mask.astype("float32"), return_dict=True
    )
    after = [ops.convert_to_numpy(v) for v in student.trainable_weights]
    return logs, [b - a for b, a in zip(before, after)], distiller


def test_a_fused_causal_lm_takes_the_same_step_as_logits_then_loss(teacher):
    # 4 x 7 = 28 tokens in chunks of 5: a ragged last chunk; padding masked.
    logs, grads, _ = _step(_gpt2(0), teacher, None)
    fused_logs, fused_grads, distiller = _step(_gpt2(0), teacher, True)
    for name in ("loss", "hard_loss", "soft_loss"):
        np.testing.assert_allclose(fused_logs[name], logs[name], rtol=1e-5)
    assert len(grads) == len(distiller.student.trainable_weights) > 10
    for g, want in zip(fused_grads, grads):
        np.testing.assert_allclose(g, want, atol=1e-5)
    assert any(np.abs(g).max() > 1e-3 for g in fused_grads)
    # Outside training the student computes its logits as usual.
    assert tuple(distiller(_lm_batch(1)[0]).shape) == (4, LM_L, LM_V)
    # The option is part of the config.
    assert distiller.get_config()["fused_projection"] is True


def _dense_lm(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((LM_L,), dtype="int32")
    h = keras.layers.Embedding(LM_V, 8)(inputs)
    h = keras.layers.Activation("tanh")(keras.layers.Dense(8, name="mid")(h))
    return keras.Model(inputs, keras.layers.Dense(LM_V, name="head")(h))


def test_a_named_dense_head_with_bias_fuses_too():
    teacher = _dense_lm(5)
    x, y, mask = _lm_batch(2)
    runs = []
    for fused_projection in (None, "head"):
        distiller = Distiller(
            student=_dense_lm(4),
            teacher=teacher,
            soft_loss=losses.SoftTargetKL(temperature=2.0, chunk_size=3),
            alpha=0.5,
            fused_projection=fused_projection,
        )
        distiller.compile(optimizer=keras.optimizers.SGD(1.0))
        student = distiller.student
        before = [ops.convert_to_numpy(v) for v in student.trainable_weights]
        logs = distiller.train_on_batch(
            x["token_ids"], y, sample_weight=mask, return_dict=True
        )
        after = [ops.convert_to_numpy(v) for v in student.trainable_weights]
        runs.append((logs, [b - a for b, a in zip(before, after)]))
    (logs, grads), (fused_logs, fused_grads) = runs
    np.testing.assert_allclose(fused_logs["loss"], logs["loss"], rtol=1e-5)
    for g, want in zip(fused_grads, grads):
        np.testing.assert_allclose(g, want, atol=1e-5)


@pytest.mark.parametrize("kind", ["cached", "virtual"])
def test_teachers_of_dense_targets_fuse_to_the_same_step(teacher, kind):
    """A CachedTeacher's logits (the LM study's KD) and a VirtualTeacher
    (Tf-KD_reg, from the labels) feed the fused losses chunk by chunk."""
    x, _, _ = _lm_batch()

    def make_teacher():
        if kind == "cached":
            cached = teachers.CachedTeacher.from_model(teacher, x)
            return cached, cached.attach(x)
        return teachers.VirtualTeacher(num_classes=LM_V, correct_prob=0.9), x

    def step(fused_projection):
        soft = losses.SoftTargetKL(temperature=2.0, chunk_size=5)
        taught_by, inputs = make_teacher()
        return _step(_gpt2(0), taught_by, fused_projection, soft_loss=soft, x=inputs)

    (logs, grads, _), (fused_logs, fused_grads, _) = step(None), step(True)
    for name in ("loss", "hard_loss", "soft_loss"):
        np.testing.assert_allclose(fused_logs[name], logs[name], rtol=1e-5)
    assert fused_logs["soft_loss"] > 1e-3  # the teacher's term was there
    for g, want in zip(fused_grads, grads):
        np.testing.assert_allclose(g, want, atol=1e-5)


def test_dkd_fuses_each_chunk_with_its_labels(teacher):
    """DKD reads the labels (its target class): each chunk of rows meets its
    own labels, the ragged last chunk too, and the step is the unfused one."""

    def step(fused_projection):
        dkd = losses.DecoupledKD(nckd_weight=2.0, temperature=2.0, chunk_size=5)
        return _step(_gpt2(0), teacher, fused_projection, soft_loss=dkd)

    (logs, grads, _), (fused_logs, fused_grads, _) = step(None), step(True)
    for name in ("loss", "hard_loss", "soft_loss"):
        np.testing.assert_allclose(fused_logs[name], logs[name], rtol=1e-5)
    assert fused_logs["soft_loss"] > 1e-3
    for g, want in zip(fused_grads, grads):
        np.testing.assert_allclose(g, want, atol=1e-5)


def test_a_topk_cache_fuses_to_the_same_step(teacher, tmp_path):
    """A TopKTeacher's packed rows (k ids, log-probabilities, tail, T) meet
    each chunk's logits: the step is the unfused one, both tail choices (one
    loss each, in one step)."""
    from keras_tfkd import topk

    x, y, mask = _lm_batch()
    cache = topk.write_topk_cache(tmp_path, teacher, x, k=4, temperature=2.0)
    cached = topk.TopKTeacher(cache)
    packed = cached.batches(x, y, mask, batch_size=len(y), shuffle=False)[0][0]

    def step(fused_projection):
        soft = [
            topk.TopKLoss(losses.SoftTargetKL(temperature=2.0, chunk_size=5)),
            topk.TopKLoss(
                losses.ReverseKL(temperature=2.0, chunk_size=5), "renormalise"
            ),
        ]
        return _step(_gpt2(0), cached, fused_projection, soft_loss=soft, x=packed)

    (logs, grads, _), (fused_logs, fused_grads, _) = step(None), step(True)
    for name in ("loss", "hard_loss", "soft_loss"):
        np.testing.assert_allclose(fused_logs[name], logs[name], rtol=1e-5)
    assert fused_logs["soft_loss"] > 1e-4  # two near-uniform models: small
    for g, want in zip(fused_grads, grads):
        np.testing.assert_allclose(g, want, atol=1e-5)


# ------------------------------------------------------------------ refusals
def test_what_cannot_be_fused_is_refused_naming_the_argument(teacher):
    student = _gpt2(0)
    with pytest.raises(ValueError, match=r"fused_projection=True needs a KerasHub"):
        Distiller(student=_dense_lm(0), teacher=_dense_lm(1), fused_projection=True)
    with pytest.raises(ValueError, match=r"fused_projection='mid'.*final layer"):
        Distiller(student=_dense_lm(0), teacher=_dense_lm(1), fused_projection="mid")
    with pytest.raises(TypeError, match=r"fused_projection=3"):
        Distiller(student=student, teacher=teacher, fused_projection=3)
    with pytest.raises(ValueError, match=r"KLDivergence.*cannot be fused"):
        Distiller(
            student=student,
            teacher=teacher,
            soft_loss=keras.losses.KLDivergence(),
            fused_projection=True,
        )
    from keras_tfkd.online import OnlineSoftLabels
    from keras_tfkd.topk import TopKLoss

    with pytest.raises(
        ValueError, match=r"True cannot fuse.*OnlineSoftLabels learns from the student"
    ):
        Distiller(
            student=student,
            teacher=OnlineSoftLabels(num_classes=LM_V),
            soft_loss=losses.SoftTargetCrossEntropy(targets="probabilities"),
            fused_projection=True,
        )

    class Packed(teachers.Teacher):  # a form the chunks cannot split
        targets = "pairs"

    class OnPairs(keras.losses.Loss):
        targets = "pairs"

        def call(self, y_true, y_pred):
            return ops.zeros(ops.shape(y_pred)[:-1])

    with pytest.raises(ValueError, match=r"Packed hands the loss 'pairs' targets"):
        Distiller(
            student=student,
            teacher=Packed(LM_V),
            soft_loss=OnPairs(),
            fused_projection=True,
        )
    # A top-k loss with a teacher of dense logits: the loss names the fix.
    with pytest.raises(ValueError, match=r"TopKLoss"):
        Distiller(
            student=student,
            teacher=teacher,
            soft_loss=TopKLoss(losses.SoftTargetKL()),
            fused_projection=True,
        )
    distiller = Distiller(student=student, teacher=teacher, fused_projection=True)
    with pytest.raises(ValueError, match=r"fused_projection=True: compiled metrics"):
        distiller.compile(optimizer="sgd", metrics=["accuracy"])
    distiller.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError())
    x, y, mask = _lm_batch()
    with pytest.raises(ValueError, match=r"sparse cross-entropy on logits"):
        distiller.train_on_batch(x, y, sample_weight=mask)


def test_a_soft_capped_head_is_refused():
    layer = keras.layers.ReversibleEmbedding(LM_V, 4, logit_soft_cap=30.0)
    layer.build((None,))
    with pytest.raises(ValueError, match=r"soft-caps its logits"):
        fused.projection_losses(np.zeros((2, 4), "float32"), layer, np.zeros(2))
