"""The model registry: `register` (a decorator), `available` and `get_model`.

The family modules register their builders here on import; the package
`keras_tfkd.models` imports every family and re-exports these names, so
``keras_tfkd.models.get_model`` sees the whole zoo.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

__all__ = ["REGISTRY", "available", "get_model", "register"]

Builder = Callable[..., keras.Model]

#: name -> builder function ``builder(num_classes, input_shape, **kwargs)``.
REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator that adds a model builder to the registry under ``name``.

    Example:
        >>> @register("my_net")
        ... def my_net(num_classes, input_shape=(32, 32, 3), **kwargs): ...
        >>> "my_net" in REGISTRY
        True
        >>> del REGISTRY["my_net"]  # (this example leaves the registry as it was)
    """

    def decorator(builder: Builder) -> Builder:
        if name in REGISTRY and REGISTRY[name] is not builder:
            raise ValueError(f"A model named {name!r} is already registered.")
        REGISTRY[name] = builder
        return builder

    return decorator


def available() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(REGISTRY)


def get_model(
    name: str,
    num_classes: int,
    input_shape: tuple[int, ...] = (32, 32, 3),
    **kwargs,
) -> keras.Model:
    """Build the registered model ``name`` as a functional Keras model emitting logits.

    Args:
        name: a registry name, see :func:`available`.
        num_classes: number of output logits.
        input_shape: channels-last input shape without the batch axis.
        **kwargs: model-specific options (e.g. ``width`` for the small models).

    Raises:
        ValueError: if ``name`` is not registered; the message lists the valid names.

    Example:
        >>> from keras_tfkd.models import get_model
        >>> get_model("mobilenet_v2", num_classes=100).output_shape  # doctest: +SKIP
        (None, 100)
    """
    try:
        builder = REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown model {name!r}. Valid names: {', '.join(available())}."
        ) from None
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}.")
    return builder(int(num_classes), tuple(int(d) for d in input_shape), **kwargs)
