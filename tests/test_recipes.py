"""Every recipe's `compute_loss` equals its docs/paper.md formula (NumPy reference)."""

import inspect

import numpy as np
import pytest
import reference as ref
from helpers import fixed_logits_model
from keras import ops

from keras_tfkd import recipes

_model = fixed_logits_model


def _case(rng, k, n=24):
    z_s = (rng.normal(size=(n, k)) * 4).astype("float32")
    z_t = (rng.normal(size=(n, k)) * 4).astype("float32")
    y = rng.integers(0, k, n)
    x = np.arange(n, dtype="float32")[:, None]
    return x, y, z_s, z_t


def _loss(distiller, x, y, sample_weight=None):
    distiller.compile(optimizer="sgd")
    value = distiller.compute_loss(
        x, ops.convert_to_tensor(y), distiller(x), sample_weight=sample_weight
    )
    return float(ops.convert_to_numpy(value))


K_T = [(2, 1.0), (10, 4.0), (100, 20.0), (100, 40.0), (10, 40.0), (2, 6.0)]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k,t", K_T)
def test_kd_and_tfkd_self(rng, k, t, weighted):
    x, y, z_s, z_t = _case(rng, k)
    w = rng.uniform(size=len(y)).astype("float32") if weighted else None
    student, teacher = _model(z_s, "student"), _model(z_t, "teacher")
    # kl="reference": the reference code's KLm (batch-mean / K), verbatim.
    kd = recipes.kd(student, teacher, alpha=0.9, temperature=t, kl="reference")
    got = _loss(kd, x, y, w)
    np.testing.assert_allclose(got, ref.kd(z_s, z_t, y, 0.9, t, 1.0, w), rtol=1e-4)
    self_kd = recipes.tfkd_self(
        _model(z_s, "s2"),
        _model(z_t, "t2"),
        alpha=0.95,
        temperature=t,
        multiplier=50.0,
        kl="reference",
    )
    expected = ref.kd(z_s, z_t, y, 0.95, t, 50.0, w)
    np.testing.assert_allclose(_loss(self_kd, x, y, w), expected, rtol=1e-4)
    # The default, kl="batchmean": K times KLm.
    clean = recipes.kd(_model(z_s, "s3"), _model(z_t, "t3"), alpha=0.9, temperature=t)
    expected = ref.kd(z_s, z_t, y, 0.9, t, float(k), w)
    np.testing.assert_allclose(_loss(clean, x, y, w), expected, rtol=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k,t", K_T)
def test_tfkd_reg(rng, k, t, weighted):
    x, y, z_s, _ = _case(rng, k)
    w = rng.uniform(size=len(y)).astype("float32") if weighted else None
    distiller = recipes.tfkd_reg(
        _model(z_s, "s"), k, alpha=0.1, temperature=t, multiplier=100.0, kl="reference"
    )
    expected = ref.tfkd_reg(z_s, y, 0.1, t, 100.0, 0.99, w)
    np.testing.assert_allclose(_loss(distiller, x, y, w), expected, rtol=1e-4)
    clean = recipes.tfkd_reg(_model(z_s, "s2"), k, alpha=0.1, temperature=t)
    expected = ref.tfkd_reg(z_s, y, 0.1, t, float(k), 0.99, w)
    np.testing.assert_allclose(_loss(clean, x, y, w), expected, rtol=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [2, 10, 100])
def test_baseline_and_label_smoothing(rng, k, weighted):
    x, y, z_s, _ = _case(rng, k)
    w = rng.uniform(size=len(y)).astype("float32") if weighted else None
    got = _loss(recipes.baseline(_model(z_s, "s")), x, y, w)
    np.testing.assert_allclose(got, ref.ce(z_s, y, w), rtol=1e-5)
    got = _loss(recipes.label_smoothing(_model(z_s, "s2"), k, epsilon=0.1), x, y, w)
    np.testing.assert_allclose(got, ref.lsr(z_s, y, 0.1, w), rtol=1e-5)


def test_batchmean_is_k_times_elementwise_soft_term(rng):
    k, t = 10, 4.0
    x, y, z_s, z_t = _case(rng, k)
    ref_kd = recipes.kd(
        _model(z_s, "a"), _model(z_t, "b"), alpha=1.0, temperature=t, kl="reference"
    )
    clean = recipes.kd(_model(z_s, "c"), _model(z_t, "d"), alpha=1.0, temperature=t)
    np.testing.assert_allclose(_loss(clean, x, y), k * _loss(ref_kd, x, y), rtol=1e-5)


def test_multiplier_over_100_keeps_the_k100_meaning(rng):
    """At K = 100, batch-mean with m/100 equals the reference KLm with m."""
    x, y, z_s, _ = _case(rng, 100)
    reference = recipes.tfkd_reg(
        _model(z_s, "a"),
        100,
        alpha=0.1,
        temperature=20.0,
        multiplier=100.0,
        kl="reference",
    )
    clean = recipes.tfkd_reg(
        _model(z_s, "b"), 100, alpha=0.1, temperature=20.0, multiplier=100.0 / 100
    )
    np.testing.assert_allclose(_loss(clean, x, y), _loss(reference, x, y), rtol=1e-5)


def test_recipe_argument_errors(rng):
    _, _, z_s, _ = _case(rng, 10)
    with pytest.raises(ValueError, match="num_classes"):
        recipes.tfkd_reg(_model(z_s, "s"), 100, alpha=0.1, temperature=20.0)
    with pytest.raises(ValueError, match="`kl` must be one of 'batchmean', 'refer"):
        recipes.kd(
            _model(z_s, "a2"), _model(z_s, "b2"), alpha=0.5, temperature=4.0, kl="sum"
        )
    with pytest.raises(ValueError, match="multiplier"):
        recipes.tfkd_self(
            _model(z_s, "c"),
            _model(z_s, "d"),
            alpha=0.5,
            temperature=4.0,
            multiplier=-1.0,
        )
    with pytest.raises(ValueError, match="alpha"):
        recipes.kd(_model(z_s, "e"), _model(z_s, "f"), alpha=1.5, temperature=4.0)
    with pytest.raises(ValueError, match="temperature"):
        recipes.kd(_model(z_s, "g"), _model(z_s, "h"), alpha=0.5, temperature=0.0)


# ------------------------------------- one argument style (0.x API change)

RECIPES = {
    "baseline": ["student"],
    "label_smoothing": ["student", "num_classes"],
    "kd": ["student", "teacher"],
    "tfkd_self": ["student", "teacher"],
    "tfkd_reg": ["student", "num_classes"],
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_models_are_positional_and_hyperparameters_keyword_only(name):
    params = inspect.signature(getattr(recipes, name)).parameters.values()
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == RECIPES[name]
    assert all(p.kind is p.KEYWORD_ONLY for p in params if p.name not in RECIPES[name])


def test_hyperparameters_passed_positionally_are_type_errors(rng):
    _, _, z_s, z_t = _case(rng, 10)
    calls = [
        lambda: recipes.kd(_model(z_s, "a"), _model(z_t, "b"), 0.9, 4.0),
        lambda: recipes.tfkd_self(_model(z_s, "c"), _model(z_t, "d"), 0.95, 4.0),
        lambda: recipes.tfkd_reg(_model(z_s, "e"), 10, 0.1, 20.0),
        lambda: recipes.label_smoothing(_model(z_s, "f"), 10, 0.2),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="positional argument"):
            call()
    # The 0.1.0 name of `kl` is gone too.
    with pytest.raises(TypeError, match="kl_reduction"):
        recipes.kd(
            _model(z_s, "g"),
            _model(z_t, "h"),
            alpha=0.5,
            temperature=4.0,
            kl_reduction="batchmean",
        )
    with pytest.raises(TypeError, match="alpha"):
        recipes.kd(_model(z_s, "i"), _model(z_t, "j"), temperature=4.0)
