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

from collections.abc import Callable

import keras

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "PAPER_PARAMETER_COUNTS",
    "REGISTRY",
    "available",
    "conv_initializer",
    "count_parameters",
    "get_model",
    "register",
]

#: Keras ``BatchNormalization`` settings equivalent to PyTorch's defaults
#: (PyTorch ``momentum=0.1`` weights the *new* batch; Keras weights the running value).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

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

Builder = Callable[..., keras.Model]

#: name -> builder function ``builder(num_classes, input_shape, **kwargs)``.
REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator that adds a model builder to the registry under ``name``.

    Example:
        >>> @register("my_net")
        ... def my_net(num_classes, input_shape=(32, 32, 3), **kwargs): ...
        >>> "my_net" in REGISTRY
        True
        >>> del REGISTRY["my_net"]  # (this example leaves the registry as it was)
    """

    def decorator(builder: Builder) -> Builder:
        if name in REGISTRY and REGISTRY[name] is not builder:
            raise ValueError(f"A model named {name!r} is already registered.")
        REGISTRY[name] = builder
        return builder

    return decorator


def available() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(REGISTRY)


def get_model(
    name: str,
    num_classes: int,
    input_shape: tuple[int, ...] = (32, 32, 3),
    **kwargs,
) -> keras.Model:
    """Build the registered model ``name`` as a functional Keras model emitting logits.

    Args:
        name: a registry name, see :func:`available`.
        num_classes: number of output logits.
        input_shape: channels-last input shape without the batch axis.
        **kwargs: model-specific options (e.g. ``width`` for the small models).

    Raises:
        ValueError: if ``name`` is not registered; the message lists the valid names.

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("mobilenet_v2", num_classes=100).output_shape  # doctest: +SKIP
        (None, 100)
    """
    try:
        builder = REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown model {name!r}. Valid names: {', '.join(available())}."
        ) from None
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}.")
    return builder(int(num_classes), tuple(int(d) for d in input_shape), **kwargs)


def count_parameters(model: keras.Model) -> int:
    """Number of trainable scalars (the convention of ``PAPER_PARAMETER_COUNTS``)."""
    total = 0
    for weight in model.trainable_weights:
        size = 1
        for dim in weight.shape:
            size *= int(dim)
        total += size
    return total


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


# Family modules register themselves on import; they need ``register`` defined above.
from keras_tfkd.models import (  # noqa: E402, F401
    cnn,
    densenet,
    googlenet,
    mobilenet_v2,
    resnet,
    resnext,
    shufflenet_v2,
)
