"""Model names a run can use: `keras_tfkd.models` plus three `keras.applications`."""

from __future__ import annotations

import keras

from keras_tfkd import experiments as experiments_lib
from keras_tfkd import models

__all__ = ["build_model", "check_model_name", "model_names"]


def model_names():
    """Every student/teacher name: `keras_tfkd.models` plus the ImageNet ones."""
    return sorted([*models.available(), *experiments_lib.IMAGENET_APPLICATIONS])


def check_model_name(name, argument="model"):
    """Raise `UnknownNameError` (listing the valid names) for an unknown model."""
    names = model_names()
    if name not in names:
        raise experiments_lib.UnknownNameError(
            f"Unknown {argument} {name!r}; valid models: {', '.join(names)}.",
            name,
            names,
        )


def build_model(name, num_classes, input_shape):
    """A logits model by name: `keras_tfkd.models` or a `keras.applications` one.

    The ImageNet names (``imagenet_resnet50``, ``imagenet_mobilenet_v2``,
    ``imagenet_densenet121``) build the `keras.applications` model with
    ``weights=None`` and ``classifier_activation=None`` (logits).

    >>> model = build_model("cnn_tiny", 10, (8, 8, 1))  # doctest: +SKIP
    """
    check_model_name(name)
    app = experiments_lib.IMAGENET_APPLICATIONS.get(name)
    if app is not None:
        return getattr(keras.applications, app)(
            weights=None,
            input_shape=tuple(input_shape),
            classes=int(num_classes),
            classifier_activation=None,
        )
    return models.get_model(name, num_classes, input_shape=tuple(input_shape))
