"""The soft-target losses against NumPy references of their formulas."""

import keras
import numpy as np
import pytest
import reference as ref
from keras import ops

from keras_tfkd import losses


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype="float64")


@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("t_s,t_t", [(1.0, 1.0), (4.0, 4.0), (1.0, 20.0), (40.0, 40.0)])
def test_soft_target_kl_matches_numpy(rng, k, t_s, t_t):
    z_t = rng.normal(size=(16, k)).astype("float32") * 3
    z_s = rng.normal(size=(16, k)).astype("float32") * 3
    w = rng.uniform(size=16).astype("float32")
    loss = losses.SoftTargetKL(temperature=t_s, teacher_temperature=t_t, multiplier=0.5)
    per = ref.kl_per_sample(ref.softmax(z_t / t_t), ref.log_softmax(z_s / t_s))
    expected = 0.5 * t_s**2 * ref.weighted_mean(per, w)
    np.testing.assert_allclose(
        _np(loss(z_t, z_s, sample_weight=w)), expected, rtol=1e-4
    )
    no_t2 = losses.SoftTargetKL(t_s, t_t, multiplier=0.5, temperature_squared=False)
    np.testing.assert_allclose(_np(no_t2(z_t, z_s)), 0.5 * per.mean(), rtol=1e-4)
    # kl="reference": the reference code's nn.KLDivLoss(), a mean over N*K.
    reference = losses.SoftTargetKL(t_s, t_t, multiplier=0.5, kl="reference")
    np.testing.assert_allclose(
        _np(reference(z_t, z_s, sample_weight=w)), expected / k, rtol=1e-4
    )
    xent = losses.SoftTargetCrossEntropy(t_s, t_t, kl="reference")
    full = losses.SoftTargetCrossEntropy(t_s, t_t)
    np.testing.assert_allclose(_np(xent(z_t, z_s)), _np(full(z_t, z_s)) / k, rtol=1e-5)


def test_soft_target_cross_entropy_is_kl_plus_teacher_entropy(rng):
    z_t = rng.normal(size=(8, 5)).astype("float32")
    z_s = rng.normal(size=(8, 5)).astype("float32")
    p_t = ref.softmax(z_t / 2.0)
    entropy = -(p_t * np.log(p_t)).sum(-1).mean()
    kl = _np(losses.SoftTargetKL(2.0, temperature_squared=False)(z_t, z_s))
    xent = _np(losses.SoftTargetCrossEntropy(2.0, temperature_squared=False)(z_t, z_s))
    np.testing.assert_allclose(xent, kl + entropy, rtol=1e-5)


def test_kl_is_zero_for_identical_logits_and_positive_otherwise(rng):
    z = rng.normal(size=(4, 7)).astype("float32")
    loss = losses.SoftTargetKL(temperature=3.0)
    assert abs(float(_np(loss(z, z)))) < 1e-6
    assert float(_np(loss(z, z[::-1]))) > 1e-3


@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("label_shape", ["flat", "column", "one_hot"])
def test_label_smoothing_matches_paper_formula(rng, k, label_shape):
    z = rng.normal(size=(12, k)).astype("float32") * 2
    y = rng.integers(0, k, 12)
    w = rng.uniform(size=12)
    labels = {"flat": y, "column": y[:, None], "one_hot": ref.one_hot(y, k)}[
        label_shape
    ]
    got = _np(losses.LabelSmoothingCrossEntropy(0.1)(labels, z, sample_weight=w))
    np.testing.assert_allclose(got, ref.lsr(z, y, 0.1, w), rtol=1e-5)


def test_label_smoothing_differs_from_keras_eps_over_k(rng):
    """Keras smooths to eps/K; the paper uses eps/(K-1): the two must differ."""
    z = rng.normal(size=(6, 4)).astype("float32")
    y = rng.integers(0, 4, 6)
    ours = _np(losses.LabelSmoothingCrossEntropy(0.1)(y, z))
    keras_ls = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=0.1
    )
    theirs = _np(keras_ls(ref.one_hot(y, 4), z))
    np.testing.assert_allclose(ours, ref.lsr(z, y, 0.1), rtol=1e-5)
    assert abs(ours - theirs) > 1e-4


def test_losses_are_finite_for_huge_logits_and_temperature():
    """Logits of 1e4 (exp overflows float32) give the float64 values, not
    inf or NaN: to a few float32 ulps (rtol 1e-6)."""
    z_t = np.array([[1e3, -1e3, 0.0], [-1e4, 1e4, 5.0]], "float32")
    z_s = np.array([[-1e3, 1e3, 0.0], [1e4, -1e4, 0.0]], "float32")
    for loss, t in (
        (losses.SoftTargetKL(temperature=1.0), 1.0),
        (losses.SoftTargetKL(temperature=40.0), 40.0),
        (losses.SoftTargetCrossEntropy(temperature=100.0), 100.0),
    ):
        p_t, log_q = ref.softmax(z_t / t), ref.log_softmax(z_s / t)
        if isinstance(loss, losses.SoftTargetCrossEntropy):
            per = -(p_t * log_q).sum(-1)
        else:
            per = ref.kl_per_sample(p_t, log_q)
        got = _np(loss(z_t, z_s))
        assert np.isfinite(got)
        np.testing.assert_allclose(got, t**2 * per.mean(), rtol=1e-6)
    lsr = _np(losses.LabelSmoothingCrossEntropy(0.1)([0, 1], z_s))
    assert np.isfinite(lsr)
    np.testing.assert_allclose(lsr, ref.lsr(z_s, [0, 1], 0.1), rtol=1e-6)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: losses.SoftTargetKL(
            temperature=3.0, teacher_temperature=7.0, multiplier=0.2
        ),
        lambda: losses.SoftTargetKL(temperature=2.0, multiplier=3.0, kl="reference"),
        lambda: losses.SoftTargetCrossEntropy(
            temperature=2.0, temperature_squared=False
        ),
        lambda: losses.LabelSmoothingCrossEntropy(epsilon=0.2),
    ],
)
def test_loss_config_round_trip(rng, factory):
    loss = factory()
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(clone) is type(loss)
    assert clone.get_config() == loss.get_config()
    z_t = rng.normal(size=(4, 5)).astype("float32")
    z_s = rng.normal(size=(4, 5)).astype("float32")
    y_true = np.array([0, 1, 2, 3]) if "lsr" in loss.name else z_t
    np.testing.assert_allclose(
        _np(clone(y_true, z_s)), _np(loss(y_true, z_s)), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"teacher_temperature": 0}, "teacher_temperature"),
        ({"multiplier": -1.0}, "multiplier"),
        ({"multiplier": float("inf")}, "multiplier"),
        ({"kl": "elementwise_mean"}, "kl"),
    ],
)
def test_soft_target_kl_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.SoftTargetKL(**kwargs)


@pytest.mark.parametrize("epsilon", [-0.1, 1.0, float("inf")])
def test_label_smoothing_rejects_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        losses.LabelSmoothingCrossEntropy(epsilon)
