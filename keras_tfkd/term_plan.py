"""The plan of a `Distiller`'s soft terms: teachers, losses, features, outputs.

A `Distiller` minimises ``hard_weight * hard + sum_i weight_i * term_i``.
This module holds what each ``term_i`` is made of, resolved once at
construction and kept out of Keras's tracking:

* `BoundTerm` -- one term: its name, teacher, losses, weight name, the output
  it compares and the layers its feature losses link;
* `TermPlan` -- every term, the distinct teachers (each runs once per step),
  the student's feature capture of the current forward pass, the teacher
  passes and the value of each term.

The weights live in `keras_tfkd.loss_weights`, the epoch hooks of teachers
with state in `keras_tfkd.teacher_hooks`.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_tfkd import features as features_lib
from keras_tfkd import losses as losses_lib
from keras_tfkd import teacher_hooks
from keras_tfkd import teachers as teachers_lib

__all__ = [
    "BoundTerm",
    "TermPlan",
    "hard_value",
    "select_output",
    "output_keys",
    "teacher_temperature_property",
]


def select_output(outputs, output_name, what):
    """The `output_name` entry (a key or index) of a model's outputs, or the one."""
    if isinstance(outputs, dict):
        if output_name not in outputs:
            raise ValueError(
                f"The {what} has outputs {sorted(outputs)}: name the one to distil "
                f"with output_name=..., got output_name={output_name!r}."
            )
        return outputs[output_name]
    if isinstance(outputs, (list, tuple)):
        if len(outputs) == 1 and output_name is None:
            return outputs[0]
        n = len(outputs)
        if not isinstance(output_name, int) or not -n <= output_name < n:
            raise ValueError(
                f"The {what} has {n} outputs: give output_name=<index> (0 to "
                f"{n - 1}) for the one to distil, got output_name={output_name!r}."
            )
        return outputs[output_name]
    return outputs


def output_keys(outputs):
    """The keys (dict) or indices (list) of a model's outputs; [] for one."""
    if isinstance(outputs, dict):
        return list(outputs)
    if isinstance(outputs, (list, tuple)):
        return list(range(len(outputs)))
    return []


def hard_value(loss, y, y_pred, sample_weight):
    """The hard term (float32): `loss`, or CE on logits (categorical for one-hot
    labels, sparse for integer ones) when `loss` is None."""
    if loss is None:
        one_hot = len(y.shape) == len(y_pred.shape) and (
            y.shape[-1] == y_pred.shape[-1] != 1
        )
        loss = (
            keras.losses.CategoricalCrossentropy(from_logits=True)
            if one_hot
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
    return ops.cast(loss(y, y_pred, sample_weight=sample_weight), "float32")


def teacher_temperature_property():
    """The model property `teacher_temperature`: the value of its
    `teacher_temperature_variable` (None without one), assignable a finite
    number > 0 (a variable: the next step uses it without retracing)."""

    def get(self):
        var = self.teacher_temperature_variable
        return None if var is None else float(ops.convert_to_numpy(var))

    def set_(self, value):
        var = self.teacher_temperature_variable
        if var is None:
            raise ValueError("This Distiller has no soft loss with a temperature.")
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or not math.isfinite(value) or value <= 0:
            raise ValueError(
                "`teacher_temperature` must be a finite number > 0, got "
                f"teacher_temperature={value!r}."
            )
        var.assign(float(value))

    return property(get, set_, doc=teacher_temperature_property.__doc__)


class BoundTerm:
    """One soft term as the Distiller runs it.

    ``teacher`` is None (and ``losses`` empty) for the soft term of a
    Distiller built without a teacher: its value is 0, so a baseline logs
    ``soft_loss`` like every other run.
    """

    def __init__(self, name, teacher, losses, weight_name, output_name):
        self.name = name
        self.teacher = teacher
        self.losses = list(losses)
        self.weight_name = weight_name
        self.output_name = output_name
        # FeatureDistillation losses: (loss, student layer, teacher layer).
        self.features = []

    def link_features(self, student):
        """Resolve each FeatureDistillation's layers in the student and teacher."""
        for loss in self.losses:
            if not getattr(loss, "uses_features", False):
                continue
            if not isinstance(self.teacher, keras.Model):
                raise ValueError(
                    f"{type(loss).__name__} compares layers of the student and "
                    "the teacher, so the teacher must be a keras.Model, got "
                    f"{type(self.teacher).__name__}."
                )
            self.features.append(
                (
                    loss,
                    features_lib.find_layer(
                        student, loss.student_layer, "student_layer"
                    ),
                    features_lib.find_layer(
                        self.teacher, loss.teacher_layer, "teacher_layer"
                    ),
                )
            )

    def value(self, teacher_logits, capture_t, capture_s, y, y_pred, sample_weight):
        """The sum of the term's losses (float32), before weighting."""
        value = ops.zeros((), dtype="float32")
        logits = select_output(y_pred, self.output_name, "student")
        for loss in self.losses:
            if getattr(loss, "uses_features", False):
                _, student_layer, teacher_layer = next(
                    link for link in self.features if link[0] is loss
                )
                t_feat = ops.stop_gradient(capture_t.output(teacher_layer))
                s_feat = capture_s.output(student_layer)
                part = loss(t_feat, s_feat, sample_weight=sample_weight)
            else:
                if teacher_logits is None:
                    continue
                targets = select_output(teacher_logits, self.output_name, "teacher")
                if getattr(loss, "uses_labels", False):
                    targets = losses_lib.targets_with_labels(
                        targets, select_output(y, self.output_name, "labels")
                    )
                part = loss(targets, logits, sample_weight=sample_weight)
            value = value + ops.cast(part, "float32")
        return value


class TermPlan:
    """What the Distiller computes per step, kept out of Keras's tracking.

    Holds the bound terms and the student's recorded features of the current
    forward pass (`Distiller.call` records them, `compute_loss` reads them),
    so the student runs once per step with feature terms too.
    """

    def __init__(self, terms, student, output_name):
        self.terms = list(terms)
        self.output_name = output_name
        self.stash = None
        for term in self.terms:
            term.link_features(student)

    # ------------------------------------------------------------ structure
    @property
    def feature_losses(self):
        return [link for term in self.terms for link in term.features]

    @property
    def needs_adapter_build(self):
        """Whether a feature loss's adapter is still unbuilt."""
        return any(loss.needs_adapter_build for loss, _, _ in self.feature_losses)

    @property
    def soft_losses(self):
        """Every term's losses, in order."""
        return [loss for term in self.terms for loss in term.losses]

    def adapters(self):
        """The feature adapters (trained with the student, not part of it)."""
        return [
            loss.adapter
            for loss, _, _ in self.feature_losses
            if loss.adapter is not None
        ]

    def student_layers(self):
        return [layer for _, layer, _ in self.feature_losses]

    def teacher_layers(self, teacher):
        return [
            layer
            for term in self.terms
            if term.teacher is teacher
            for _, _, layer in term.features
        ]

    def teachers(self):
        """The distinct teachers of the terms, in order (each runs once a step)."""
        distinct = []
        for term in self.terms:
            if term.teacher is None:
                continue
            if not any(term.teacher is t for t in distinct):
                distinct.append(term.teacher)
        return distinct

    def hooked_teachers(self):
        """The `Teacher` objects whose hooks the Distiller runs."""
        return [t for t in self.teachers() if isinstance(t, teachers_lib.Teacher)]

    def teacher_temperature_variable(self):
        """The ``teacher_temperature`` variable of the first loss with one."""
        for loss in self.soft_losses:
            var = getattr(loss, "teacher_temperature", None)
            if isinstance(var, keras.Variable):
                return var
        return None

    # ------------------------------------------------------------ per step
    def record(self, outputs, capture):
        """Keep the student's feature capture of the forward pass giving `outputs`."""
        self.stash = (outputs, capture)

    def take(self, y_pred):
        """The capture of the forward pass that gave `y_pred` (None if another)."""
        stash, self.stash = self.stash, None
        if stash is None:
            return None
        outputs, capture = stash
        first = keras.tree.flatten(outputs)[0]
        given = keras.tree.flatten(y_pred)[0]
        return capture if first is given else None

    def student_capture(self, distiller, x, y_pred, training):
        """The student's feature capture of the pass that gave `y_pred` (None
        without feature losses); runs the student again for another pass's."""
        if not self.feature_losses:
            return None
        capture = self.take(y_pred)
        if capture is None:
            inputs = teacher_hooks.student_inputs(self.hooked_teachers(), x)
            with features_lib.FeatureCapture(self.student_layers()) as capture:
                distiller.student(inputs, training=training)
        return capture

    def build_adapters_from(self, distiller, x):
        """Build unbuilt feature adapters on two examples of `x`, before `fit`.

        Keras builds them itself otherwise (from symbolic inputs), but only
        inside `fit`, after callbacks such as `BackupAndRestore` have looked
        for the weights to restore. A dataset or generator input is left to
        Keras.
        """
        if not self.needs_adapter_build or teachers_lib.array_rows(x) is None:
            return
        distiller(keras.tree.map_structure(lambda a: a[:2], x), training=False)
        if distiller.student.built:
            distiller.built = True

    def teacher_pass(self, teacher, x, y, training):
        """One forward pass of `teacher`: its float32 logits and feature capture."""
        if isinstance(teacher, teachers_lib.Teacher):
            labels = None if y is None else select_output(y, self.output_name, "labels")
            outputs = teachers_lib.teacher_logits(teacher, x, labels, training=training)
            return outputs, None
        with features_lib.FeatureCapture(self.teacher_layers(teacher)) as capture:
            outputs = teachers_lib.teacher_logits(teacher, x, y, capture=capture)
        return outputs, capture

    def values(self, x, y, y_pred, sample_weight, training, capture_s):
        """Each term's value: every teacher runs once, then each term's losses."""
        passes = {
            id(teacher): self.teacher_pass(teacher, x, y, training)
            for teacher in self.teachers()
        }
        values = []
        for term in self.terms:
            if term.teacher is None:
                values.append(ops.zeros((), dtype="float32"))
                continue
            z_t, capture_t = passes[id(term.teacher)]
            values.append(
                term.value(z_t, capture_t, capture_s, y, y_pred, sample_weight)
            )
        return values

    def build_adapters(self, inputs, capture):
        """Make and build the adapters from the first forward pass's shapes."""
        teacher_captures = {
            id(teacher): self.teacher_pass(teacher, inputs, None, False)[1]
            for teacher in self.teachers()
            if self.teacher_layers(teacher)
        }
        for term in self.terms:
            for loss, student_layer, teacher_layer in term.features:
                if not loss.needs_adapter_build:
                    continue
                loss.build_adapter(
                    capture.output(student_layer).shape,
                    teacher_captures[id(term.teacher)].output(teacher_layer).shape,
                )
