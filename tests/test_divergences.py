"""The token-level divergences against float64 NumPy references of their formulas.

`ReverseKL`, `GeneralizedJSD`, `SkewKL` and `TotalVariation` on ``(N, K)`` and
``(N, L, V)`` logits, with padding masks, at the ends of their parameters, in
float16/bfloat16 with logits of magnitude 1e4, through autodiff and through
serialisation. Shapes are tiny and few (eager JAX compiles each op once per
shape).
"""

import json

import keras
import numpy as np
import pytest
import reference as ref
from keras import ops

from keras_tfkd import divergences, losses

BACKEND = keras.backend.backend()
FLAT = (4, 7)  # (N, K)
TOKENS = (3, 5, 11)  # (N, L, V)
# A ragged padding mask (N, L): rows of 3 and 5 tokens, and a fully masked row.
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], "float32")

# (loss, float64 reference of its per-row values): every setting a test compares.
CASES = {
    "reverse_kl": (
        lambda: losses.ReverseKL(),
        lambda z_t, z_s: ref.reverse_kl(z_t, z_s),
    ),
    "reverse_kl_T2.5_squared": (
        lambda: losses.ReverseKL(temperature=2.5, temperature_squared=True),
        lambda z_t, z_s: 2.5**2 * ref.reverse_kl(z_t, z_s, 2.5),
    ),
    **{
        f"jsd_beta{beta}": (
            lambda beta=beta: losses.GeneralizedJSD(beta=beta, temperature=2.0),
            lambda z_t, z_s, beta=beta: ref.generalized_jsd(z_t, z_s, beta, 2.0),
        )
        for beta in (0.0, 0.5, 1.0)
    },
    "jsd_beta0.9_squared": (
        lambda: losses.GeneralizedJSD(0.9, temperature=3.0, temperature_squared=True),
        lambda z_t, z_s: 9.0 * ref.generalized_jsd(z_t, z_s, 0.9, 3.0),
    ),
    "skew_kl": (
        lambda: losses.SkewKL(skew=0.1),
        lambda z_t, z_s: ref.skew_kl(z_t, z_s, 0.1),
    ),
    "skew_reverse_kl_T2_squared": (
        lambda: losses.SkewKL(0.3, True, temperature=2.0, temperature_squared=True),
        lambda z_t, z_s: 4.0 * ref.skew_kl(z_t, z_s, 0.3, reverse=True, t=2.0),
    ),
    "total_variation_T3": (
        lambda: losses.TotalVariation(temperature=3.0),
        lambda z_t, z_s: ref.total_variation(z_t, z_s, 3.0),
    ),
}


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), "float64")


def _logits(shape, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    z_t = (rng.normal(size=shape) * scale).astype("float32")
    z_s = (rng.normal(size=shape) * scale).astype("float32")
    return z_t, z_s


def _close(got, expected, rtol=1e-5, atol=1e-7):
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def _student_grad(loss, z_t, z_s, sample_weight=None):
    """Gradient of ``loss(z_t, z_s, sample_weight)`` with respect to `z_s`.

    The one backend-specific helper of this file.
    """
    z_s = np.asarray(z_s, "float32")
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: loss(z_t, v, sample_weight))(z_s))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        v = tf.convert_to_tensor(z_s)
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = loss(z_t, v, sample_weight)
        return tape.gradient(out, v).numpy()
    if BACKEND == "torch":
        v = ops.convert_to_tensor(z_s)
        v.requires_grad_(True)
        loss(z_t, v, sample_weight).backward()
        return v.grad.detach().cpu().numpy()
    raise NotImplementedError(f"no autodiff helper for backend {BACKEND!r}")


@pytest.mark.parametrize("shape", [FLAT, TOKENS], ids=["N,K", "N,L,V"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_float64_reference(case, shape):
    make, reference = CASES[case]
    z_t, z_s = _logits(shape)
    expected = reference(z_t.astype("float64"), z_s.astype("float64"))
    loss = make()
    per_row = _np(loss.call(z_t, z_s))
    assert per_row.shape == shape[:-1]
    _close(per_row, expected)
    _close(_np(loss(z_t, z_s)), expected.mean())
    unreduced = make().__class__.from_config({**loss.get_config(), "reduction": "none"})
    _close(_np(unreduced(z_t, z_s)), expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_padding_mask_on_tokens(case):
    make, reference = CASES[case]
    z_t, z_s = _logits(TOKENS, seed=1)
    loss = make()
    expected = ref.token_mean(
        reference(z_t.astype("float64"), z_s.astype("float64")), MASK
    )
    _close(_np(loss(z_t, z_s, sample_weight=MASK)), expected)
    # Padded tokens count for nothing: changing their logits moves neither the
    # loss nor the gradient, and they get no gradient themselves.
    noise = np.random.default_rng(2).normal(size=TOKENS).astype("float32") * 5
    padded = (MASK == 0)[..., None]
    z_t2 = np.where(padded, z_t + noise, z_t)
    z_s2 = np.where(padded, z_s - noise, z_s)
    _close(_np(loss(z_t2, z_s2, sample_weight=MASK)), expected)
    grad = _student_grad(loss, z_t, z_s, MASK)
    assert np.isfinite(grad).all()
    assert np.all(grad[MASK == 0] == 0.0)
    assert np.abs(grad[MASK == 1]).max() > 0
    _close(grad, _student_grad(loss, z_t2, z_s2, MASK), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_finite_differences(case):
    make, reference = CASES[case]
    z_t, z_s = _logits(TOKENS, seed=3)
    t64, s64 = z_t.astype("float64"), z_s.astype("float64")
    grad = _student_grad(make(), z_t, z_s)
    assert np.isfinite(grad).all()
    step = 1e-6
    numeric = np.zeros(TOKENS)
    for index in np.ndindex(*TOKENS):
        up, down = s64.copy(), s64.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (reference(t64, up).mean() - reference(t64, down).mean()) / (
            2 * step
        )
    _close(grad, numeric, rtol=1e-3, atol=1e-6)


def test_generalized_jsd_ends_are_the_two_kls():
    z_t, z_s = _logits(TOKENS, seed=4)
    forward = _np(losses.SoftTargetKL(2.0, temperature_squared=False).call(z_t, z_s))
    reverse = _np(losses.ReverseKL(temperature=2.0).call(z_t, z_s))
    _close(_np(losses.GeneralizedJSD(0.0, temperature=2.0).call(z_t, z_s)), forward)
    _close(_np(losses.GeneralizedJSD(1.0, temperature=2.0).call(z_t, z_s)), reverse)
    _close(reverse, ref.reverse_kl(z_t.astype("float64"), z_s.astype("float64"), 2.0))
    # As TRL's: the middle formula goes to 0 at the ends, the ends are the KLs.
    for beta in (1e-6, 1e-300):
        near_end = _np(losses.GeneralizedJSD(beta, temperature=2.0).call(z_t, z_s))
        assert np.all(near_end >= 0) and near_end.max() < 1e-4 < forward.min()
    # Symmetric in the two sides at beta = 1/2 (the Jensen-Shannon divergence).
    half = losses.GeneralizedJSD(0.5)
    _close(_np(half.call(z_t, z_s)), _np(half.call(z_s, z_t)))
    assert _np(half.call(z_t, z_s)).max() <= np.log(2)


def test_skew_kl_at_zero_is_the_plain_kl_and_moves_continuously():
    z_t, z_s = _logits(TOKENS, scale=1.0, seed=5)
    forward = _np(losses.SoftTargetKL(temperature_squared=False).call(z_t, z_s))
    reverse = _np(losses.ReverseKL().call(z_t, z_s))
    _close(_np(losses.SkewKL(0.0).call(z_t, z_s)), forward)
    _close(_np(losses.SkewKL(0.0, reverse=True).call(z_t, z_s)), reverse)
    for reverse_kl, plain in ((False, forward), (True, reverse)):
        gaps = [
            np.abs(_np(losses.SkewKL(a, reverse=reverse_kl).call(z_t, z_s)) - plain)
            for a in (1e-3, 1e-5, 1e-7)
        ]
        # Linear in the skew near 0: each step of 100 shrinks the gap ~100x.
        assert gaps[0].max() > 10 * gaps[1].max() > 100 * gaps[2].max()
    # Skewing bounds the loss: KL(p_T || a p_T + ...) <= -log a.
    far_t, far_s = 100.0 * z_t, -100.0 * z_t
    for reverse_kl in (False, True):
        skewed = _np(losses.SkewKL(0.1, reverse=reverse_kl).call(far_t, far_s))
        assert skewed.max() <= -np.log(0.1) + 1e-6


def test_total_variation_bounds():
    z_t, z_s = _logits(TOKENS, seed=6)
    tv_loss = losses.TotalVariation()
    tv = _np(tv_loss.call(z_t, z_s))
    assert np.all((tv > 0) & (tv < 1))
    _close(tv, _np(tv_loss.call(z_s, z_t)))  # symmetric
    # Pinsker: TV <= sqrt(KL / 2).
    kl = _np(losses.SoftTargetKL(temperature_squared=False).call(z_t, z_s))
    assert np.all(tv <= np.sqrt(kl / 2))
    # Disjoint supports give 1, identical distributions exactly 0.
    peaked = np.where(np.eye(TOKENS[-1])[np.arange(TOKENS[1])] > 0, 50.0, -50.0)
    peaked = np.broadcast_to(peaked, TOKENS).astype("float32")
    _close(_np(tv_loss.call(peaked, peaked[..., ::-1])), np.ones(TOKENS[:-1]))
    assert np.all(_np(tv_loss.call(z_t, z_t)) == 0.0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_identical_logits_give_exactly_zero_and_values_are_nonnegative(case):
    make, _ = CASES[case]
    z_t, z_s = _logits(TOKENS, seed=7)
    loss = make()
    assert np.all(_np(loss.call(z_t, z_t)) == 0.0)
    near = z_t + np.random.default_rng(8).normal(size=TOKENS).astype("float32") * 1e-3
    assert np.all(_np(loss.call(z_t, near)) >= 0.0)


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_accurate_when_teacher_and_student_nearly_agree(temperature):
    # Peaked rows (|z| ~ 30) nudged by 1e-3: divergences of 1e-12 to 1e-6, far
    # below float32's resolution of the log-probabilities themselves.
    rng = np.random.default_rng(12)
    z_t = (rng.normal(size=TOKENS) * 30).astype("float32")
    z_s = (z_t + rng.normal(size=TOKENS) * 1e-3).astype("float32")
    t64, s64 = z_t.astype("float64"), z_s.astype("float64")
    t = temperature
    pairs = {
        "reverse_kl": (losses.ReverseKL(t), ref.reverse_kl(t64, s64, t)),
        "jsd_0.5": (
            losses.GeneralizedJSD(0.5, t),
            ref.generalized_jsd(t64, s64, 0.5, t),
        ),
        "jsd_0.9": (
            losses.GeneralizedJSD(0.9, t),
            ref.generalized_jsd(t64, s64, 0.9, t),
        ),
        "skew_kl": (losses.SkewKL(0.1, temperature=t), ref.skew_kl(t64, s64, 0.1, t=t)),
        "skew_reverse_kl": (
            losses.SkewKL(0.1, True, temperature=t),
            ref.skew_kl(t64, s64, 0.1, reverse=True, t=t),
        ),
        "total_variation": (losses.TotalVariation(t), ref.total_variation(t64, s64, t)),
    }
    for name, (loss, expected) in pairs.items():
        got = _np(loss.call(z_t, z_s))
        # 1e-12 absolute: the float64 reference's own error (it even dips below 0).
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_low_precision_logits_of_magnitude_1e4(case, dtype):
    make, reference = CASES[case]
    rng = np.random.default_rng(9)
    z_t = rng.uniform(-1e4, 1e4, TOKENS)
    z_t[..., 0] = 1e4  # the largest magnitude is always reached
    z_s = np.where(rng.uniform(size=TOKENS) < 0.5, z_t, rng.uniform(-1e4, 1e4, TOKENS))
    z_s[0] = rng.uniform(-30, 30, TOKENS[1:])  # a row of modest student logits
    t_in = ops.cast(ops.convert_to_tensor(z_t.astype("float32")), dtype)
    s_in = ops.cast(ops.convert_to_tensor(z_s.astype("float32")), dtype)
    # The reference sees the values the loss received (rounded to `dtype`).
    t64, s64 = _np(ops.cast(t_in, "float32")), _np(ops.cast(s_in, "float32"))
    loss = make()
    per_row = _np(loss.call(t_in, s_in))
    assert np.isfinite(per_row).all()
    _close(per_row, reference(t64, s64), rtol=1e-5, atol=1e-6)
    reduced = _np(loss(t_in, s_in, sample_weight=MASK))
    _close(reduced, ref.token_mean(reference(t64, s64), MASK), rtol=1e-5, atol=1e-6)
    grad = _student_grad(loss, t64.astype("float32"), s64.astype("float32"), MASK)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trip(case):
    make, _ = CASES[case]
    loss = make()
    loss.temperature.assign(1.5)  # a scheduled value is what is saved
    config = json.loads(json.dumps(keras.losses.serialize(loss)))
    restored = keras.losses.deserialize(config)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert float(restored.temperature.numpy()) == 1.5
    z_t, z_s = _logits(TOKENS, seed=10)
    _close(_np(restored(z_t, z_s)), _np(loss(z_t, z_s)))
    name = keras.saving.get_registered_name(type(loss))
    assert name == f"keras_tfkd>{type(loss).__name__}"


def test_temperature_is_one_shared_variable_for_schedules():
    z_t, z_s = _logits(TOKENS, seed=11)
    loss = losses.GeneralizedJSD(0.5, temperature=1.0)
    assert loss.teacher_temperature is loss.temperature
    assert loss.variables == [loss.temperature]
    loss.temperature.assign(4.0)  # as TemperatureScheduler does
    expected = ref.generalized_jsd(
        z_t.astype("float64"), z_s.astype("float64"), 0.5, 4.0
    )
    _close(_np(loss(z_t, z_s)), expected.mean())
    shared = keras.Variable(2.0, dtype="float32", trainable=False)
    assert losses.TotalVariation(temperature=shared).temperature is shared


def test_exported_from_losses_with_the_old_helpers():
    for name in ("ReverseKL", "GeneralizedJSD", "SkewKL", "TotalVariation"):
        assert name in losses.__all__ and name in divergences.__all__
        assert getattr(losses, name) is getattr(divergences, name)
    # The helpers moved to keras_tfkd._soft_targets are still reachable here.
    z = np.zeros(TOKENS, "float32")
    assert np.all(_np(losses.kl_divergence_with_logits(z, z)) == 0.0)
    assert keras.backend.standardize_dtype(losses._float32(z).dtype) == "float32"


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: losses.GeneralizedJSD(beta=1.5), ValueError, "beta=1.5"),
        (lambda: losses.GeneralizedJSD(beta="half"), TypeError, "beta='half'"),
        (lambda: losses.SkewKL(skew=1.0), ValueError, "skew=1.0"),
        (lambda: losses.SkewKL(skew=-0.1), ValueError, "skew=-0.1"),
        (lambda: losses.SkewKL(reverse="yes"), TypeError, "reverse='yes'"),
        (lambda: losses.ReverseKL(temperature=0.0), ValueError, "temperature=0.0"),
        (lambda: losses.TotalVariation(temperature=-1), ValueError, "temperature=-1"),
    ],
)
def test_bad_settings_are_refused_by_name(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_logits_of_different_shapes_are_refused():
    z_t = np.zeros((2, 5, 11), "float32")
    with pytest.raises(ValueError, match=r"\(2, 5, 11\).*\(2, 5, 12\)"):
        losses.ReverseKL()(z_t, np.zeros((2, 5, 12), "float32"))
