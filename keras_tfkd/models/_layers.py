"""The layers every model of the zoo builds the same way.

BatchNorm with PyTorch's defaults and the Kaiming-normal convolution
initializer. The family modules (`keras_tfkd.models.resnet`, ...) import them
from here, not from the package, so the package imports its families and no
family imports the package back; `keras_tfkd.models` re-exports them.
"""

from __future__ import annotations

import keras

__all__ = ["BN_EPSILON", "BN_MOMENTUM", "batch_norm", "conv_initializer"]

#: Keras ``BatchNormalization`` settings equivalent to PyTorch's defaults
#: (PyTorch ``momentum=0.1`` weights the *new* batch; Keras weights the running value).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(name: str) -> keras.layers.BatchNormalization:
    """BatchNorm with PyTorch's defaults (`BN_MOMENTUM`, `BN_EPSILON`).

    Every model of the zoo builds its BatchNorm layers with it.
    """
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


def conv_initializer() -> keras.initializers.Initializer:
    """Kaiming-normal (fan-out, ReLU gain) initializer used for convolution kernels."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )
