"""The cancellation-free KL value's paths, each against float64.

`kl_divergence_with_logits` takes its value in one pass, centred at the
textbook value's ``E_pt[d]`` (TensorFlow, JAX), and falls back to centring at
``E_pt[d]`` itself when that centre's error would show in the value, and
to the textbook value above a KL of about 88 (where the unscaled terms
overflow). PyTorch runs its own eager form of the two-pass value
(`_soft_targets._kl_value_eager`), whose branches (the series alone, the direct
difference alone, both) must agree with the generic form. Every case below
is checked against a float64 reference of the formula, centred in float64
so that it keeps its digits for KLs down to 1e-12.
"""

import keras
import numpy as np
import pytest
import reference as ref
from keras import ops

from keras_tfkd import _backend, _soft_targets, losses

BACKEND = keras.backend.backend()
#: `_soft_targets._SERIES_BOUND`: a term next to the series' bound is the
#: direct difference, precise to 3e-5 relative.
RTOL = 5e-5


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), "float64")


def _kl64(z_t, z_s, t_t=1.0, t_s=1.0):
    """Per-row KL(softmax(z_t / t_t) || softmax(z_s / t_s)) in float64, centred."""
    z_t, z_s = np.asarray(z_t, "float64"), np.asarray(z_s, "float64")
    p = ref.softmax(z_t / t_t)
    d = z_s / t_s - z_t / t_t
    x = d - (p * d).sum(-1, keepdims=True)
    x = x - (p * x).sum(-1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        total = (p * (np.expm1(x) - x)).sum(-1)
    residue = (p * x).sum(-1)
    centred = np.log1p(total + residue) - residue
    # Beyond float64's range (KLs in the thousands) the textbook form is exact
    # to float64's precision of the logits, far below float32's.
    textbook = ref.kl_per_sample(p, ref.log_softmax(z_s / t_s))
    return np.where(np.isfinite(centred), centred, textbook)


def _log_softmax(a):
    m = ops.max(a, axis=-1, keepdims=True)
    log_sum = ops.log(ops.sum(ops.exp(a - m), axis=-1, keepdims=True))
    return a - m - log_sum, m + log_sum


def _pairs():
    """(name, z_t, z_s, t_t, t_s): every path of the value, as float32 logits."""
    rng = np.random.default_rng(7)
    k = 1000
    z = rng.normal(0.0, 3.0, (6, k))
    huge = rng.uniform(-1e4, 1e4, (4, k))
    huge[:, 0] = 1e4
    # Logits of 1e4 with a spread-out softmax (log-partition functions of 1e4),
    # and a student that differs from its teacher by one float32 ulp (1e-3)
    # in 1% of the classes: KL ~ 1e-9.
    offset = (1e4 + rng.normal(0.0, 1.0, (4, k))).astype("float32")
    nudged = offset.copy()
    rows, cols = np.arange(4).repeat(10), rng.integers(0, k, 40)
    nudged[rows, cols] = np.nextafter(nudged[rows, cols], np.float32(np.inf))
    cases = {
        # KL ~ 1e-6: the series alone (every |x| < 0.1).
        "close": (z, z + rng.normal(0.0, 1e-3, z.shape), 1.0, 1.0),
        # KL of a few units: mostly the direct difference.
        "apart": (z, rng.normal(0.0, 3.0, z.shape), 1.0, 1.0),
        # Both in one batch, and different temperatures.
        "mixed": (
            z,
            np.concatenate([z[:3] + rng.normal(0.0, 0.05, (3, k)), -z[3:]]),
            4.0,
            1.0,
        ),
        # Identical rows: exactly 0.
        "identical": (z, z, 2.0, 2.0),
        # The textbook's centre is about 1e-4 off there, which would cost
        # the value its digits: the batch is centred again.
        "huge_close": (offset, nudged, 1.0, 1.0),
        # Logits of 1e4, peaked: the textbook's centre is precise enough.
        "huge_peaked": (huge, huge + rng.normal(0.0, 0.1, huge.shape), 1.0, 1.0),
        # KL in the thousands: the unscaled terms overflow.
        "overflow": (huge, rng.uniform(-1e4, 1e4, huge.shape), 1.0, 1.0),
    }
    for name, (z_t, z_s, t_t, t_s) in cases.items():
        yield name, z_t.astype("float32"), z_s.astype("float32"), t_t, t_s


PAIRS = list(_pairs())


@pytest.mark.parametrize("name,z_t,z_s,t_t,t_s", PAIRS, ids=[p[0] for p in PAIRS])
def test_value_matches_float64_on_every_path(name, z_t, z_s, t_t, t_s):
    got = _np(losses.kl_divergence_with_logits(z_t, z_s, t_t, t_s))
    want = _kl64(z_t, z_s, t_t, t_s)
    if name == "identical":
        np.testing.assert_array_equal(got, 0.0)
        return
    # The terms' documented precision (3e-5 where |x| is near the series'
    # bound); the overflow rows take the textbook value (float32's precision
    # of logits of 1e4 over a KL of 1e4).
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("name,z_t,z_s,t_t,t_s", PAIRS, ids=[p[0] for p in PAIRS])
def test_centred_paths_agree_with_the_two_pass_value(name, z_t, z_s, t_t, t_s):
    """The one-pass value, its fallback and the two-pass value, side by side."""
    z_t, z_s = ops.convert_to_tensor(z_t), ops.convert_to_tensor(z_s)
    # Both sides' log-softmax and logsumexp the way TensorFlow and JAX take
    # them (`_backend.log_softmax`; PyTorch takes no logsumexp there,
    # but the formula runs anywhere).
    log_p_t, lse_t = _log_softmax(z_t / t_t)
    log_p_s, lse_s = _log_softmax(z_s / t_s)
    p_t = ops.exp(log_p_t)
    two_pass = _np(_soft_targets._kl_value_kernel(z_t, z_s, t_t, t_s, log_p_t, p_t))
    if name != "overflow":  # there the two-pass value is recomputed scaled
        np.testing.assert_allclose(
            two_pass, _kl64(z_t, z_s, t_t, t_s), rtol=RTOL, atol=1e-12
        )
    textbook = ops.sum(p_t * (log_p_t - log_p_s), axis=-1)
    centre = (lse_s - lse_t) - ops.expand_dims(textbook, -1)
    x = _soft_targets._difference(z_t, z_s, t_t, t_s) - centre
    total, residue = _soft_targets._sums(x, log_p_t, p_t)
    value, size = _soft_targets._from_sums(total, residue, with_size=True)
    precise = bool(_np(_soft_targets._precise(value, size, total)))
    # Only logits of 1e4 and a KL of 1e-9 need the second centring.
    assert precise == (name != "huge_close"), (name, _np(residue), _np(total))
    one_pass = _np(
        _soft_targets._kl_value_centred(
            z_t, z_s, t_t, t_s, log_p_t, p_t, centre, textbook
        )
    )
    np.testing.assert_allclose(
        one_pass, _kl64(z_t, z_s, t_t, t_s), rtol=RTOL, atol=1e-12
    )


def test_row_sums_are_two_sums(rng):
    a = rng.normal(size=(3, 4, 257)).astype("float32")
    b = rng.normal(size=(3, 4, 257)).astype("float32")
    first, second = _backend.row_sums(
        ops.convert_to_tensor(a), ops.convert_to_tensor(b)
    )
    # float32 sums of 257 normals: a few ulps of their magnitudes' sum.
    np.testing.assert_allclose(_np(first), a.astype("float64").sum(-1), atol=1e-4)
    np.testing.assert_allclose(_np(second), b.astype("float64").sum(-1), atol=1e-4)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's own eager form")
@pytest.mark.parametrize("name,z_t,z_s,t_t,t_s", PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("with_textbook", [False, True])
def test_torch_eager_form_equals_the_generic_one(
    name, z_t, z_s, t_t, t_s, with_textbook
):
    """Every branch of `_kl_value_eager` (series alone, direct alone, both,
    overflow) gives the generic two-pass value."""
    z_t, z_s = ops.convert_to_tensor(z_t), ops.convert_to_tensor(z_s)
    log_p_t = ops.log_softmax(z_t / t_t, axis=-1)
    p_t = ops.exp(log_p_t)
    textbook = None
    if with_textbook:  # as computed for the gradient: the direct-only branch
        log_p_s = ops.log_softmax(z_s / t_s, axis=-1)
        textbook = ops.sum(p_t * (log_p_t - log_p_s), axis=-1)
    eager = _np(
        _soft_targets._kl_value_eager(z_t, z_s, t_t, t_s, log_p_t, p_t, textbook)
    )
    generic = _np(_soft_targets._kl_value_kernel(z_t, z_s, t_t, t_s, log_p_t, p_t))
    np.testing.assert_allclose(eager, generic, rtol=RTOL, atol=1e-12)
    eager_form = _soft_targets._kl_value_eager
    assert _backend.fused(_soft_targets._kl_value_kernel, eager=eager_form) is (
        eager_form
    )


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's own eager form")
def test_torch_eager_form_of_no_rows():
    empty = ops.zeros((0, 5))
    value = _soft_targets._kl_value_eager(empty, empty, 1.0, 1.0, empty, empty)
    assert tuple(value.shape) == (0,)
