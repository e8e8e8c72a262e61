"""CIFAR ResNeXt-29 (Xie et al., 2017) as used by the paper's reference code.

A stride-1 3x3 stem conv (64 channels, BN, ReLU), three stages of three aggregated
bottleneck blocks with 256/512/1024 output channels (strides 1/2/2), global average
pooling and a linear classifier. A block is 1x1 reduce -> 3x3 grouped conv
(``cardinality`` groups) -> 1x1 expand, each followed by BN; its inner width is
``cardinality * base_width`` in the first stage and doubles with every stage
(512/1024/2048 for 8x64d). The shortcut is a 1x1 conv + BN when the width changes.
Convs have no bias.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_tfkd.models._layers import batch_norm as _bn
from keras_tfkd.models._layers import conv_initializer
from keras_tfkd.models._registry import register


def _conv(filters, kernel_size, strides, name, groups=1):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        groups=groups,
        use_bias=False,
        kernel_initializer=conv_initializer(),
        name=name,
    )


def _block(x, out_channels, inner_channels, cardinality, strides, name):
    if x.shape[-1] != out_channels:
        shortcut = _conv(out_channels, 1, strides, f"{name}_proj_conv")(x)
        shortcut = _bn(f"{name}_proj_bn")(shortcut)
    else:
        shortcut = x
    y = _conv(inner_channels, 1, 1, f"{name}_reduce")(x)
    y = _bn(f"{name}_reduce_bn")(y)
    y = layers.ReLU(name=f"{name}_reduce_relu")(y)
    y = _conv(inner_channels, 3, strides, f"{name}_grouped", groups=cardinality)(y)
    y = _bn(f"{name}_grouped_bn")(y)
    y = layers.ReLU(name=f"{name}_grouped_relu")(y)
    y = _conv(out_channels, 1, 1, f"{name}_expand")(y)
    y = _bn(f"{name}_expand_bn")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _resnext29(num_classes, input_shape, cardinality, base_width, name):
    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv(64, 3, 1, "stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    inner = cardinality * base_width
    for stage, out_channels in enumerate((256, 512, 1024)):
        for index in range(3):
            strides = 2 if stage > 0 and index == 0 else 1
            x = _block(
                x,
                out_channels,
                inner * 2**stage,
                cardinality,
                strides,
                f"stage{stage + 1}_block{index + 1}",
            )
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


@register("resnext29_8x64d")
def resnext29_8x64d(num_classes: int, input_shape=(32, 32, 3)) -> keras.Model:
    """CIFAR ResNeXt-29 with cardinality 8 and bottleneck width 64 (8x64d).

    Reference size: 34.52M trainable parameters at 100 classes.

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("resnext29_8x64d", num_classes=100).output_shape  # doctest: +SKIP
        (None, 100)
    """
    return _resnext29(num_classes, input_shape, 8, 64, "resnext29_8x64d")
