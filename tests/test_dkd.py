"""DecoupledKD (DKD, Zhao et al. 2022) against a NumPy float64 reference."""

import keras
import numpy as np
import pytest
import reference as ref
from keras import ops

from keras_tfkd import losses

BACKEND = keras.backend.backend()


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype="float64")


def _kl(p, log_p, log_q):
    return (p * np.where(p > 0, log_p - log_q, 0.0)).sum(-1)


def dkd_per_sample(z_t, z_s, y, alpha, beta, t):
    """The paper's formula in float64: T^2 (alpha TCKD + beta NCKD), shape (N,)."""
    mask = ref.one_hot(y, z_t.shape[-1]) > 0

    def parts(z):
        log_p = ref.log_softmax(np.asarray(z, "float64") / t)
        log_p_y = log_p[mask]
        other = np.where(mask, -np.inf, log_p)
        top = other.max(-1, keepdims=True)
        log_not_y = (top + np.log(np.exp(other - top).sum(-1, keepdims=True)))[:, 0]
        log_b = np.stack([log_p_y, log_not_y], -1)
        log_q = np.where(mask, 0.0, other - log_not_y[:, None])
        return log_b, log_q

    log_b_t, log_q_t = parts(z_t)
    log_b_s, log_q_s = parts(z_s)
    tckd = _kl(np.exp(log_b_t), log_b_t, log_b_s)
    nckd = _kl(np.where(mask, 0.0, np.exp(log_q_t)), log_q_t, log_q_s)
    return t**2 * (alpha * tckd + beta * nckd)


def dkd_grad_student(z_t, z_s, y, alpha, beta, t):
    """d(mean over the batch of the DKD loss) / d z_s, in closed form (float64).

    With ``x = z_s / T``: ``dTCKD/dx = p_s - b_t[0] onehot - b_t[1] q_s`` and
    ``dNCKD/dx = q_s - q_t`` (both 0 on the target class for the q's).
    """
    mask = ref.one_hot(y, z_t.shape[-1]) > 0
    p_t, p_s = ref.softmax(z_t / t), ref.softmax(z_s / t)

    def q(z):
        return ref.softmax(np.where(mask, -np.inf, np.asarray(z, "float64") / t))

    q_t, q_s = q(z_t), q(z_s)
    b_t0 = p_t[mask][:, None]
    d_tckd = p_s - b_t0 * mask - (1.0 - b_t0) * q_s
    d_nckd = q_s - q_t
    return t * (alpha * d_tckd + beta * d_nckd) / len(z_s)


def _grads(fn, z_t, z_s):
    """Gradients of the scalar ``fn(z_t, z_s)`` with respect to both arguments."""
    z_t, z_s = np.asarray(z_t, "float32"), np.asarray(z_s, "float32")
    if BACKEND == "jax":
        import jax

        g_t, g_s = jax.grad(fn, argnums=(0, 1))(z_t, z_s)
        return np.asarray(g_t, "float64"), np.asarray(g_s, "float64")
    if BACKEND == "tensorflow":
        import tensorflow as tf

        v_t, v_s = tf.convert_to_tensor(z_t), tf.convert_to_tensor(z_s)
        with tf.GradientTape() as tape:
            tape.watch([v_t, v_s])
            out = fn(v_t, v_s)
        return tuple(
            g.numpy().astype("float64") for g in tape.gradient(out, [v_t, v_s])
        )
    if BACKEND == "torch":
        v_t, v_s = ops.convert_to_tensor(z_t), ops.convert_to_tensor(z_s)
        v_t.requires_grad_(True)
        v_s.requires_grad_(True)
        fn(v_t, v_s).backward()
        return tuple(
            v.grad.detach().cpu().numpy().astype("float64") for v in (v_t, v_s)
        )
    raise NotImplementedError(f"no autodiff helper for backend {BACKEND!r}")


N = 8  # one batch size everywhere: eager JAX compiles each op once per shape


def _logits(rng, k, scale, n=N):
    z_t = (rng.normal(size=(n, k)) * scale).astype("float32")
    z_s = (rng.normal(size=(n, k)) * scale).astype("float32")
    return z_t, z_s, rng.integers(0, k, n)


@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("alpha,beta,t", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_numpy(rng, k, alpha, beta, t):
    z_t, z_s, y = _logits(rng, k, 3.0)
    w = rng.uniform(size=N).astype("float32")
    w[3] = 0.0
    loss = losses.DecoupledKD(tckd_weight=alpha, nckd_weight=beta, temperature=t)
    per = dkd_per_sample(z_t, z_s, y, alpha, beta, t)
    y_true = losses.targets_with_labels(z_t, y)
    np.testing.assert_allclose(_np(loss(y_true, z_s)), per.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        _np(loss(y_true, z_s, sample_weight=w)), ref.weighted_mean(per, w), rtol=1e-5
    )
    # "none" reduction: the per-sample values themselves.
    none = losses.DecoupledKD(alpha, beta, t, reduction="none")
    np.testing.assert_allclose(_np(none(y_true, z_s)), per, rtol=1e-5, atol=1e-7)


def test_dkd_takes_column_and_one_hot_labels(rng):
    z_t, z_s, y = _logits(rng, 10, 2.0)
    loss = losses.DecoupledKD()
    flat = _np(loss(losses.targets_with_labels(z_t, y), z_s))
    for labels in (y[:, None], ref.one_hot(y, 10)):
        got = _np(loss(losses.targets_with_labels(z_t, labels), z_s))
        np.testing.assert_allclose(got, flat, rtol=1e-6)


def test_dkd_parts_are_tckd_and_nckd(rng):
    """alpha alone weighs TCKD, beta alone NCKD; with K = 2 NCKD is 0 and DKD
    is alpha times normal KD."""
    z_t, z_s, y = _logits(rng, 10, 3.0)
    y_true = losses.targets_with_labels(z_t, y)
    tckd = _np(losses.DecoupledKD(tckd_weight=1.0, nckd_weight=0.0)(y_true, z_s))
    nckd = _np(losses.DecoupledKD(tckd_weight=0.0, nckd_weight=1.0)(y_true, z_s))
    both = _np(losses.DecoupledKD(tckd_weight=2.0, nckd_weight=3.0)(y_true, z_s))
    np.testing.assert_allclose(both, 2 * tckd + 3 * nckd, rtol=1e-5)
    z_t, z_s, y = _logits(rng, 2, 3.0)
    y_true = losses.targets_with_labels(z_t, y)
    assert (
        float(_np(losses.DecoupledKD(tckd_weight=0.0, nckd_weight=5.0)(y_true, z_s)))
        == 0.0
    )
    kd = _np(losses.SoftTargetKL(temperature=4.0)(z_t, z_s))
    dkd = _np(
        losses.DecoupledKD(tckd_weight=0.5, nckd_weight=8.0, temperature=4.0)(
            y_true, z_s
        )
    )
    np.testing.assert_allclose(dkd, 0.5 * kd, rtol=1e-5)


@pytest.mark.parametrize("k", [2, 10, 100])
def test_dkd_is_zero_for_identical_logits(rng, k):
    z, _, y = _logits(rng, k, 5.0)
    loss = losses.DecoupledKD(reduction="none")
    got = _np(loss(losses.targets_with_labels(z, y), z))
    np.testing.assert_array_equal(got, np.zeros(N))


# Gradients at K = 2 and 100 only: each new shape costs eager JAX seconds of
# compilation, and K = 10 adds nothing the two ends do not cover.
@pytest.mark.gradients
@pytest.mark.parametrize("k", [2, 100])
def test_dkd_gradient_matches_closed_form(rng, k):
    z_t, z_s, y = _logits(rng, k, 2.0)
    z_s[0] = z_t[0]  # a row where the gradient is 0
    alpha, beta, t = 1.0, 8.0, 4.0
    expected = dkd_grad_student(z_t, z_s, y, alpha, beta, t)
    np.testing.assert_allclose(expected[0], 0.0, atol=1e-12)
    # The closed form itself, against central differences of the reference.
    eps, fd = 1e-6, np.zeros_like(expected)
    z64 = z_s.astype("float64")
    for idx in np.ndindex(*z64.shape):
        up, down = z64.copy(), z64.copy()
        up[idx] += eps
        down[idx] -= eps
        fd[idx] = (
            dkd_per_sample(z_t, up, y, alpha, beta, t).mean()
            - dkd_per_sample(z_t, down, y, alpha, beta, t).mean()
        ) / (2 * eps)
    np.testing.assert_allclose(expected, fd, atol=1e-7)
    loss = losses.DecoupledKD(alpha, beta, t)
    _, g_s = _grads(lambda a, b: loss(losses.targets_with_labels(a, y), b), z_t, z_s)
    np.testing.assert_allclose(g_s, expected, atol=1e-6)


@pytest.mark.gradients
@pytest.mark.parametrize("k", [2, 100])
@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_dkd_is_finite_for_large_logits(rng, k, scale):
    z_t, z_s, y = _logits(rng, k, scale)
    z_s[0] = z_t[0]  # one identical row
    z_s[1, y[1]] = 5 * scale  # a student sure of the label
    z_t[2, y[2]] = -5 * scale  # a teacher sure it is not the label
    alpha, beta, t = 1.0, 8.0, 4.0
    loss = losses.DecoupledKD(alpha, beta, t)
    per = _np(
        losses.DecoupledKD(alpha, beta, t, reduction="none")(
            losses.targets_with_labels(z_t, y), z_s
        )
    )
    assert np.all(np.isfinite(per)) and np.all(per >= 0), per
    expected = dkd_per_sample(z_t, z_s, y, alpha, beta, t)
    np.testing.assert_allclose(per, expected, rtol=1e-3, atol=1e-6 * scale)
    g_t, g_s = _grads(lambda a, b: loss(losses.targets_with_labels(a, y), b), z_t, z_s)
    assert np.all(np.isfinite(g_t)) and np.all(np.isfinite(g_s))
    np.testing.assert_allclose(
        g_s, dkd_grad_student(z_t, z_s, y, alpha, beta, t), atol=1e-3
    )


def test_dkd_config_round_trip(rng):
    loss = losses.DecoupledKD(
        tckd_weight=0.5, nckd_weight=2.0, temperature=3.0, reduction="sum", name="dkd"
    )
    config = loss.get_config()
    assert config == {
        "tckd_weight": 0.5,
        "nckd_weight": 2.0,
        "temperature": 3.0,
        "reduction": "sum",
        "name": "dkd",
        "chunk_size": "auto",
    }
    # By its registered name, as a saved model finds it (serialize_keras_object
    # would import TensorFlow on the other backends: seconds, for nothing).
    cls = keras.saving.get_registered_object("keras_tfkd>DecoupledKD")
    again = cls.from_config(config)
    assert type(again) is losses.DecoupledKD and again.get_config() == config
    z_t, z_s, y = _logits(rng, 10, 2.0)
    y_true = losses.targets_with_labels(z_t, y)
    np.testing.assert_allclose(
        _np(again(y_true, z_s)), _np(loss(y_true, z_s)), rtol=1e-6
    )


def test_dkd_temperature_can_be_a_variable(rng):
    """A schedule can hold T in a variable: the loss follows its value."""
    z_t, z_s, y = _logits(rng, 10, 2.0)
    y_true = losses.targets_with_labels(z_t, y)
    t = keras.Variable(2.0, dtype="float32", trainable=False)
    loss = losses.DecoupledKD(temperature=t)
    want = dkd_per_sample(z_t, z_s, y, 1.0, 8.0, 2.0).mean()
    np.testing.assert_allclose(_np(loss(y_true, z_s)), want, rtol=1e-5)
    t.assign(5.0)
    want = dkd_per_sample(z_t, z_s, y, 1.0, 8.0, 5.0).mean()
    np.testing.assert_allclose(_np(loss(y_true, z_s)), want, rtol=1e-5)
    assert loss.get_config()["temperature"] == 5.0


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"tckd_weight": -1.0}, ValueError),
        ({"tckd_weight": float("inf")}, ValueError),
        ({"tckd_weight": "1"}, TypeError),
        ({"nckd_weight": float("nan")}, ValueError),
        ({"nckd_weight": True}, TypeError),
        ({"temperature": 0.0}, ValueError),
        ({"temperature": -4}, ValueError),
        ({"temperature": float("inf")}, ValueError),
        ({"temperature": None}, TypeError),
    ],
)
def test_dkd_rejects_bad_arguments(kwargs, error):
    ((name, value),) = kwargs.items()
    with pytest.raises(error, match=f"`{name}`.*{name}={value!r}"):
        losses.DecoupledKD(**kwargs)


def test_dkd_needs_the_labels(rng):
    z_t, z_s, _ = _logits(rng, 10, 1.0)
    with pytest.raises(TypeError, match="DecoupledKD needs the labels"):
        losses.DecoupledKD()(z_t, z_s)


def test_dkd_is_exported():
    assert "DecoupledKD" in losses.__all__
