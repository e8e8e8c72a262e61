"""CIFAR MobileNetV2 (Sandler et al., 2018) as used by the paper's reference code.

Inverted residual blocks (1x1 expand -> 3x3 depthwise -> linear 1x1 project, ReLU6),
identity residual when the stride is 1 and the width is unchanged. CIFAR variant: a
stride-1 stem, stages downsampling at 24, 32 and 64 channels only (32 -> 4 pixels), a
1x1 conv to 1280 channels, global average pooling and a linear classifier. As in the
reference, every convolution carries a bias in addition to its BatchNorm.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_tfkd.models._layers import batch_norm as _bn
from keras_tfkd.models._layers import conv_initializer
from keras_tfkd.models._registry import register

# (expansion t, output channels c, repeats n, first stride s) per stage.
_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 1),
    (6, 320, 1, 1),
)


def _conv1x1(filters, name):
    return layers.Conv2D(filters, 1, kernel_initializer=conv_initializer(), name=name)


def _inverted_residual(x, expansion, out_channels, strides, name):
    in_channels = x.shape[-1]
    hidden = in_channels * expansion
    y = _conv1x1(hidden, f"{name}_expand")(x)
    y = _bn(f"{name}_expand_bn")(y)
    y = layers.ReLU(max_value=6.0, name=f"{name}_expand_relu6")(y)
    y = layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding="same",
        depthwise_initializer=conv_initializer(),
        name=f"{name}_depthwise",
    )(y)
    y = _bn(f"{name}_depthwise_bn")(y)
    y = layers.ReLU(max_value=6.0, name=f"{name}_depthwise_relu6")(y)
    y = _conv1x1(out_channels, f"{name}_project")(y)
    y = _bn(f"{name}_project_bn")(y)
    if strides == 1 and in_channels == out_channels:
        y = layers.Add(name=f"{name}_add")([y, x])
    return y


@register("mobilenet_v2")
def mobilenet_v2(num_classes: int, input_shape=(32, 32, 3)) -> keras.Model:
    """CIFAR MobileNetV2 (width 1.0): 17 inverted residual blocks, 1280-d features.

    Reference size: 2.37M trainable parameters at 100 classes.

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("mobilenet_v2", num_classes=100).output_shape  # doctest: +SKIP
        (None, 100)
    """
    inputs = keras.Input(shape=input_shape, name="images")
    x = layers.Conv2D(
        32, 3, padding="same", kernel_initializer=conv_initializer(), name="stem_conv"
    )(inputs)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_relu6")(x)
    for stage, (expansion, channels, repeats, strides) in enumerate(_STAGES):
        for index in range(repeats):
            x = _inverted_residual(
                x,
                expansion,
                channels,
                strides if index == 0 else 1,
                f"stage{stage + 1}_block{index + 1}",
            )
    x = _conv1x1(1280, "head_conv")(x)
    x = _bn("head_bn")(x)
    x = layers.ReLU(max_value=6.0, name="head_relu6")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2")
