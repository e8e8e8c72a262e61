"""CIFAR ShuffleNetV2 (Ma et al., 2018) as used by the paper's reference code.

Stem: stride-1 3x3 conv to 24 channels + BN (no input max-pool). Three stages of
(1 downsampling + 3/7/3 basic) shuffle units with 116/232/464 channels at width 1.0,
a 1x1 conv to 1024 channels, global average pooling and a linear classifier.

A basic unit splits the channels in two halves, transforms one half
(1x1 -> 3x3 depthwise -> 1x1) and concatenates it with the untouched half; a
downsampling unit transforms the full input along two stride-2 branches. Each unit ends
with a channel shuffle (2 groups). As in the reference, convolutions carry biases.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_tfkd.models._layers import batch_norm as _bn
from keras_tfkd.models._layers import conv_initializer
from keras_tfkd.models._registry import register

# Stage output channels and the head width for each supported width multiplier.
_WIDTHS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}
# Basic units after the downsampling unit of each stage.
_REPEATS = (3, 7, 3)


def _conv1x1(filters, name):
    return layers.Conv2D(filters, 1, kernel_initializer=conv_initializer(), name=name)


def _depthwise(strides, name):
    return layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding="same",
        depthwise_initializer=conv_initializer(),
        name=name,
    )


def _branch(x, mid_channels, out_channels, strides, name):
    """1x1 conv-BN-ReLU -> 3x3 depthwise-BN -> 1x1 conv-BN-ReLU."""
    y = _conv1x1(mid_channels, f"{name}_pw1")(x)
    y = _bn(f"{name}_pw1_bn")(y)
    y = layers.ReLU(name=f"{name}_pw1_relu")(y)
    y = _depthwise(strides, f"{name}_dw")(y)
    y = _bn(f"{name}_dw_bn")(y)
    y = _conv1x1(out_channels, f"{name}_pw2")(y)
    y = _bn(f"{name}_pw2_bn")(y)
    return layers.ReLU(name=f"{name}_pw2_relu")(y)


def _channel_shuffle(x, groups, name):
    height, width, channels = x.shape[1:]
    x = layers.Reshape(
        (height, width, groups, channels // groups), name=f"{name}_split_groups"
    )(x)
    x = layers.Permute((1, 2, 4, 3), name=f"{name}_transpose")(x)
    return layers.Reshape((height, width, channels), name=f"{name}_merge_groups")(x)


def _down_unit(x, out_channels, name):
    in_channels = x.shape[-1]
    half = out_channels // 2
    left = _depthwise(2, f"{name}_left_dw")(x)
    left = _bn(f"{name}_left_dw_bn")(left)
    left = _conv1x1(half, f"{name}_left_pw")(left)
    left = _bn(f"{name}_left_pw_bn")(left)
    left = layers.ReLU(name=f"{name}_left_pw_relu")(left)
    right = _branch(x, in_channels, half, 2, f"{name}_right")
    x = layers.Concatenate(name=f"{name}_concat")([left, right])
    return _channel_shuffle(x, 2, name)


def _basic_unit(x, name):
    channels = x.shape[-1]
    half = channels // 2
    left = x[..., :half]
    right = x[..., half:]
    right = _branch(right, half, half, 1, f"{name}_right")
    x = layers.Concatenate(name=f"{name}_concat")([left, right])
    return _channel_shuffle(x, 2, name)


@register("shufflenet_v2")
def shufflenet_v2(
    num_classes: int, input_shape=(32, 32, 3), width_multiplier: float = 1.0
) -> keras.Model:
    """CIFAR ShuffleNetV2 (``width_multiplier`` 0.5, 1.0, 1.5 or 2.0; default 1.0).

    Reference size: 1.36M trainable parameters at 100 classes (width 1.0).

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("shufflenet_v2", num_classes=100).output_shape  # doctest: +SKIP
        (None, 100)
    """
    try:
        *stage_channels, head_channels = _WIDTHS[float(width_multiplier)]
    except KeyError:
        raise ValueError(
            f"width_multiplier must be one of {sorted(_WIDTHS)}, "
            f"got {width_multiplier!r}."
        ) from None
    inputs = keras.Input(shape=input_shape, name="images")
    x = layers.Conv2D(
        24, 3, padding="same", kernel_initializer=conv_initializer(), name="stem_conv"
    )(inputs)
    x = _bn("stem_bn")(x)
    for stage, (channels, repeats) in enumerate(zip(stage_channels, _REPEATS)):
        prefix = f"stage{stage + 2}"
        x = _down_unit(x, channels, f"{prefix}_unit1")
        for index in range(repeats):
            x = _basic_unit(x, f"{prefix}_unit{index + 2}")
    x = _conv1x1(head_channels, "head_conv")(x)
    x = _bn("head_bn")(x)
    x = layers.ReLU(name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="shufflenet_v2")
