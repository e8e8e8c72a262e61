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
