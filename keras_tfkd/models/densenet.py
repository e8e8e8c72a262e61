"""CIFAR DenseNet-BC (Huang et al., 2017) as used by the paper's reference code.

A stride-1 3x3 stem conv to ``2 * growth_rate`` channels, four dense blocks of
bottleneck layers (BN-ReLU-1x1 conv to ``4 * growth_rate`` -> BN-ReLU-3x3 conv to
``growth_rate``, concatenated to the input), transitions (BN -> 1x1 conv halving the
channels -> 2x2 average pool, with no ReLU, as in the reference code) between blocks,
then BN-ReLU, global average pooling and a linear classifier. Convs have no bias.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_tfkd.models._layers import batch_norm as _bn
from keras_tfkd.models._layers import conv_initializer
from keras_tfkd.models._registry import register


def _conv(filters, kernel_size, name):
    return layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=False,
        kernel_initializer=conv_initializer(),
        name=name,
    )


def _bottleneck(x, growth_rate, name):
    y = _bn(f"{name}_bn1")(x)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(4 * growth_rate, 1, f"{name}_conv1")(y)
    y = _bn(f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(growth_rate, 3, f"{name}_conv2")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def _transition(x, out_channels, name):
    x = _bn(f"{name}_bn")(x)
    x = _conv(out_channels, 1, f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, padding="same", name=f"{name}_pool")(x)


def _densenet(num_classes, input_shape, blocks, growth_rate, reduction, name):
    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv(2 * growth_rate, 3, "stem_conv")(inputs)
    for block, layers_in_block in enumerate(blocks):
        for index in range(layers_in_block):
            x = _bottleneck(x, growth_rate, f"block{block + 1}_layer{index + 1}")
        if block < len(blocks) - 1:
            out_channels = int(reduction * x.shape[-1])
            x = _transition(x, out_channels, f"transition{block + 1}")
    x = _bn("final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


@register("densenet121")
def densenet121(
    num_classes: int,
    input_shape=(32, 32, 3),
    growth_rate: int = 32,
    reduction: float = 0.5,
) -> keras.Model:
    """CIFAR DenseNet-121 (BC): blocks [6, 12, 24, 16], growth rate 32, 1024-d features.

    Reference size: 7.05M trainable parameters at 100 classes.

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("densenet121", num_classes=100).output_shape  # doctest: +SKIP
        (None, 100)
    """
    return _densenet(
        num_classes, input_shape, (6, 12, 24, 16), growth_rate, reduction, "densenet121"
    )
