"""The `Distiller`: a `keras.Model` that trains a student on hard and soft targets."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_tfkd import teachers as teachers_lib
from keras_tfkd import validation

try:  # Keras's own helper: undo the 1/replicas scaling of a loss for logging.
    from keras.src.losses.loss import unscale_loss_for_distribution
except ImportError:  # pragma: no cover - older or newer Keras layout

    def unscale_loss_for_distribution(value):
        return value


__all__ = ["Distiller"]


def _check_alpha(alpha):
    if (
        not isinstance(alpha, (int, float, np.floating))
        or isinstance(alpha, bool)
        or not math.isfinite(alpha)
        or not 0.0 <= alpha <= 1.0
    ):
        raise ValueError(f"`alpha` must be a number in [0, 1], got alpha={alpha!r}.")
    return float(alpha)


def _as_loss_list(soft_loss):
    if soft_loss is None:
        return []
    losses = list(soft_loss) if isinstance(soft_loss, (list, tuple)) else [soft_loss]
    resolved = []
    for loss in losses:
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not isinstance(loss, keras.losses.Loss):
            raise TypeError(
                "`soft_loss` must be a keras.losses.Loss (or a list of them) that "
                "takes teacher logits as y_true and student logits as y_pred, got "
                f"soft_loss={loss!r}."
            )
        resolved.append(loss)
    return resolved


_LOGITS_LOSSES = {
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
}


def _resolve_hard_loss(loss):
    if loss is None or isinstance(loss, keras.losses.Loss):
        return loss
    if isinstance(loss, dict):
        return keras.saving.deserialize_keras_object(loss)
    if isinstance(loss, str) and loss in _LOGITS_LOSSES:
        # The student outputs logits: the string names mean "on logits" here.
        return _LOGITS_LOSSES[loss](from_logits=True)
    resolved = keras.losses.get(loss)
    if not isinstance(resolved, keras.losses.Loss):
        # A plain function: wrap it so it gets Keras's reduction and weighting.
        resolved = keras.losses.LossFunctionWrapper(resolved)
    return resolved


@keras.saving.register_keras_serializable(package="keras_tfkd")
class Distiller(keras.Model):
    """Trains `student` on ``(1 - alpha) * hard + alpha * soft``.

    * ``hard`` is the loss against the labels: the `hard_loss` given here or to
      `compile(loss=...)`, else cross-entropy on logits (sparse for integer
      labels ``(N,)``/``(N, 1)``, categorical for one-hot ``(N, K)``).
    * ``soft`` is the sum of the `soft_loss` objects, each called as
      ``loss(teacher_logits, student_logits, sample_weight)``.

    Both terms use Keras's default reduction (the weighted sum divided by the
    batch size), so `sample_weight` weighs hard and soft alike and a weight of
    0 removes a sample from both. Regularisation losses of the student are
    added on top. `compute_loss` returns exactly the scalar `fit` minimises;
    `fit` and `evaluate` log it as ``loss``, and the two terms as
    ``hard_loss`` and ``soft_loss``, beside the compiled metrics of the
    student. `predict` and ``__call__`` run the student alone.

    The teacher is a `keras.Model` that outputs logits (frozen here, run in
    inference mode, gradient-stopped: it costs one forward pass and its
    weights and BatchNorm statistics never change) or a
    `keras_tfkd.teachers.Teacher` (virtual, uniform, cached).

    `alpha` lives in a non-trainable variable: `distiller.alpha = 0.3` (or
    `keras_tfkd.callbacks.AlphaScheduler`) takes effect at the next step
    without retracing.

    Args:
        student: the `keras.Model` being trained; outputs logits ``(N, K)``.
        teacher: a logits `keras.Model`, a `Teacher`, or None.
        soft_loss: a `keras.losses.Loss` or a list of them; defaults to
            `SoftTargetKL()` (batch-mean KL at T = 1) when there is a teacher.
        alpha: weight of the soft term, in [0, 1].
        hard_loss: loss against the labels (overridden by `compile(loss=...)`).

    Example:

    ```python
    from keras_tfkd import Distiller, losses, teachers
    distiller = Distiller(
        student,
        teachers.VirtualTeacher(num_classes=10, correct_prob=0.99),
        soft_loss=losses.SoftTargetKL(temperature=1.0, teacher_temperature=20.0,
                                      temperature_squared=False),
        alpha=0.5,
    )
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x_train, y_train, epochs=5)
    distiller.student.save("student.keras")
    ```
    """

    def __init__(
        self,
        student,
        teacher=None,
        *,
        soft_loss=None,
        alpha=0.5,
        hard_loss=None,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not isinstance(student, keras.Model):
            raise TypeError(
                f"`student` must be a keras.Model, got student={student!r}."
            )
        alpha = _check_alpha(alpha)
        teachers_lib.check_logits_teacher(student, argument="student")
        num_classes = student.output_shape[-1] if student.built else None
        if teacher is not None:
            if isinstance(teacher, teachers_lib.Teacher):
                pass
            elif isinstance(teacher, keras.Model):
                teachers_lib.check_logits_teacher(teacher)
                teacher.trainable = False
            else:
                raise TypeError(
                    "`teacher` must be a keras.Model that outputs logits, a "
                    f"keras_tfkd.teachers.Teacher, or None; got teacher={teacher!r}."
                )
            teacher_classes = teachers_lib.teacher_num_classes(teacher)
            if None not in (num_classes, teacher_classes) and (
                num_classes != teacher_classes
            ):
                raise ValueError(
                    f"The teacher predicts {teacher_classes} classes but the student "
                    f"predicts {num_classes}: `teacher` (num_classes="
                    f"{teacher_classes}) and `student` (output shape "
                    f"{student.output_shape}) must agree."
                )
        soft_losses = _as_loss_list(soft_loss)
        if teacher is not None and not soft_losses:
            from keras_tfkd.losses import SoftTargetKL

            soft_losses = [SoftTargetKL()]
        if soft_losses and teacher is None:
            raise ValueError(
                "`soft_loss` was given but `teacher` is None: a soft-target loss "
                "needs a teacher (a model, VirtualTeacher, UniformTeacher, ...)."
            )
        self.student = student
        self.teacher = teacher
        self.soft_losses = soft_losses
        self.hard_loss = _resolve_hard_loss(hard_loss)
        self.num_classes = num_classes
        self._alpha = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(alpha),
            trainable=False,
            dtype="float32",
            name="alpha",
            autocast=False,
        )
        # Temperatures of the soft losses are variables too: track them so that
        # every backend's compiled step reads their current value.
        self._soft_loss_variables = [
            v for loss in soft_losses for v in getattr(loss, "variables", [])
        ]
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        self.soft_loss_tracker = keras.metrics.Mean(name="soft_loss")
        if student.built:
            self.built = True

    # ------------------------------------------------------------------ knobs
    @property
    def alpha(self):
        """The weight of the soft term (a float); assignable."""
        return float(self._alpha.numpy())

    @alpha.setter
    def alpha(self, value):
        self._alpha.assign(_check_alpha(value))

    @property
    def alpha_variable(self):
        return self._alpha

    @property
    def temperature_variable(self):
        """The teacher-side temperature of the first soft loss that has one.

        For losses whose two sides share a temperature (normal KD) this is
        that shared variable; for Tf-KD_reg it is the virtual teacher's ``T``.
        """
        for loss in self.soft_losses:
            var = getattr(loss, "teacher_temperature", None)
            if isinstance(var, keras.Variable):
                return var
        return None

    @property
    def temperature(self):
        var = self.temperature_variable
        return None if var is None else float(var.numpy())

    @temperature.setter
    def temperature(self, value):
        var = self.temperature_variable
        if var is None:
            raise ValueError("This Distiller has no soft loss with a temperature.")
        if (
            not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(
                f"`temperature` must be a finite number > 0, got temperature={value!r}."
            )
        var.assign(float(value))

    # ------------------------------------------------------------ keras.Model
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile`; `loss` is the hard loss (default: CE on logits)."""
        if loss is not None:
            self.hard_loss = _resolve_hard_loss(loss)
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Re-compile after loading (optimizer, metrics; the hard loss is in config)."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=None):
        if isinstance(self.teacher, teachers_lib.Teacher):
            inputs = self.teacher.student_inputs(inputs)
        return self.student(inputs, training=training)

    def _hard(self, y, y_pred, sample_weight):
        if self.hard_loss is not None:
            return self.hard_loss(y, y_pred, sample_weight=sample_weight)
        num_classes = y_pred.shape[-1]
        if len(y.shape) == len(y_pred.shape) and y.shape[-1] == num_classes != 1:
            loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return loss(y, y_pred, sample_weight=sample_weight)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """``(1 - alpha) * hard + alpha * soft + regularisation`` for one batch."""
        if y is None:
            raise ValueError("The Distiller needs labels `y` to compute its loss.")
        y = ops.convert_to_tensor(y)
        hard = ops.cast(self._hard(y, y_pred, sample_weight), "float32")
        soft = ops.zeros((), dtype="float32")
        if self.teacher is not None and self.soft_losses:
            z_t = teachers_lib.teacher_logits(self.teacher, x, y)
            if z_t is not None:
                for loss in self.soft_losses:
                    soft = soft + ops.cast(
                        loss(z_t, y_pred, sample_weight=sample_weight), "float32"
                    )
        alpha = ops.convert_to_tensor(self._alpha)
        total = (1.0 - alpha) * hard + alpha * soft
        for extra in self.losses:
            total = total + ops.cast(self._aggregate_additional_loss(extra), "float32")
        batch = ops.shape(y_pred)[0]
        self.hard_loss_tracker.update_state(
            unscale_loss_for_distribution(hard), sample_weight=batch
        )
        self.soft_loss_tracker.update_state(
            unscale_loss_for_distribution(soft), sample_weight=batch
        )
        return total

    # ---------------------------------------------- validation before training
    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, after checking the data (clear errors, no step taken)."""
        x, y, kwargs = validation.check_fit_data(self, x, y, kwargs)
        if (validation.is_dataset(x) or getattr(x, "shuffles_itself", False)) and (
            not args
        ):
            # A tf.data pipeline or a keras_tfkd.data.pipeline shuffles itself
            # (seeded); Keras would reorder the batches again, or warn.
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        x, y, kwargs = validation.check_fit_data(self, x, y, kwargs, training=False)
        return super().evaluate(x, y, *args, **kwargs)

    # ------------------------------------------------------------ serialising
    def get_config(self):
        ser = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "student": ser(self.student),
            "teacher": None if self.teacher is None else ser(self.teacher),
            "soft_loss": [ser(loss) for loss in self.soft_losses],
            "alpha": self.alpha,
            "hard_loss": None if self.hard_loss is None else ser(self.hard_loss),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        de = keras.saving.deserialize_keras_object
        student = de(config.pop("student"))
        teacher = config.pop("teacher")
        teacher = None if teacher is None else de(teacher)
        soft = [de(c) for c in config.pop("soft_loss", [])]
        return cls(student, teacher, soft_loss=soft or None, **config)
