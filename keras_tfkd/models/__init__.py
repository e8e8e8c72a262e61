"""Model zoo: the CIFAR architectures of the paper plus small models for offline data.

Every model is a functional :class:`keras.Model` that maps a channels-last image batch
to **logits** (no softmax). Models are looked up by name in a registry::

    from keras_tfkd import models
    net = models.get_model("resnet18", num_classes=100)          # 32x32x3 input
    tiny = models.get_model("cnn_tiny", 10, input_shape=(8, 8, 1), width=8)

The CIFAR variants follow the reference code of the paper (a stride-1 3x3 stem and no
input max-pool) and end with global average pooling, so they also accept small inputs
such as 8x8x1 or 28x28x1: deep models simply shrink to 1x1 feature maps.

Family modules add their builders with the :func:`register` decorator. A builder has
the signature ``builder(num_classes, input_shape, **kwargs) -> keras.Model``.
"""

from __future__ import annotations

import keras

# Family modules register themselves on import (with `register`, from
# keras_tfkd.models._registry: no family imports this package back).
from keras_tfkd.models import (  # noqa: F401
    cnn,
    densenet,
    googlenet,
    lm,
    mobilenet_v2,
    resnet,
    resnext,
    shufflenet_v2,
)
from keras_tfkd.models._layers import (  # noqa: F401 (batch_norm: public here)
    BN_EPSILON,
    BN_MOMENTUM,
    batch_norm,
    conv_initializer,
)
from keras_tfkd.models._registry import REGISTRY, available, get_model, register
from keras_tfkd.models.lm import LANGUAGE_MODELS

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "LANGUAGE_MODELS",
    "PAPER_PARAMETER_COUNTS",
    "REGISTRY",
    "available",
    "conv_initializer",
    "count_parameters",
    "get_model",
    "register",
]

#: Trainable parameter counts of the reference PyTorch models at 100 classes and a
#: 32x32x3 input (weights + BatchNorm scale/shift, no moving statistics).
PAPER_PARAMETER_COUNTS: dict[str, int] = {
    "resnet18": 11_220_000,
    "resnet50": 23_710_000,
    "mobilenet_v2": 2_370_000,
    "shufflenet_v2": 1_360_000,
    "googlenet": 6_260_000,
    "densenet121": 7_050_000,
    "resnext29_8x64d": 34_520_000,
}


def count_parameters(model: keras.Model) -> int:
    """Number of trainable scalars (the convention of ``PAPER_PARAMETER_COUNTS``)."""
    total = 0
    for weight in model.trainable_weights:
        size = 1
        for dim in weight.shape:
            size *= int(dim)
        total += size
    return total
