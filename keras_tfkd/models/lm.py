"""Small causal transformer language models in core Keras: ``lm_tiny``, ``lm_small``.

A GPT-style decoder: token and learned position embeddings, pre-norm
blocks of causal self-attention (``keras.layers.MultiHeadAttention`` with
``use_causal_mask=True``: position ``l`` sees positions ``<= l`` only) and a
GELU MLP, a final LayerNorm and a Dense layer to the vocabulary. It maps
token ids ``(N, L)`` to next-token **logits** ``(N, L, V)``. No dropout (the
study's runs are short, and no dropout keeps them deterministic), no
KerasHub: core Keras layers only, so it runs on TensorFlow, JAX and PyTorch.

Registered in the zoo with the image models' signature ``builder(
num_classes, input_shape)``: ``num_classes`` is the vocabulary size ``V``
and ``input_shape`` is ``(L,)``, the window length. `LANGUAGE_MODELS` names
them (the image-model checks of the zoo leave them out).
"""

from __future__ import annotations

import keras

from keras_tfkd.models._registry import register

__all__ = ["LANGUAGE_MODELS", "AddPositionEmbedding", "causal_lm"]

#: The zoo's language models, and their size: (width, layers, heads).
LANGUAGE_MODELS = {
    "lm_tiny": (64, 1, 2),
    "lm_small": (128, 2, 4),
}


@keras.saving.register_keras_serializable(package="keras_tfkd")
class AddPositionEmbedding(keras.layers.Layer):
    """``h + E[:L]``: a learned embedding of each position added to ``(N, L, D)``.

    The positions are taken inside `call`, so the table is a weight of the
    step's graph on every backend (an embedding of a constant ``arange``
    built next to the model's input would be computed once, at construction,
    and never trained).
    """

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(int(input_shape[-2]), int(input_shape[-1])),
            initializer="uniform",
            name="embeddings",
        )

    def call(self, h):
        length = keras.ops.shape(h)[-2]
        return h + keras.ops.cast(self.embeddings[:length], h.dtype)[None]


def _input_length(input_shape, name):
    shape = tuple(input_shape)
    if len(shape) != 1 or int(shape[0]) < 1:
        raise ValueError(
            f"{name} takes token ids: `input_shape` must be (sequence_length,), got "
            f"input_shape={shape!r}."
        )
    return int(shape[0])


def causal_lm(
    vocabulary_size, sequence_length, *, width, num_layers, num_heads, name="lm"
):
    """A causal transformer LM: token ids ``(N, L)`` -> logits ``(N, L, V)``.

    Each block is ``h = h + Attn(LN(h))``, ``h = h + MLP(LN(h))`` with a
    causal multi-head attention of `num_heads` heads of size
    ``width / num_heads`` and an MLP of width ``4 * width``.

    Example:

    >>> lm = causal_lm(258, 16, width=32, num_layers=1, num_heads=2)
    >>> lm.output_shape
    (None, 16, 258)
    """
    for arg, value in (
        ("vocabulary_size", vocabulary_size),
        ("sequence_length", sequence_length),
        ("width", width),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{arg}` must be an integer >= 1, got {arg}={value!r}.")
    if width % num_heads:
        raise ValueError(
            f"`width` must be a multiple of `num_heads`, got width={width} and "
            f"num_heads={num_heads}."
        )
    ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    tokens = keras.layers.Embedding(vocabulary_size, width, name="token_embedding")(ids)
    h = AddPositionEmbedding(name="position_embedding")(tokens)
    for i in range(num_layers):
        a = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_ln1")(h)
        a = keras.layers.MultiHeadAttention(
            num_heads, width // num_heads, name=f"block{i}_attention"
        )(a, a, use_causal_mask=True)
        h = h + a
        m = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_ln2")(h)
        m = keras.layers.Dense(4 * width, activation="gelu", name=f"block{i}_mlp1")(m)
        m = keras.layers.Dense(width, name=f"block{i}_mlp2")(m)
        h = h + m
    h = keras.layers.LayerNormalization(epsilon=1e-5, name="final_ln")(h)
    logits = keras.layers.Dense(vocabulary_size, name="logits")(h)
    return keras.Model(ids, logits, name=name)


def _builder(name):
    width, layers, heads = LANGUAGE_MODELS[name]

    def build(num_classes, input_shape=(64,), **kwargs):
        length = _input_length(input_shape, name)
        options = dict(width=width, num_layers=layers, num_heads=heads)
        options.update(kwargs)
        return causal_lm(int(num_classes), length, name=name, **options)

    build.__name__ = name
    build.__doc__ = (
        f"``{name}``: a causal transformer LM of width {width}, {layers} "
        f"block{'s' if layers > 1 else ''} and {heads} attention heads "
        f"(`causal_lm`); ``num_classes`` is the vocabulary, ``input_shape`` "
        f"``(L,)``.\n\n    Example:\n\n    >>> {name}(258, (64,)).output_shape\n"
        "    (None, 64, 258)\n"
    )
    return register(name)(build)


lm_tiny = _builder("lm_tiny")
lm_small = _builder("lm_small")
