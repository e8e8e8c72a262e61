"""Numerics: precision policies, extreme inputs and properties of the losses.

Every value is compared with a float64 NumPy evaluation of the docs/paper.md formula
on the very inputs the loss received: when the policy computes in float16 or
bfloat16, the logits are rounded to that type first and NumPy sees the rounded
values. The grid reaches T = 100, K = 10000 and logits of magnitude 1e4.
"""

import math

import keras
import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops

from keras_tfkd import Distiller, losses, recipes, teachers

BACKEND = keras.backend.backend()
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
TEMPERATURES = (1.0, 4.0, 20.0, 100.0)
SCALES = (1.0, 30.0, 1e4)  # largest |logit| of a case
RTOL = 1e-3
# Values below 1e-9 are judged absolutely: float32 cannot hold a KL of 1e-56
# between two agreeing one-hot-like rows (it says 0), and the float64 reference
# itself is only good to ~1e-16 * T^2 * log K (it returns -1e-21 for some KLs).
ATOL = 1e-9

PROPERTY_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread for this module's many tiny eager ops.

    Measured on a busy 2-core machine: 95 s with torch's default 2 intra-op
    threads, 4 s with one. The previous setting is restored afterwards.
    """
    if BACKEND != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype="float64")


def _arrive(z, policy):
    """Logits as the policy delivers them, and their exact values in float64."""
    dtype = keras.DTypePolicy(policy).compute_dtype
    tensor = ops.cast(ops.convert_to_tensor(np.asarray(z, "float32")), dtype)
    return tensor, _np(ops.cast(tensor, "float32"))


def _logit_pairs(rng, n, k):
    """(scale, relation, z_t, z_s) over magnitudes and teacher/student relations."""
    for scale in SCALES:
        z_t = rng.uniform(-scale, scale, (n, k))
        z_t[:, 0] = scale  # the largest magnitude is always reached
        independent = rng.uniform(-scale, scale, (n, k))
        near = z_t + rng.normal(0.0, 0.1, (n, k))  # student close to teacher
        yield scale, "independent", z_t, independent
        yield scale, "near", z_t, near


def _check(failures, what, got, expected):
    got = float(got)
    if not math.isfinite(got) or abs(got - expected) > RTOL * abs(expected) + ATOL:
        failures.append(f"{what}: got {got!r}, float64 NumPy {expected!r}")


def _kl_reference(z_t, z_s, t_t, t_s):
    return ref.kl_per_sample(ref.softmax(z_t / t_t), ref.log_softmax(z_s / t_s)).mean()


@pytest.mark.parametrize("k", [2, 100, 10000])
@pytest.mark.parametrize("policy", POLICIES)
def test_soft_losses_match_float64_numpy(policy, k):
    keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(k)
    failures = []
    for scale, relation, z_t, z_s in _logit_pairs(rng, 4, k):
        t_in, t64 = _arrive(z_t, policy)
        s_in, s64 = _arrive(z_s, policy)
        for temp in TEMPERATURES:
            case = f"{policy} K={k} T={temp} |z|<={scale:g} {relation}"
            kd = temp**2 * _kl_reference(t64, s64, temp, temp)
            _check(
                failures,
                f"KD KL {case}",
                _np(losses.SoftTargetKL(temp)(t_in, s_in)),
                kd,
            )
            reg = _kl_reference(t64, s64, temp, 1.0)  # Tf-KD_reg: teacher side only
            reg_loss = losses.SoftTargetKL(1.0, temp, temperature_squared=False)
            _check(failures, f"reg KL {case}", _np(reg_loss(t_in, s_in)), reg)
            p_t = ref.softmax(t64 / temp)
            xent = -(temp**2) * (p_t * ref.log_softmax(s64 / temp)).sum(-1).mean()
            got = _np(losses.SoftTargetCrossEntropy(temp)(t_in, s_in))
            _check(failures, f"soft CE {case}", got, xent)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("k", [2, 100, 10000])
@pytest.mark.parametrize("policy", POLICIES)
def test_label_smoothing_matches_float64_numpy(policy, k):
    keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(k)
    failures = []
    for scale, _, _, z_s in _logit_pairs(rng, 8, k):
        s_in, s64 = _arrive(z_s, policy)
        y = rng.integers(0, k, 8)
        for eps in (0.0, 0.1, 0.5):
            got = _np(losses.LabelSmoothingCrossEntropy(eps)(y, s_in))
            _check(failures, f"LSR eps={eps} |z|<={scale:g}", got, ref.lsr(s64, y, eps))
    assert not failures, "\n".join(failures)


def _identity_model(k, name):
    """A 'network' whose logits are its inputs: the test chooses every logit."""
    return keras.Sequential([keras.Input((k,)), keras.layers.Identity()], name=name)


RECIPES = ("baseline", "label_smoothing", "kd", "tfkd_self", "tfkd_reg")


def _recipe(name, k, temp):
    """A recipe's Distiller; its teacher reads the teacher logits from `x`."""
    student = _identity_model(k, "student")
    if name == "baseline":
        return recipes.baseline(student)
    if name == "label_smoothing":
        return recipes.label_smoothing(student, epsilon=0.1)
    if name == "kd":  # a teacher model, run on x
        return recipes.kd(
            student,
            _identity_model(k, "teacher"),
            alpha=0.95,
            temperature=temp,
            kl="reference",
        )
    if name == "tfkd_self":  # cached teacher logits, fed with x
        return recipes.tfkd_self(
            student,
            teachers.CachedTeacher(k),
            alpha=0.9,
            temperature=temp,
            multiplier=50.0,
            kl="reference",
        )
    return recipes.tfkd_reg(
        student, k, alpha=0.1, temperature=temp, multiplier=100.0, kl="reference"
    )


def _ce(z, y, w):
    """Mean sparse cross-entropy, weighted like Keras (sum of w * CE over N)."""
    return ref.weighted_mean(-ref.log_softmax(z)[np.arange(len(y)), y], w)


def _recipe_reference(name, z_s, z_t, y, w, temp):
    """docs/paper.md's total loss of each method (K = 10000 without a K x K one-hot)."""
    if name == "baseline":
        return _ce(z_s, y, w)
    if name == "label_smoothing":
        return ref.lsr(z_s, y, 0.1, w)
    if name == "tfkd_reg":
        p_t = ref.softmax(ref.virtual_teacher(y, z_s.shape[-1], 0.99) / temp)
        soft = 100.0 * ref.klm(p_t, ref.log_softmax(z_s), w)
        return 0.9 * _ce(z_s, y, w) + 0.1 * soft
    alpha, multiplier = (0.95, 1.0) if name == "kd" else (0.9, 50.0)
    kl = ref.klm(ref.softmax(z_t / temp), ref.log_softmax(z_s / temp), w)
    return (1 - alpha) * _ce(z_s, y, w) + alpha * multiplier * temp**2 * kl


@pytest.mark.parametrize("k", [10, 10000])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_compute_loss_matches_float64_numpy(name, policy, k):
    keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(k)
    failures = []
    for temp in (1.0, 20.0, 100.0):
        distiller = _recipe(name, k, temp)
        for scale, relation, z_t, z_s in _logit_pairs(rng, 4, k):
            y = rng.integers(0, k, 4)
            w = rng.uniform(0.0, 2.0, 4)
            s_in, s64 = _arrive(z_s, policy)
            if name == "tfkd_self":  # cached logits are stored in float32
                x = {"inputs": z_t, "teacher_logits": z_t.astype("float32")}
                t64 = z_t.astype("float32").astype("float64")
            else:  # the teacher model (kd) delivers them in the compute dtype
                x, t64 = _arrive(z_t, policy)
            got = _np(distiller.compute_loss(x=x, y=y, y_pred=s_in, sample_weight=w))
            expected = _recipe_reference(name, s64, t64, y, w, temp)
            case = f"{name} {policy} K={k} T={temp} |z|<={scale:g} {relation}"
            _check(failures, case, got, expected)
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------ property tests
def _grad(fn, z):
    """Gradient of the scalar ``fn(z)`` with respect to `z`, by the backend's autodiff.

    The one backend-specific helper of this file. `fn` runs in a
    `keras.StatelessScope`, so metric updates inside it (the Distiller's
    trackers) stay out of traced code.
    """

    def scalar(v):
        with keras.StatelessScope():
            return fn(v)

    z = np.asarray(z, "float32")
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(scalar)(z), "float64")
    if BACKEND == "tensorflow":
        import tensorflow as tf

        v = tf.convert_to_tensor(z)
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = scalar(v)
        return tape.gradient(out, v).numpy().astype("float64")
    if BACKEND == "torch":
        v = ops.convert_to_tensor(z)
        v.requires_grad_(True)
        scalar(v).backward()
        return v.grad.detach().cpu().numpy().astype("float64")
    raise NotImplementedError(f"no autodiff helper for backend {BACKEND!r}")


SHAPES = ((1, 2), (3, 5), (2, 40))


@st.composite
def logit_pairs(draw):
    """Teacher and student logits: independent, shifted copies, or near copies."""
    # Few shapes: JAX compiles every op once per shape.
    n, k = draw(st.sampled_from(SHAPES))
    elements = st.floats(-30, 30, width=32)
    z_t = draw(hnp.arrays("float32", (n, k), elements=elements, fill=st.nothing()))
    relation = draw(st.sampled_from(["independent", "shifted", "near"]))
    if relation == "independent":
        z_s = draw(hnp.arrays("float32", (n, k), elements=elements, fill=st.nothing()))
    elif relation == "shifted":  # the same distribution, other logits
        z_s = z_t + np.float32(draw(st.floats(-20, 20, width=32)))
    else:
        small = st.floats(-0.0078125, 0.0078125, width=32)  # |noise| <= 2**-7
        noise = draw(hnp.arrays("float32", (n, k), elements=small, fill=st.nothing()))
        z_s = z_t + noise
    return z_t, z_s.astype("float32"), relation


temperatures = st.floats(0.5, 100.0)


@PROPERTY_SETTINGS
@given(pair=logit_pairs(), temp=temperatures)
def test_kl_is_non_negative(pair, temp):
    z_t, z_s, _ = pair
    kl = _np(losses.kl_divergence_with_logits(z_t, z_s, temp, temp))
    assert np.all(kl >= 0.0), kl
    reg = _np(losses.kl_divergence_with_logits(z_t, z_s, temp, 1.0))
    assert np.all(reg >= 0.0), reg


@PROPERTY_SETTINGS
@given(pair=logit_pairs(), temp=temperatures)
def test_kl_is_zero_when_student_equals_teacher(pair, temp):
    z_t, z_s, relation = pair
    loss = losses.SoftTargetKL(temperature=temp, reduction=None)
    assert np.all(_np(loss(z_t, z_t)) == 0.0)
    if relation == "shifted":  # softmax ignores a shift: same distributions
        np.testing.assert_allclose(_np(loss(z_t, z_s)), 0.0, atol=1e-8)


@pytest.mark.gradients
@PROPERTY_SETTINGS
@given(pair=logit_pairs(), temp=temperatures)
def test_soft_term_gradient_is_analytic_and_zero_at_a_match(pair, temp):
    """Gradient of the batch-mean ``T^2 KL(S(z_t/T) || S(z_s/T))`` in ``z_s``.

    It is ``T (S(z_s/T) - S(z_t/T)) / N``, so it vanishes where the two
    distributions match (equal or shifted logits).
    """
    z_t, z_s, relation = pair
    loss = losses.SoftTargetKL(temperature=temp)
    n = len(z_t)
    z_t64, z_s64 = z_t.astype("float64"), z_s.astype("float64")
    expected = temp * (ref.softmax(z_s64 / temp) - ref.softmax(z_t64 / temp)) / n
    got = _grad(lambda v: loss(z_t, v), z_s)
    np.testing.assert_allclose(got, expected, atol=1e-6 * temp)
    at_match = _grad(lambda v: loss(z_t, v), z_t)
    np.testing.assert_allclose(at_match, 0.0, atol=1e-6 * temp)
    if relation == "shifted":
        np.testing.assert_allclose(got, 0.0, atol=1e-5 * temp)


@pytest.mark.gradients
@PROPERTY_SETTINGS
@given(
    z=hnp.arrays(
        "float32",
        st.sampled_from(SHAPES),
        elements=st.floats(-20, 20, width=32),
        fill=st.nothing(),
    ),
    a=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_label_smoothing_is_kd_from_a_uniform_teacher(z, a, seed):
    """The paper's identity, as a Distiller on this backend.

    CE on labels smoothed to ``(1-a) one_hot + a u`` has the gradient of
    ``(1-a) CE + a KL(u || S(z_s))`` (a `UniformTeacher` at T = 1); the two
    losses differ by the constant ``a H(u) = a log K``.
    """
    n, k = z.shape
    y = np.random.default_rng(seed).integers(0, k, n)
    distiller = Distiller(
        student=_identity_model(k, "student"),
        teacher=teachers.UniformTeacher(k),
        soft_loss=losses.SoftTargetKL(temperature=1.0),
        alpha=a,
    )
    smoothed_ce = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=a
    )
    one_hot = ref.one_hot(y, k).astype("float32")

    def as_kd(v):
        return distiller.compute_loss(x=v, y=y, y_pred=v)

    def as_lsr(v):
        return smoothed_ce(one_hot, v)

    q = (1 - a) * ref.one_hot(y, k) + a / k
    z64 = z.astype("float64")
    lsr_value = -(q * ref.log_softmax(z64)).sum(-1).mean()
    with keras.StatelessScope():
        kd_value = float(_np(as_kd(z)))
    np.testing.assert_allclose(float(_np(as_lsr(z))), lsr_value, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        kd_value + a * math.log(k), lsr_value, rtol=1e-5, atol=1e-5
    )
    expected_grad = (ref.softmax(z64) - q) / n
    np.testing.assert_allclose(_grad(as_kd, z), expected_grad, atol=1e-6)
    np.testing.assert_allclose(_grad(as_lsr, z), expected_grad, atol=1e-6)


# ----------------------------------------------- Keras's built-in distillation
def test_keras_logits_distillation_default_is_not_the_kd_term():
    """docs/paper.md: Keras 3.15's default `LogitsDistillation` gives 9.84, KD is 6.83.

    The default ``loss="kl_divergence"`` is a plain function applied to the
    temperature-scaled *logits* (clipped to [1e-7, 1], no softmax, no T^2).
    `SoftTargetKL` gives the true term ``T^2 KL(S(z_t/T) || S(z_s/T))``.
    """
    distillation = getattr(keras, "distillation", None)
    if distillation is None:
        pytest.skip(f"keras {keras.__version__} has no keras.distillation")
    temp = 3.0  # LogitsDistillation's default temperature
    z_t = np.array([[2.0, 2.0, 1.0, 0.0]], "float32")
    z_s = np.array([[4.0, -4.0, 3.0, 6.0]], "float32")
    clipped_t = np.clip(z_t / temp, 1e-7, 1.0).astype("float64")
    clipped_s = np.clip(z_s / temp, 1e-7, 1.0).astype("float64")
    keras_formula = (clipped_t * np.log(clipped_t / clipped_s)).sum(-1).mean()
    true_kd = temp**2 * _kl_reference(z_t.astype("f8"), z_s.astype("f8"), temp, temp)
    assert (round(keras_formula, 2), round(true_kd, 2)) == (9.84, 6.83)

    default = distillation.LogitsDistillation(temperature=temp)
    np.testing.assert_allclose(_np(default.compute_loss(z_t, z_s)), keras_formula, 1e-5)
    ours = losses.SoftTargetKL(temperature=temp)
    np.testing.assert_allclose(_np(ours(z_t, z_s)), true_kd, rtol=1e-5)
    fixed = distillation.LogitsDistillation(temp, loss=keras.losses.KLDivergence())
    np.testing.assert_allclose(_np(fixed.compute_loss(z_t, z_s)), true_kd, rtol=1e-5)
