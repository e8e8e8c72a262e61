"""Sequence outputs: logits ``(N, L, V)``, one prediction per token.

A language model's student and teacher output logits of shape ``(N, L, V)``
(batch, tokens, vocabulary), its labels are the next token ids ``(N, L)``, and
its padding mask comes as the `sample_weight` ``(N, L)`` (KerasHub's CausalLM
preprocessors yield ``(x, y, sample_weight)`` with the mask there). Every
loss of a `Distiller`, hard and soft, is then a mean over the unmasked
tokens::

    loss = sum_{n,l} w[n, l] * loss[n, l] / sum_{n,l} w[n, l]

as TRL, torchtune and DistillKit compute it; a batch whose weights are all 0
gives 0, not NaN. Keras's default reduction, ``"sum_over_batch_size"``,
divides by ``N * L`` instead (padding counted in the denominator), so the
Distiller hands every loss the weights ``w * N * L / sum(w)`` (`token_weights`),
which turn that reduction into the token mean for any `keras.losses.Loss`,
ours or Keras's. Classifier outputs ``(N, K)`` keep Keras's reduction exactly
(a weighted sum divided by ``N``).

With ``fit(..., gradient_accumulation_steps=s)`` each of the `s` batches is its
own token mean, and the update follows their mean: batches with few unmasked
tokens weigh as much as full ones (unlike a token mean over all `s` batches).
"""

from __future__ import annotations

from keras import ops

__all__ = ["token_axes", "token_weights", "is_sequence"]


def token_axes(shape):
    """The number of leading axes of logits of `shape` (1 for ``(N, K)``).

    ``(N, K)`` -> 1, ``(N, L, V)`` -> 2; None for an unknown shape.
    """
    if shape is None:
        return None
    return max(len(tuple(shape)) - 1, 1)


def is_sequence(logits):
    """Whether `logits` hold one prediction per token (rank 3 or more)."""
    return len(logits.shape) >= 3


def token_weights(sample_weight, logits):
    """`sample_weight` rescaled so that ``"sum_over_batch_size"`` is a token mean.

    For classifier logits ``(N, K)`` (or no weights) `sample_weight` comes
    back unchanged. For sequence logits ``(N, L, ..., V)`` the weights
    (``(N,)``, ``(N, L)``, ...) are broadcast over the tokens ``(N, L, ...)``
    and multiplied by ``count / sum(w)``, ``count`` the number of tokens, so
    ``sum(w' * loss) / count == sum(w * loss) / sum(w)``; all-zero weights stay
    0 (the loss is then 0).
    """
    if sample_weight is None or not is_sequence(logits):
        return sample_weight
    weights = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    tokens = ops.ones(ops.shape(logits)[:-1], dtype="float32")
    while len(weights.shape) < len(tokens.shape):
        weights = ops.expand_dims(weights, -1)
    weights = weights * tokens
    return weights * ops.divide_no_nan(ops.sum(tokens), ops.sum(weights))
