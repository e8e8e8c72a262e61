"""Model names a run can use: `keras_tfkd.models`, three `keras.applications`,
and the functions of your own that `register_model` names.

A model of your own is a function that returns a fresh logits `keras.Model`
(`keras_tfkd.compare` and ``keras-tfkd study --student package.module:function``
register it). Its checkpoints are weights files, loaded by building it again,
so a subclassed model needs no ``get_config`` and custom layers no
registration; its `model_fingerprint`
(the layers and weight shapes it builds) enters every run's key, so a changed
architecture trains again under the same name.
"""

from __future__ import annotations

import hashlib
import inspect
import json

import keras
import numpy as np

from keras_tfkd import experiments as experiments_lib
from keras_tfkd import models

__all__ = [
    "ModelCheckError",
    "build_model",
    "check_model",
    "checkpoint_name",
    "check_model_name",
    "is_custom_model",
    "model_fingerprint",
    "model_names",
    "register_model",
]


class ModelCheckError(ValueError):
    """A model of yours cannot serve a study: it fails to build, does not take
    the data, or does not return one output of K logits (the message says)."""


#: name -> a function of yours that builds the model (`register_model`).
_CUSTOM = {}
#: (name, input shape, K) -> fingerprint, once the model is checked.
_CHECKED = {}


def register_model(name, builder):
    """Name `builder`, a function returning a fresh logits `keras.Model`.

    `builder` takes no argument, or any of ``num_classes`` and
    ``input_shape`` (passed by keyword). Registering a name again replaces
    its function. Returns `name`.

    >>> register_model("demo.tiny", lambda: keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(3)]))
    'demo.tiny'
    """
    if not callable(builder):
        raise TypeError(
            f"The model {name!r} must be a function that builds a keras.Model, "
            f"got {type(builder).__name__}."
        )
    accepted = _builder_arguments(builder, name)
    if _CUSTOM.get(name, (None,))[0] is not builder:
        _CHECKED.clear()
    _CUSTOM[name] = (builder, accepted)
    return name


def checkpoint_name(name, which):
    """The file of a normal run's `which` (``"best"``/``"final"``) checkpoint
    of model `name`: ``best.keras``, or ``best.weights.h5`` for a model of
    yours (its weights only: it is built again by its function, so it need
    not be serialisable)."""
    return f"{which}.weights.h5" if name in _CUSTOM else f"{which}.keras"


def is_custom_model(name):
    """Whether `name` is a function of yours (`register_model`)."""
    return name in _CUSTOM


def _builder_arguments(builder, name):
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: call it bare
        return ()
    accepted, required = [], []
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in ("num_classes", "input_shape"):
            accepted.append(p.name)
        elif p.default is p.empty:
            required.append(p.name)
    if required:
        raise TypeError(
            f"The model function {name!r} needs argument(s) "
            f"{', '.join(required)}; it is called with none, or with num_classes "
            "and/or input_shape by keyword."
        )
    return tuple(accepted)


def _build_custom(name, num_classes, input_shape):
    builder, accepted = _CUSTOM[name]
    values = {"num_classes": int(num_classes), "input_shape": tuple(input_shape)}
    try:
        model = builder(**{k: values[k] for k in accepted})
    except Exception as e:
        raise ModelCheckError(
            f"Building the model {name!r} failed ({type(e).__name__}: {e})."
        ) from e
    if not isinstance(model, keras.Model):
        raise ModelCheckError(
            f"The model function {name!r} returned {type(model).__name__}, not a "
            "keras.Model."
        )
    if not hasattr(model, "output_shape"):
        # A subclassed model: wrapped in a functional one (one Input, its
        # call), which has the output shape, summary and saving that a
        # Distiller and the checkpoints need.
        try:
            inputs = keras.Input(tuple(input_shape))
            model = keras.Model(inputs, model(inputs), name=model.name)
        except Exception as e:
            raise _cannot_take(name, input_shape, e) from None
    return model


def _cannot_take(name, input_shape, error):
    return ModelCheckError(
        f"The model {name!r} cannot take the data's examples of shape "
        f"{tuple(input_shape)} ({type(error).__name__}: {error})."
    )


def model_fingerprint(name, dataset):
    """None for a zoo model; for one of yours, a digest of what it builds
    (its layers' types and its weights' shapes), once `check_model` passes."""
    if name not in _CUSTOM:
        return None
    return check_model(name, dataset)


def check_model(name, dataset):
    """Build the model `name` and check it on two training examples of
    `dataset`: it must take them and return logits of shape ``(2, K)`` (not
    probabilities: no softmax at the end). A `ModelCheckError` says what is
    wrong, before anything trains. Checked once per name and data shape;
    returns the fingerprint of a model of yours (None for a zoo model).
    """
    cache_key = (name, tuple(dataset.input_shape), int(dataset.num_classes))
    if cache_key not in _CHECKED:
        _CHECKED[cache_key] = _check(name, dataset)
    return _CHECKED[cache_key]


def _check(name, dataset):
    from keras_tfkd import data as data_lib

    try:
        model = build_model(name, dataset.num_classes, dataset.input_shape)
    except ModelCheckError:
        raise
    except Exception as e:  # a zoo model that cannot be built for this input
        raise ModelCheckError(
            f"The model {name!r} cannot be built for the data's examples of shape "
            f"{tuple(dataset.input_shape)} ({type(e).__name__}: {e})."
        ) from None
    x, _ = data_lib.pipeline(
        dataset, "train", 2, augment=False, shuffle=False, engine="numpy"
    )[0]
    try:
        out = model(x, training=False)
    except Exception as e:
        raise _cannot_take(name, dataset.input_shape, e) from None
    if isinstance(out, (list, tuple, dict)):
        raise ModelCheckError(
            f"The model {name!r} returns {len(out)} outputs; a study needs one "
            "output of logits."
        )
    out = np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float64)
    k = int(dataset.num_classes)
    if out.shape != (len(x), k):
        raise ModelCheckError(
            f"The model {name!r} outputs shape {out.shape[1:]} per batch of "
            f"{len(x)}, but {dataset.name!r} has K={k} classes: it must end with "
            f"a Dense({k}) of logits."
        )
    if out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(axis=1), 1, 1e-4):
        raise ModelCheckError(
            f"The model {name!r} outputs probabilities (rows summing to 1): "
            "distillation needs logits, so remove the final softmax (e.g. "
            "Dense(K) with no activation)."
        )
    if name not in _CUSTOM:
        return None
    layout = [
        [type(layer).__name__ for layer in model.layers],
        [[list(w.shape), str(w.dtype)] for w in model.weights],
    ]
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]


def model_names():
    """Every student/teacher name: `keras_tfkd.models`, the ImageNet ones, and
    those of `register_model`."""
    return sorted(
        [*models.available(), *experiments_lib.IMAGENET_APPLICATIONS, *_CUSTOM]
    )


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
    if name in _CUSTOM:
        return _build_custom(name, num_classes, input_shape)
    app = experiments_lib.IMAGENET_APPLICATIONS.get(name)
    if app is not None:
        return getattr(keras.applications, app)(
            weights=None,
            input_shape=tuple(input_shape),
            classes=int(num_classes),
            classifier_activation=None,
        )
    return models.get_model(name, num_classes, input_shape=tuple(input_shape))
