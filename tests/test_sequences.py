"""Sequence outputs (N, L, V): every term is a mean over the unmasked tokens."""

import keras
import numpy as np
import pytest
import reference as ref
from helpers import fixed_logits_model

from keras_tfkd import Distiller, losses, recipes, teachers

N, L, V = 4, 5, 7
# A ragged padding mask: full, half, one token, none.
MASK = np.array(
    [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], "float32"
)


def _case(seed=0):
    r = np.random.default_rng(seed)
    z_s = r.normal(size=(N, L, V)).astype("float32") * 2
    z_t = r.normal(size=(N, L, V)).astype("float32") * 2
    y = r.integers(0, V, size=(N, L)).astype("int32")
    return z_s, z_t, y


def _token_mean(per_token, mask):
    return float((per_token * mask).sum() / mask.sum()) if mask.sum() else 0.0


def _ce(z_s, y):
    return -np.take_along_axis(ref.log_softmax(z_s), y[..., None], -1)[..., 0]


def _kl(z_t, z_s, t):
    return t**2 * ref.kl_per_sample(ref.softmax(z_t / t), ref.log_softmax(z_s / t))


def _loss(distiller, z_s, y, mask):
    x = np.arange(N)[:, None]
    return float(
        distiller.compute_loss(
            x=x, y=y, y_pred=keras.ops.convert_to_tensor(z_s), sample_weight=mask
        )
    )


def test_kd_on_sequences_is_the_token_mean_of_each_term():
    z_s, z_t, y = _case()
    teacher = fixed_logits_model(z_t, "teacher")
    kd = recipes.kd(fixed_logits_model(z_s, "s"), teacher, alpha=0.7, temperature=2.0)
    expected = 0.3 * _token_mean(_ce(z_s, y), MASK) + 0.7 * _token_mean(
        _kl(z_t, z_s, 2.0), MASK
    )
    np.testing.assert_allclose(_loss(kd, z_s, y, MASK), expected, rtol=1e-5)
    # No mask: the mean over every token, as Keras's default reduction.
    no_mask = 0.3 * _ce(z_s, y).mean() + 0.7 * _kl(z_t, z_s, 2.0).mean()
    np.testing.assert_allclose(_loss(kd, z_s, y, None), no_mask, rtol=1e-5)
    # One weight per sequence (N,) weighs each of its tokens.
    per_sequence = np.array([1.0, 2.0, 0.0, 1.0], "float32")
    tokens = np.broadcast_to(per_sequence[:, None], (N, L))
    expected = 0.3 * _token_mean(_ce(z_s, y), tokens) + 0.7 * _token_mean(
        _kl(z_t, z_s, 2.0), tokens
    )
    np.testing.assert_allclose(_loss(kd, z_s, y, per_sequence), expected, rtol=1e-5)


def _distillers(z_s, z_t):
    student = fixed_logits_model(z_s, "student")
    return {
        "kd": recipes.kd(
            student, fixed_logits_model(z_t, "t"), alpha=0.5, temperature=4.0
        ),
        "tfkd_reg": recipes.tfkd_reg(student, V, alpha=0.5, temperature=20.0),
        "label_smoothing": recipes.label_smoothing(student, V, epsilon=0.1),
        "uniform": Distiller(
            student=student, teacher=teachers.UniformTeacher(V), alpha=0.3
        ),
        "dkd": recipes.dkd(
            student, fixed_logits_model(z_t, "t2"), temperature=4.0, warmup_epochs=0
        ),
    }


@pytest.mark.parametrize(
    "method", ["kd", "tfkd_reg", "label_smoothing", "uniform", "dkd"]
)
def test_padding_cannot_leak_into_any_term(method):
    """Scrambling the logits (student and teacher) and labels at masked tokens
    changes no loss."""
    z_s, z_t, y = _case()
    r = np.random.default_rng(9)
    masked = MASK[..., None] == 0
    z_s2 = np.where(masked, r.normal(size=z_s.shape) * 50, z_s).astype("float32")
    z_t2 = np.where(masked, r.normal(size=z_t.shape) * 50, z_t).astype("float32")
    y2 = np.where(MASK == 0, r.integers(0, V, size=y.shape), y).astype("int32")
    a = _loss(_distillers(z_s, z_t)[method], z_s, y, MASK)
    b = _loss(_distillers(z_s2, z_t2)[method], z_s2, y2, MASK)
    assert np.isfinite(a)
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_tfkd_reg_and_label_smoothing_per_token_match_numpy():
    z_s, _, y = _case(1)
    reg = recipes.tfkd_reg(
        fixed_logits_model(z_s, "s"), V, alpha=0.4, temperature=20.0, multiplier=2.0
    )
    flat_y = y.reshape(-1)
    p_t = ref.softmax(ref.virtual_teacher(flat_y, V) / 20.0).reshape(N, L, V)
    soft = 2.0 * ref.kl_per_sample(p_t, ref.log_softmax(z_s))
    expected = 0.6 * _token_mean(_ce(z_s, y), MASK) + 0.4 * _token_mean(soft, MASK)
    np.testing.assert_allclose(_loss(reg, z_s, y, MASK), expected, rtol=1e-5)

    lsr = recipes.label_smoothing(fixed_logits_model(z_s, "s2"), V, epsilon=0.2)
    q = np.full((N, L, V), 0.2 / (V - 1))
    np.put_along_axis(q, y[..., None], 0.8, -1)
    per = -(q * ref.log_softmax(z_s)).sum(-1)
    np.testing.assert_allclose(
        _loss(lsr, z_s, y, MASK), _token_mean(per, MASK), rtol=1e-5
    )


def test_a_fully_masked_batch_gives_zero_not_nan():
    z_s, z_t, y = _case()
    for method, distiller in _distillers(z_s, z_t).items():
        value = _loss(distiller, z_s, y, np.zeros((N, L), "float32"))
        assert value == 0.0, method


def test_classifier_outputs_keep_keras_reduction():
    """(N, K) with weights: the weighted sum over N (not over the weights)."""
    r = np.random.default_rng(2)
    z_s = r.normal(size=(N, V)).astype("float32")
    y = r.integers(0, V, size=N).astype("int32")
    w = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    base = recipes.baseline(fixed_logits_model(z_s, "c"))
    got = float(
        base.compute_loss(x=np.arange(N)[:, None], y=y, y_pred=z_s, sample_weight=w)
    )
    np.testing.assert_allclose(got, ref.ce(z_s, y, w), rtol=1e-5)


# ------------------------------------------------------------ fit on tokens
def _lm(name, seed, vocab=V):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((L,), dtype="int32")
    h = keras.layers.Embedding(vocab, 8)(inp)
    out = keras.layers.Dense(vocab)(keras.layers.Dense(8, activation="relu")(h))
    return keras.Model(inp, out, name=name)


def _tokens(seed=3, n=16):
    r = np.random.default_rng(seed)
    x = r.integers(0, V, size=(n, L)).astype("int32")
    y = np.roll(x, -1, axis=1)
    mask = (np.arange(L)[None] < r.integers(1, L + 1, size=(n, 1))).astype("float32")
    return x, y, mask


@pytest.mark.parametrize("method", ["kd", "tfkd_reg", "label_smoothing"])
def test_recipes_fit_next_token_labels_with_a_padding_mask(method):
    x, y, mask = _tokens()
    student = _lm("student", 0)
    before = [w.copy() for w in student.get_weights()]
    make = {
        "kd": lambda: recipes.kd(
            student, _lm("teacher", 1), alpha=0.5, temperature=2.0
        ),
        "tfkd_reg": lambda: recipes.tfkd_reg(student, V, alpha=0.5, temperature=20.0),
        "label_smoothing": lambda: recipes.label_smoothing(student, V, epsilon=0.1),
    }
    distiller = make[method]()
    assert distiller.token_axes == 2
    distiller.compile(optimizer="adam")
    history = distiller.fit(x, y, sample_weight=mask, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.allclose(a, b) for a, b in zip(before, student.get_weights()))
    logs = distiller.evaluate(x, y, sample_weight=mask, verbose=0, return_dict=True)
    assert np.isfinite(logs["loss"])


def test_sequence_labels_and_masks_get_clear_errors():
    x, y, mask = _tokens()
    distiller = recipes.kd(_lm("s", 0), _lm("t", 1), alpha=0.5, temperature=2.0)
    distiller.compile(optimizer="sgd")
    before = [w.copy() for w in distiller.student.get_weights()]
    with pytest.raises(ValueError, match=r"label 7, outside \[0, 7\)"):
        distiller.fit(x, np.where(y == 0, V, y), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"integer token ids of shape \(N, L\)"):
        distiller.fit(x, y[:, :, None, None], epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"one weight per token \(16, 5\)"):
        distiller.fit(x, y, sample_weight=mask[:, :3], epochs=1, verbose=0)
    with pytest.raises(ValueError, match="one-hot rows of width 3"):
        distiller.fit(x, np.eye(3)[y % 3], epochs=1, verbose=0)
    for a, b in zip(before, distiller.student.get_weights()):
        np.testing.assert_array_equal(a, b)
    # One-hot token rows are labels too.
    distiller.fit(x, np.eye(V, dtype="float32")[y], sample_weight=mask, verbose=0)


def test_soft_losses_called_alone_keep_keras_reduction():
    """Outside a Distiller a loss is a plain keras.losses.Loss: the default
    reduction divides by every token; reduction="mean_with_sample_weight"
    gives the token mean."""
    z_s, z_t, _ = _case()
    per = _kl(z_t, z_s, 2.0)
    kl = losses.SoftTargetKL(temperature=2.0)
    np.testing.assert_allclose(
        float(kl(z_t, z_s, sample_weight=MASK)), (per * MASK).sum() / (N * L), rtol=1e-5
    )
    token_mean = losses.SoftTargetKL(
        temperature=2.0, reduction="mean_with_sample_weight"
    )
    np.testing.assert_allclose(
        float(token_mean(z_t, z_s, sample_weight=MASK)),
        _token_mean(per, MASK),
        rtol=1e-5,
    )


def test_online_teachers_that_cannot_scale_to_a_vocabulary_say_what_they_need():
    student = _lm("student", 0, vocab=50)
    with pytest.raises(ValueError, match=r"PS-KD .*1,000 x 5 x 50 values \(200 bytes"):
        recipes.ps_kd(student, alpha=0.8, num_examples=1000)
    with pytest.raises(
        ValueError,
        match=r"two 50 x 50 float32 matrices over the vocabulary \(20,000 bytes",
    ):
        recipes.online_label_smoothing(student, alpha=0.5)
    with pytest.raises(ValueError, match="a sequence has a label per token"):
        recipes.cs_kd(student, temperature=4.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda **k: losses.ReverseKL(temperature=2.0, **k),
        lambda **k: losses.GeneralizedJSD(beta=0.3, **k),
        lambda **k: losses.SkewKL(skew=0.1, reverse=True, **k),
        lambda **k: losses.TotalVariation(**k),
    ],
    ids=["reverse_kl", "jsd", "skew_kl", "tv"],
)
def test_token_level_divergences_in_a_distiller_are_token_means(make):
    z_s, z_t, y = _case(4)
    per_token = keras.ops.convert_to_numpy(make(reduction="none")(z_t, z_s))
    assert per_token.shape == (N, L)
    distiller = Distiller(
        student=fixed_logits_model(z_s, "s"),
        teacher=fixed_logits_model(z_t, "t"),
        soft_loss=make(),
        alpha=0.5,
    )
    expected = 0.5 * _token_mean(_ce(z_s, y), MASK) + 0.5 * _token_mean(per_token, MASK)
    np.testing.assert_allclose(_loss(distiller, z_s, y, MASK), expected, rtol=1e-5)
