"""Plain NumPy (float64) references of the docs/paper.md formulas, used by the tests."""

import numpy as np


def log_softmax(z):
    z = np.asarray(z, dtype="float64")
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def one_hot(y, k):
    y = np.asarray(y).reshape(-1)
    out = np.zeros((len(y), k))
    out[np.arange(len(y)), y] = 1.0
    return out


def weighted_mean(values, sample_weight=None):
    """Keras's default reduction: weighted sum divided by the batch size."""
    values = np.asarray(values, dtype="float64")
    if sample_weight is None:
        return values.mean()
    return (values * np.asarray(sample_weight, "float64").reshape(-1)).sum() / len(
        values
    )


def ce(z_s, y, sample_weight=None):
    per = -(one_hot(y, z_s.shape[-1]) * log_softmax(z_s)).sum(-1)
    return weighted_mean(per, sample_weight)


def kl_per_sample(p, log_q):
    """sum_k p (log p - log q), with 0 log 0 = 0."""
    p = np.asarray(p, "float64")
    logp = np.log(np.where(p > 0, p, 1.0))
    return (p * (logp - log_q)).sum(-1)


def klm(p, log_q, sample_weight=None):
    """PyTorch nn.KLDivLoss() default: element-wise mean over N*K."""
    return weighted_mean(kl_per_sample(p, log_q), sample_weight) / p.shape[-1]


def lsr(z_s, y, eps=0.1, sample_weight=None):
    k = z_s.shape[-1]
    q = np.full((len(z_s), k), eps / (k - 1))
    q[np.arange(len(z_s)), np.asarray(y).reshape(-1)] = 1 - eps
    return weighted_mean(-(q * log_softmax(z_s)).sum(-1), sample_weight)


def kd(z_s, z_t, y, alpha, t, multiplier=1.0, sample_weight=None):
    soft = klm(softmax(z_t / t), log_softmax(z_s / t), sample_weight)
    return (1 - alpha) * ce(z_s, y, sample_weight) + alpha * multiplier * t**2 * soft


def virtual_teacher(y, k, a=0.99):
    p = np.full((len(y), k), (1 - a) / (k - 1))
    p[np.arange(len(y)), np.asarray(y).reshape(-1)] = a
    return p


def tfkd_reg(z_s, y, alpha, t, multiplier=1.0, a=0.99, sample_weight=None):
    k = z_s.shape[-1]
    p_t = softmax(virtual_teacher(y, k, a) / t)
    soft = klm(p_t, log_softmax(z_s), sample_weight)
    return (1 - alpha) * ce(z_s, y, sample_weight) + alpha * multiplier * soft


# Token-level divergences (keras_tfkd.divergences, docs/methods.md). Logits of any
# rank, classes on the last axis; each returns one value per row (example or token).


def token_mean(values, sample_weight=None):
    """Keras's ``"sum_over_batch_size"`` on values of any shape: weighted sum / size."""
    values = np.asarray(values, "float64")
    if sample_weight is not None:
        values = values * np.asarray(sample_weight, "float64").reshape(values.shape)
    return values.sum() / values.size


def kl_rows(log_p, log_q):
    """``KL(P || Q)`` per row from log-probabilities (0 log 0 = 0)."""
    p = np.exp(log_p)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)


def mixture_kl_rows(log_p, log_q, w):
    """``KL(P || w P + (1 - w) Q)`` per row, the mixture taken in log space."""
    log_m = np.logaddexp(log_p + np.log(w), log_q + np.log1p(-w))
    return kl_rows(log_p, log_m)


def reverse_kl(z_t, z_s, t=1.0):
    """``KL(p_S || p_T)``, both softened by ``t``."""
    return kl_rows(log_softmax(z_s / t), log_softmax(z_t / t))


def generalized_jsd(z_t, z_s, beta, t=1.0):
    """``beta KL(p_T || M) + (1 - beta) KL(p_S || M)``, ``M = beta p_T + (1-beta) p_S``.

    At ``beta = 0`` the forward KL ``KL(p_T || p_S)`` and at ``beta = 1`` the
    reverse KL, as TRL's ``generalized_jsd_loss`` special-cases them.
    """
    log_t, log_s = log_softmax(z_t / t), log_softmax(z_s / t)
    if beta == 0:
        return kl_rows(log_t, log_s)
    if beta == 1:
        return kl_rows(log_s, log_t)
    log_m = np.logaddexp(log_t + np.log(beta), log_s + np.log1p(-beta))
    return beta * kl_rows(log_t, log_m) + (1 - beta) * kl_rows(log_s, log_m)


def skew_kl(z_t, z_s, skew, reverse=False, t=1.0):
    """DistiLLM's skew KL ``KL(p_T || a p_T + (1-a) p_S)`` (``a = skew``).

    Reversed: ``KL(p_S || (1-a) p_T + a p_S)``. The mixture is formed from
    probabilities here (as the official code does), not in log space.
    """
    log_t, log_s = log_softmax(z_t / t), log_softmax(z_s / t)
    p_t, p_s = np.exp(log_t), np.exp(log_s)
    with np.errstate(divide="ignore"):  # log 0 where both underflow (and p = 0)
        if reverse:
            return kl_rows(log_s, np.log((1 - skew) * p_t + skew * p_s))
        return kl_rows(log_t, np.log(skew * p_t + (1 - skew) * p_s))


def total_variation(z_t, z_s, t=1.0):
    """``1/2 sum_k |p_T[k] - p_S[k]|`` per row."""
    return 0.5 * np.abs(softmax(z_t / t) - softmax(z_s / t)).sum(-1)
