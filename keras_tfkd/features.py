"""Feature distillation: losses between intermediate layers of student and teacher.

`FeatureDistillation(student_layer=..., teacher_layer=..., loss="mse")` is a
soft term of a `keras_tfkd.Distiller` that compares the output of one layer
of the student with the output of one layer of the teacher, both taken from
the forward passes the Distiller runs anyway: the student's own (the one
whose logits feed the hard loss) and the teacher's single forward pass of the
step. A layer is named by its name or given as the layer object, at any depth
of a Functional, Sequential or **subclassed** model.

Built-in losses (``loss=``), each per example and then averaged over the
batch with Keras's ``sample_weight`` reduction:

* ``"mse"`` (FitNets, Romero et al., ICLR 2015): the mean over all feature
  elements of ``(f_t - a(f_s))^2``, with ``a`` the adapter (identity if none).
* ``"attention"`` (attention transfer, Zagoruyko & Komodakis, ICLR 2017):
  with the spatial attention map ``q(f) = mean_c f[..., c]^2`` flattened and
  L2-normalised, the mean over positions of ``(q(f_s) - q(f_t))^2``. The
  paper's ``beta / 2`` (``beta = 1000``) is the term's weight, not part of
  the loss. Maps of different channel counts compare without an adapter;
  their spatial sizes must match.
* any Keras loss name or function (``"mae"``, ``"cosine_similarity"``, ...)
  or a `keras.losses.Loss`, applied as ``loss(f_t, a(f_s))`` and averaged
  over every axis but the batch.

An adapter maps the student's features to the teacher's shape when they
differ: ``adapter="conv"`` (a 1x1 convolution, as the FitNets regressor),
``"dense"`` (a dense layer on the last axis), both a `FeatureAdapter` sized
from the teacher's first forward pass, or any `keras.layers.Layer`. It is
trained with the student (its variables belong to the Distiller) and is not
part of the student, so ``distiller.student.save(...)`` never contains it.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_tfkd import _keras_compat

__all__ = [
    "FeatureAdapter",
    "FeatureDistillation",
    "FEATURE_LOSSES",
    "attention_map",
    "find_layer",
]

#: The built-in feature losses by name.
FEATURE_LOSSES = ("mse", "attention")

#: The adapter shortcuts.
ADAPTERS = ("conv", "dense")


def _describe(model):
    return f"{type(model).__name__} {model.name!r}"


def find_layer(model, layer, argument):
    """The layer of `model` named `layer` (a name, or the layer object itself).

    Searches every depth (blocks of a subclassed model included). Raises a
    `ValueError` naming `argument` when no layer, or more than one, matches.
    """
    layers = _keras_compat.nested_layers(model)
    if isinstance(layer, keras.layers.Layer):
        if layer is model or any(found is layer for found in layers):
            return layer
        raise ValueError(
            f"`{argument}` is the layer {layer.name!r}, which is not part of the "
            f"{_describe(model)}: give a layer of that model, or its name."
        )
    if not isinstance(layer, str):
        raise TypeError(
            f"`{argument}` must be a layer name or a keras.layers.Layer, got "
            f"{argument}={layer!r}."
        )
    matches = [found for found in layers if found.name == layer]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(
            f"`{argument}`={layer!r}: {len(matches)} layers of the "
            f"{_describe(model)} have that name; give the layer object instead."
        )
    names = [found.name for found in layers]
    shown = ", ".join(names[:24]) + (", ..." if len(names) > 24 else "")
    hint = (
        " (the model has no layers yet: build it by calling it once)"
        if not names
        else ""
    )
    raise ValueError(
        f"`{argument}`={layer!r}: the {_describe(model)} has no layer of that "
        f"name{hint}. Its layers: {shown}."
    )


class FeatureCapture:
    """Records the outputs of some layers during one forward pass.

    ``with FeatureCapture([layer, ...]) as capture: y = model(x)`` runs the
    model once; ``capture.output(layer)`` is then that layer's output in
    that pass. A layer that runs more than once in the pass is an error
    (its feature would be ambiguous).
    """

    def __init__(self, layers):
        self._layers = list({id(layer): layer for layer in layers}.values())
        self._outputs = {}
        self._context = None

    def wants(self, layer):
        """Whether `layer` is one of the recorded layers."""
        return any(found is layer for found in self._layers)

    def record(self, layer, outputs):
        """Record `outputs` as the output of `layer`; return them."""
        if id(layer) in self._outputs:
            raise ValueError(
                f"The layer {layer.name!r} ran more than once in one forward pass, "
                "so its feature is ambiguous: distil a layer that runs once."
            )
        self._outputs[id(layer)] = outputs
        return outputs

    def __enter__(self):
        self._outputs = {}
        self._context = _keras_compat.record_outputs(self._layers, self.record)
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def output(self, layer):
        if id(layer) not in self._outputs:
            raise ValueError(
                f"The layer {layer.name!r} did not run in the forward pass: distil "
                "a layer on the path from the model's inputs to its output."
            )
        outputs = self._outputs[id(layer)]
        if isinstance(outputs, (list, tuple, dict)):
            raise ValueError(
                f"The layer {layer.name!r} returns several tensors "
                f"({type(outputs).__name__}); distil a layer with one output."
            )
        return outputs


def _per_example_mean(values):
    values = ops.cast(values, "float32")
    if len(values.shape) <= 1:
        return values
    return ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=-1)


def attention_map(features):
    """The spatial attention map of Zagoruyko & Komodakis: ``normalize(mean_c f^2)``.

    `features` are ``(N, ..., C)`` (channels last); the result is ``(N, P)``
    with ``P`` the number of positions, each row of unit L2 norm.
    """
    features = ops.cast(features, "float32")
    energy = ops.mean(ops.square(features), axis=-1)
    energy = ops.reshape(energy, (ops.shape(energy)[0], -1))
    norm = ops.sqrt(ops.sum(ops.square(energy), axis=-1, keepdims=True))
    return energy / ops.maximum(norm, 1e-12)


def _resolve_loss(loss):
    if loss in FEATURE_LOSSES:
        return loss
    if isinstance(loss, keras.losses.Loss):
        return loss
    if isinstance(loss, dict):
        return keras.saving.deserialize_keras_object(loss)
    try:
        resolved = keras.losses.get(loss)
    except (ValueError, TypeError):
        resolved = None
    if resolved is None or not callable(resolved):
        raise ValueError(
            f"`loss` must be one of {list(FEATURE_LOSSES)}, a Keras loss name or "
            f"function, or a keras.losses.Loss; got loss={loss!r}."
        )
    return resolved


@keras.saving.register_keras_serializable(package="keras_tfkd")
class FeatureAdapter(keras.layers.Layer):
    """A learned linear map of the last axis to the teacher's channels.

    ``kind="conv"`` is the FitNets regressor, a 1x1 convolution without bias
    on ``(N, H, W, C_s)`` features; ``kind="dense"`` a `Dense` layer (with
    bias) on any ``(..., C_s)``. The number of output channels is the
    teacher's, set by the Distiller from the teacher's first forward pass
    (or given as `channels`).
    """

    def __init__(self, kind="conv", channels=None, **kwargs):
        super().__init__(**kwargs)
        if kind not in ADAPTERS:
            raise ValueError(
                f"`kind` must be one of {list(ADAPTERS)}, got kind={kind!r}."
            )
        self.kind = kind
        self.channels = None if channels is None else int(channels)

    def set_channels(self, channels, teacher_layer):
        if channels is None:
            raise ValueError(
                f"The teacher layer {teacher_layer!r} has no static last dimension, "
                "so the adapter's size is unknown: give "
                f'FeatureAdapter(kind="{self.kind}", channels=...) as the adapter.'
            )
        if self.channels is None:
            self.channels = int(channels)

    def build(self, input_shape):
        if self.channels is None:
            raise ValueError(
                "FeatureAdapter needs its number of channels before it is built."
            )
        self.kernel = self.add_weight(
            shape=(int(input_shape[-1]), self.channels),
            initializer="glorot_uniform",
            name="kernel",
        )
        self.bias = (
            self.add_weight(shape=(self.channels,), initializer="zeros", name="bias")
            if self.kind == "dense"
            else None
        )

    def call(self, inputs):
        outputs = ops.matmul(inputs, self.kernel)
        return outputs if self.bias is None else outputs + self.bias

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind, channels=self.channels)
        return config


@keras.saving.register_keras_serializable(package="keras_tfkd")
class FeatureDistillation(keras.losses.Loss):
    """A loss between a student layer's and a teacher layer's outputs.

    ``loss(f_t, f_s)`` per example, averaged over the batch (`sample_weight`
    weighs the examples, as for every keras-tfkd loss):

    * ``"mse"`` (default, FitNets): ``mean((f_t - a(f_s))^2)`` over all
      feature elements of the example;
    * ``"attention"`` (attention transfer): ``mean_p (q_s[p] - q_t[p])^2``
      with ``q = normalize(flatten(mean_c f^2))``;
    * a Keras loss: ``mean(loss(f_t, a(f_s)))`` over the non-batch axes.

    ``a`` is the adapter: None (shapes must match), ``"conv"`` (a 1x1
    convolution without bias to the teacher's channels), ``"dense"`` (a
    dense layer to the teacher's last axis) or a `keras.layers.Layer`. It is
    trained with the student and not saved with it.

    Give it to a `keras_tfkd.Distiller` as a soft loss (``soft_loss=[...]``)
    or in a `keras_tfkd.Term`; the Distiller runs each model once per step
    and records the two layers on the way. Called directly, it takes the two
    feature tensors: ``loss(teacher_features, student_features)``.

    Args:
        student_layer: a layer name (any depth) or the layer object.
        teacher_layer: the same for the teacher.
        loss: ``"mse"``, ``"attention"``, a Keras loss name/function or a
            `keras.losses.Loss`.
        adapter: None, ``"conv"``, ``"dense"`` or a `keras.layers.Layer`.

    Example:

    ```python
    from keras_tfkd import Distiller, losses
    distiller = Distiller(
        student=student, teacher=teacher, hard_weight=1.0, soft_weight=1.0,
        soft_loss=[losses.SoftTargetKL(temperature=4.0),
                   losses.FeatureDistillation(student_layer="block2",
                                              teacher_layer="block3",
                                              adapter="conv")])
    ```
    """

    #: Read by the Distiller: this loss takes layer outputs, not logits.
    uses_features = True

    def __init__(
        self,
        student_layer=None,
        teacher_layer=None,
        loss="mse",
        adapter=None,
        name="feature_distillation",
        adapter_shapes=None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        for argument, value in (
            ("student_layer", student_layer),
            ("teacher_layer", teacher_layer),
        ):
            if not isinstance(value, (str, keras.layers.Layer)):
                raise TypeError(
                    f"FeatureDistillation needs `{argument}`: a layer name or a "
                    f"keras.layers.Layer, got {argument}={value!r}."
                )
        self.student_layer = student_layer
        self.teacher_layer = teacher_layer
        self.loss = _resolve_loss(loss)
        if adapter is not None and not (
            adapter in ADAPTERS or isinstance(adapter, keras.layers.Layer)
        ):
            raise ValueError(
                f"`adapter` must be None, one of {list(ADAPTERS)} or a "
                f"keras.layers.Layer, got adapter={adapter!r}."
            )
        self._adapter_spec = adapter
        if adapter in ADAPTERS:
            adapter = FeatureAdapter(kind=adapter, name=f"{name}_adapter")
        self.adapter = adapter
        self._built_shapes = None
        if adapter_shapes is not None:
            self.build_adapter(*(tuple(shape) for shape in adapter_shapes))

    # ------------------------------------------------------------- adapter
    @property
    def needs_adapter_build(self):
        """Whether the adapter still has to be built (before the first step)."""
        return self.adapter is not None and not self.adapter.built

    def build_adapter(self, student_shape, teacher_shape):
        """Build the adapter from the student's and teacher's feature shapes."""
        if self.adapter is None:
            return
        if isinstance(self.adapter, FeatureAdapter):
            self.adapter.set_channels(teacher_shape[-1], self._layer_name("teacher"))
            if self.adapter.kind == "conv" and len(student_shape) != 4:
                raise ValueError(
                    'adapter="conv" needs image features (N, H, W, C), but the '
                    f"student layer {self._layer_name('student')!r} outputs shape "
                    f'{tuple(student_shape)}: use adapter="dense".'
                )
        if not self.adapter.built:
            self.adapter.build(tuple(student_shape))
        # Saved in the config, so that a loaded Distiller builds its adapter
        # before Keras loads the adapter's weights.
        self._built_shapes = [
            [None, *student_shape[1:]],
            [None, *teacher_shape[1:]],
        ]

    def _layer_name(self, side):
        layer = getattr(self, f"{side}_layer")
        return layer if isinstance(layer, str) else layer.name

    # ---------------------------------------------------------------- value
    def call(self, y_true, y_pred):
        teacher = ops.cast(y_true, "float32")
        student = y_pred
        if self.adapter is not None:
            student = self.adapter(student)
        student = ops.cast(student, "float32")
        if isinstance(self.loss, str) and self.loss == "attention":
            difference = attention_map(student) - attention_map(teacher)
            return ops.mean(ops.square(difference), axis=-1)
        if tuple(student.shape[1:]) != tuple(teacher.shape[1:]):
            raise ValueError(
                f"FeatureDistillation: the student layer "
                f"{self._layer_name('student')!r} gives features of shape "
                f"{tuple(student.shape)} and the teacher layer "
                f"{self._layer_name('teacher')!r} {tuple(teacher.shape)}: give "
                'an adapter ("conv", "dense" or a layer) or layers of one shape.'
            )
        if isinstance(self.loss, str):  # "mse"
            return _per_example_mean(ops.square(teacher - student))
        if isinstance(self.loss, keras.losses.Loss):
            return _per_example_mean(self.loss.call(teacher, student))
        return _per_example_mean(self.loss(teacher, student))

    def get_config(self):
        def layer_config(layer):
            return layer if isinstance(layer, str) else layer.name

        if isinstance(self.loss, str):
            loss = self.loss
        elif isinstance(self.loss, keras.losses.Loss):
            loss = keras.saving.serialize_keras_object(self.loss)
        else:
            loss = keras.losses.serialize(self.loss)
        adapter = self._adapter_spec
        if isinstance(adapter, keras.layers.Layer):
            adapter = keras.saving.serialize_keras_object(adapter)
        return {
            "name": self.name,
            "reduction": self.reduction,
            "student_layer": layer_config(self.student_layer),
            "teacher_layer": layer_config(self.teacher_layer),
            "loss": loss,
            "adapter": adapter,
            "adapter_shapes": self._built_shapes,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        loss = config.get("loss")
        if isinstance(loss, (dict, str)) and loss not in FEATURE_LOSSES:
            config["loss"] = (
                keras.saving.deserialize_keras_object(loss)
                if isinstance(loss, dict)
                else loss
            )
        if isinstance(config.get("adapter"), dict):
            config["adapter"] = keras.saving.deserialize_keras_object(config["adapter"])
        return cls(**config)
