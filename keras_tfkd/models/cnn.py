"""Plain CNNs: the paper's 5-layer CNN and small models for tiny offline data sets.

* ``cnn5``: the reference code's baseline CNN (3 conv + 2 dense layers).
* ``mlp``: a two-hidden-layer perceptron.
* ``cnn_tiny`` / ``cnn_small``: a weak and a stronger BatchNorm conv net for 8x8x1
  (sklearn digits) or 28x28x1 (Fashion-MNIST) images; both end with global average
  pooling so they accept any input size.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_tfkd.models._layers import batch_norm as _bn
from keras_tfkd.models._layers import conv_initializer
from keras_tfkd.models._registry import register


def _conv_bn_relu(x, filters, name):
    x = layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=False,
        kernel_initializer=conv_initializer(),
        name=f"{name}_conv",
    )(x)
    x = _bn(f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _positive_int(value, what):
    value = int(value)
    if value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value}.")
    return value


@register("cnn5")
def cnn5(
    num_classes: int,
    input_shape=(32, 32, 3),
    width: int = 32,
    dropout: float = 0.5,
) -> keras.Model:
    """The paper's 5-layer CNN: three conv blocks and two dense layers.

    Each conv block is 3x3 conv (``width``, ``2*width``, ``4*width`` channels, with
    bias) -> BN -> 2x2 max-pool -> ReLU; then flatten -> dense(``4*width``) -> BN ->
    ReLU -> dropout -> dense(logits). ``width`` is ``num_channels`` of the reference
    code (32). Not in the reference parameter list; with the defaults it has
    369,124 trainable parameters at 100 classes and a 32x32x3 input.

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("cnn5", num_classes=100).output_shape
        (None, 100)
    """
    width = _positive_int(width, "width")
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for index, multiplier in enumerate((1, 2, 4)):
        name = f"block{index + 1}"
        x = layers.Conv2D(
            width * multiplier,
            3,
            padding="same",
            kernel_initializer=conv_initializer(),
            name=f"{name}_conv",
        )(x)
        x = _bn(f"{name}_bn")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"{name}_pool")(x)
        x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(4 * width, name="fc1")(x)
    x = _bn("fc1_bn")(x)
    x = layers.ReLU(name="fc1_relu")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn5")


@register("mlp")
def mlp(
    num_classes: int,
    input_shape=(8, 8, 1),
    width: int = 128,
    depth: int = 2,
    dropout: float = 0.0,
) -> keras.Model:
    """Multi-layer perceptron: flatten -> ``depth`` x (dense(``width``) -> ReLU).

    About 26k parameters for 8x8x1 inputs and 10 classes with the defaults.

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("mlp", 10, input_shape=(8, 8, 1), width=64).output_shape
        (None, 10)
    """
    width = _positive_int(width, "width")
    inputs = keras.Input(shape=input_shape, name="images")
    x = layers.Flatten(name="flatten")(inputs)
    for index in range(int(depth)):
        x = layers.Dense(width, activation="relu", name=f"hidden{index + 1}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"dropout{index + 1}")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mlp")


@register("cnn_tiny")
def cnn_tiny(num_classes: int, input_shape=(8, 8, 1), width: int = 8) -> keras.Model:
    """A weak conv net: conv(w) -> conv(2w) -> max-pool -> conv(4w) -> GAP -> dense.

    Every conv is 3x3 + BN + ReLU. With ``width=8`` it has about 6.3k parameters for
    8x8x1 inputs and 10 classes (any ``width`` below ~20 stays under 40k).

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("cnn_tiny", 10, input_shape=(8, 8, 1)).output_shape
        (None, 10)
    """
    width = _positive_int(width, "width")
    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv_bn_relu(inputs, width, "conv1")
    x = _conv_bn_relu(x, 2 * width, "conv2")
    x = layers.MaxPooling2D(2, padding="same", name="pool")(x)
    x = _conv_bn_relu(x, 4 * width, "conv3")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn_tiny")


@register("cnn_small")
def cnn_small(
    num_classes: int,
    input_shape=(8, 8, 1),
    width: int = 32,
    dropout: float = 0.2,
) -> keras.Model:
    """A stronger conv net: 2x conv(w) -> pool -> 2x conv(2w) -> pool -> conv(4w).

    Every conv is 3x3 + BN + ReLU, followed by global average pooling, dropout and a
    dense head. With ``width=32`` it has about 140k parameters (10 classes).

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("cnn_small", 10, input_shape=(28, 28, 1)).output_shape
        (None, 10)
    """
    width = _positive_int(width, "width")
    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv_bn_relu(inputs, width, "conv1a")
    x = _conv_bn_relu(x, width, "conv1b")
    x = layers.MaxPooling2D(2, padding="same", name="pool1")(x)
    x = _conv_bn_relu(x, 2 * width, "conv2a")
    x = _conv_bn_relu(x, 2 * width, "conv2b")
    x = layers.MaxPooling2D(2, padding="same", name="pool2")(x)
    x = _conv_bn_relu(x, 4 * width, "conv3")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn_small")
