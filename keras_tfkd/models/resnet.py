"""CIFAR ResNets (He et al., 2016) as used by the paper's reference code.

The CIFAR variant keeps a stride-1 3x3 stem without input max-pooling; stages of
64/128/256/512 planes, the last three downsampling by a stride-2 convolution. Convs
have no bias; projection shortcuts (1x1 conv + BN) only where the shape changes.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_tfkd.models._layers import batch_norm as _bn
from keras_tfkd.models._layers import conv_initializer
from keras_tfkd.models._registry import register


def _conv(filters, kernel_size, strides, name):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=conv_initializer(),
        name=name,
    )


def _shortcut(x, out_channels, strides, name):
    if strides != 1 or x.shape[-1] != out_channels:
        x = _conv(out_channels, 1, strides, f"{name}_proj_conv")(x)
        x = _bn(f"{name}_proj_bn")(x)
    return x


def _basic_block(x, planes, strides, name):
    shortcut = _shortcut(x, planes, strides, name)
    y = _conv(planes, 3, strides, f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(planes, 3, 1, f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, planes, strides, name):
    expansion = 4
    shortcut = _shortcut(x, planes * expansion, strides, name)
    y = _conv(planes, 1, 1, f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(planes, 3, strides, f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(planes * expansion, 1, 1, f"{name}_conv3")(y)
    y = _bn(f"{name}_bn3")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _resnet(block, num_blocks, num_classes, input_shape, name):
    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv(64, 3, 1, "stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks)):
        for index in range(blocks):
            strides = 2 if stage > 0 and index == 0 else 1
            x = block(x, planes, strides, f"stage{stage + 1}_block{index + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


@register("resnet18")
def resnet18(num_classes: int, input_shape=(32, 32, 3)) -> keras.Model:
    """CIFAR ResNet-18: basic blocks [2, 2, 2, 2], 512-d features.

    Reference size: 11.22M trainable parameters at 100 classes.

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("resnet18", num_classes=100).output_shape  # doctest: +SKIP
        (None, 100)
    """
    return _resnet(_basic_block, (2, 2, 2, 2), num_classes, input_shape, "resnet18")


@register("resnet50")
def resnet50(num_classes: int, input_shape=(32, 32, 3)) -> keras.Model:
    """CIFAR ResNet-50: bottleneck blocks [3, 4, 6, 3] (expansion 4), 2048-d features.

    Reference size: 23.71M trainable parameters at 100 classes.

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("resnet50", num_classes=100).output_shape  # doctest: +SKIP
        (None, 100)
    """
    return _resnet(
        _bottleneck_block, (3, 4, 6, 3), num_classes, input_shape, "resnet50"
    )


@register("resnet101")
def resnet101(num_classes: int, input_shape=(32, 32, 3)) -> keras.Model:
    """CIFAR ResNet-101: bottleneck blocks [3, 4, 23, 3] (expansion 4).

    A teacher of the paper's MobileNetV2 KD row. 42.70M trainable parameters at
    100 classes (no reference count in the paper).

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("resnet101", num_classes=100).output_shape  # doctest: +SKIP
        (None, 100)
    """
    return _resnet(
        _bottleneck_block, (3, 4, 23, 3), num_classes, input_shape, "resnet101"
    )
