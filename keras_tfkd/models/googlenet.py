"""CIFAR GoogLeNet / Inception-v1 (Szegedy et al., 2015) as used by the paper's code.

CIFAR variant: a single stride-1 3x3 conv (192 channels) replaces the ImageNet stem,
then inception blocks 3a-3b, a stride-2 max-pool, 4a-4e, a stride-2 max-pool, 5a-5b,
global average pooling, dropout 0.4 and a linear classifier. Each inception block has
four branches (1x1; 1x1->3x3; 1x1->3x3->3x3 in place of 5x5; 3x3 max-pool->1x1), every
convolution with a bias followed by BatchNorm and ReLU.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_tfkd.models._layers import batch_norm, conv_initializer
from keras_tfkd.models._registry import register

# (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection) per inception block.
_BLOCKS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _conv_bn_relu(x, filters, kernel_size, name):
    x = layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        kernel_initializer=conv_initializer(),
        name=f"{name}_conv",
    )(x)
    x = batch_norm(f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _inception(x, widths, name):
    n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = widths
    b1 = _conv_bn_relu(x, n1x1, 1, f"{name}_b1")
    b2 = _conv_bn_relu(x, n3x3_reduce, 1, f"{name}_b2_reduce")
    b2 = _conv_bn_relu(b2, n3x3, 3, f"{name}_b2")
    b3 = _conv_bn_relu(x, n5x5_reduce, 1, f"{name}_b3_reduce")
    b3 = _conv_bn_relu(b3, n5x5, 3, f"{name}_b3a")
    b3 = _conv_bn_relu(b3, n5x5, 3, f"{name}_b3b")
    b4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_b4_pool")(x)
    b4 = _conv_bn_relu(b4, pool_proj, 1, f"{name}_b4")
    return layers.Concatenate(name=f"{name}_concat")([b1, b2, b3, b4])


@register("googlenet")
def googlenet(
    num_classes: int, input_shape=(32, 32, 3), dropout: float = 0.4
) -> keras.Model:
    """CIFAR GoogLeNet: 9 inception blocks, 1024-d features, dropout before the head.

    Reference size: 6.26M trainable parameters at 100 classes.

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("googlenet", num_classes=100).output_shape  # doctest: +SKIP
        (None, 100)
    """
    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv_bn_relu(inputs, 192, 3, "stem")
    for block in ("3a", "3b"):
        x = _inception(x, _BLOCKS[block], f"inception{block}")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool3")(x)
    for block in ("4a", "4b", "4c", "4d", "4e"):
        x = _inception(x, _BLOCKS[block], f"inception{block}")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool4")(x)
    for block in ("5a", "5b"):
        x = _inception(x, _BLOCKS[block], f"inception{block}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="googlenet")
