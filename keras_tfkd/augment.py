"""Deprecated: the reference augmentations moved to `keras_tfkd.data.augment`.

This module re-exports its public names and emits a `DeprecationWarning` on
import; it is removed in the next release.
"""

from keras_tfkd._deprecation import warn_moved
from keras_tfkd.data.augment import (  # noqa: F401
    CIFAR_DEGREES,
    CIFAR_PAD,
    POLICIES,
    TINY_IMAGENET_DEGREES,
    __all__,
    apply,
    flip,
    random_resized_crop,
    read_image,
    resize_centre_crop,
    rotate,
    sample,
    shift,
    shift_pad,
)

warn_moved(__name__, "keras_tfkd.data.augment")
