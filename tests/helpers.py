"""Keras test helpers shared by several test files."""

import keras
from keras import ops


class FixedLogits(keras.layers.Layer):
    """Returns the logits stored for the current batch (inputs are row indices)."""

    def __init__(self, logits, **kwargs):
        super().__init__(**kwargs)
        self.table = ops.convert_to_tensor(logits)

    def call(self, idx):
        return ops.take(self.table, ops.cast(ops.squeeze(idx, -1), "int32"), axis=0)


def fixed_logits_model(logits, name):
    """A keras.Model whose output for input ``[[i]]`` is ``logits[i]``."""
    inp = keras.Input((1,))
    return keras.Model(inp, FixedLogits(logits)(inp), name=name)
