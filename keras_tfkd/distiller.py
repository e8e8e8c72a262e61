"""The `Distiller`: a `keras.Model` that trains a student on hard and soft targets."""

from __future__ import annotations

import inspect
import math
import sys
import warnings

import keras
import numpy as np
from keras import ops

from keras_tfkd import _keras_compat, validation, weight_schedules
from keras_tfkd import losses as losses_lib
from keras_tfkd import teachers as teachers_lib

__all__ = ["Distiller"]


def _check_alpha(alpha):
    if isinstance(alpha, weight_schedules.WeightSchedule):
        return alpha
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


def _keras_loss_class(function):
    """The `keras.losses.Loss` class of a Keras loss function, or None."""
    key = getattr(function, "__name__", "").replace("_", "").lower()
    for name in dir(keras.losses):
        obj = getattr(keras.losses, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, keras.losses.Loss)
            and name.lower() == key
        ):
            return obj
    return None


def _takes_from_logits(resolved):
    if isinstance(resolved, keras.losses.Loss):
        target = type(resolved).__init__
    else:
        target = resolved
    try:
        return "from_logits" in inspect.signature(target).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


def _logits_loss_message(loss, resolved):
    cls = (
        type(resolved)
        if isinstance(resolved, keras.losses.Loss)
        else _keras_loss_class(resolved)
    )
    class_name = "SparseCategoricalCrossentropy" if cls is None else cls.__name__
    given = repr(loss) if isinstance(loss, str) else f"keras.losses.{loss.__name__}"
    return (
        f"loss={given} is refused: in Keras it means from_logits=False (the "
        "predictions are probabilities), but a Distiller's student outputs "
        "logits. Pass the loss object instead, e.g. "
        f"loss=keras.losses.{class_name}(from_logits=True), or leave loss=None "
        "for cross-entropy on logits (sparse for integer labels, categorical "
        "for one-hot labels)."
    )


def _resolve_hard_loss(loss):
    """The hard loss as a `keras.losses.Loss` (None: CE on logits, chosen per batch).

    A string or Keras loss function keeps Keras's meaning (``keras.losses.get``,
    as its `keras.losses.Loss` class with default arguments), except the
    losses with a ``from_logits`` flag (the cross-entropies): Keras reads them
    as ``from_logits=False``, which is wrong for the student's logits, and
    reading them as ``from_logits=True`` would silently differ from Keras, so
    they are refused with a message naming the loss object to pass.
    """
    if loss is None or isinstance(loss, keras.losses.Loss):
        return loss
    if isinstance(loss, dict):
        return keras.saving.deserialize_keras_object(loss)
    resolved = keras.losses.get(loss)
    if _takes_from_logits(resolved):
        raise ValueError(_logits_loss_message(loss, resolved))
    if isinstance(resolved, keras.losses.Loss):
        return resolved
    cls = _keras_loss_class(resolved)
    if cls is None:
        raise TypeError(
            "`loss` must be a keras.losses.Loss (on the student's logits and the "
            f"labels), a Keras loss name or None, got loss={loss!r}. Wrap a "
            "custom function in a keras.losses.Loss subclass."
        )
    return cls()


def _checked_weight(name, value):
    """`alpha` in [0, 1], a hard or soft weight >= 0 (or a schedule of it)."""
    if name == "alpha":
        return _check_alpha(value)
    return weight_schedules.check_weight(name, value)


def _loss_weights(alpha, hard_weight, soft_weight):
    """The weighting a Distiller was given: ``alpha`` (convex) or free weights."""
    if hard_weight is None and soft_weight is None:
        return {
            "weighting": "alpha",
            "alpha": _check_alpha(0.5 if alpha is None else alpha),
        }
    if alpha is not None:
        raise ValueError(
            "Give either `alpha` (the loss is (1 - alpha) * hard + alpha * soft) or "
            "`hard_weight`/`soft_weight` (hard_weight * hard + soft_weight * soft), "
            f"not both: got alpha={alpha!r}, hard_weight={hard_weight!r}, "
            f"soft_weight={soft_weight!r}."
        )
    return {
        "weighting": "weights",
        "hard_weight": weight_schedules.check_weight(
            "hard_weight", 1.0 if hard_weight is None else hard_weight
        ),
        "soft_weight": weight_schedules.check_weight(
            "soft_weight", 1.0 if soft_weight is None else soft_weight
        ),
    }


def _check_target_kinds(teacher, soft_losses):
    """A teacher that hands over probabilities needs losses that take them."""
    kind = teacher.targets if isinstance(teacher, teachers_lib.Teacher) else "logits"
    for loss in soft_losses:
        wanted = getattr(loss, "targets", "logits")
        if wanted != kind:
            fix = (
                'SoftTargetCrossEntropy(targets="probabilities")'
                if kind == "probabilities"
                else "a loss on teacher logits"
            )
            raise ValueError(
                f"The teacher {type(teacher).__name__} hands the soft losses "
                f"{kind}, but soft_loss {type(loss).__name__} takes {wanted}: "
                f"use {fix}."
            )


class _EpochHooks(keras.callbacks.Callback):
    """Sets the scheduled loss weights and runs the teacher's epoch hooks.

    Added by `Distiller.fit` itself, first in the list, so that a method's
    schedule (PS-KD's ramp, DKD's warm-up) and epoch-end state (OLS's soft
    labels) need nothing from the user; ``epochs`` is `fit`'s, so a resumed
    fit (``initial_epoch``) sees the same schedule.
    """

    def __init__(self, distiller):
        super().__init__()
        self._distiller = distiller

    def _epochs(self):
        planned = self._distiller.schedule_epochs
        if planned is not None:
            return int(planned)
        return int((self.params or {}).get("epochs") or 1)

    def on_epoch_begin(self, epoch, logs=None):
        distiller = self._distiller
        for name, schedule in distiller._schedules.items():
            value = schedule.value(epoch, self._epochs())
            getattr(distiller, f"_{name}").assign(_checked_weight(name, value))
        if isinstance(distiller.teacher, teachers_lib.Teacher):
            distiller.teacher.on_epoch_begin(epoch, self._epochs())

    def on_epoch_end(self, epoch, logs=None):
        distiller = self._distiller
        if isinstance(distiller.teacher, teachers_lib.Teacher):
            distiller.teacher.on_epoch_end(epoch)
        if logs is not None:
            for name in distiller._schedules:
                logs[name] = distiller._weight(name)


def _has_epoch_hooks(teacher):
    return isinstance(teacher, teachers_lib.Teacher) and teacher.has_epoch_hooks


#: keras.distillation.Distiller's own arguments, refused here with a pointer.
_KERAS_DISTILLER_ARGUMENTS = (
    "distillation_losses",
    "distillation_loss_weights",
    "student_loss_weight",
)


def _positional_models_message(args):
    kinds = ", ".join(type(arg).__name__ for arg in args)
    return (
        f"Distiller takes its arguments by keyword only, got {len(args)} "
        f"positional argument(s) ({kinds}). Write "
        "Distiller(student=..., teacher=..., soft_loss=..., alpha=...): `student` "
        "is the model being trained, `teacher` the frozen one. "
        "keras.distillation.Distiller takes them positionally in the opposite "
        "order (teacher, student), so a positional call could silently train "
        "the teacher."
    )


def _warn_renamed(old, new, *, setting=False):
    caller = sys._getframe(2).f_globals.get("__name__", "")
    if not setting and caller.startswith(_FRAMEWORK_MODULES):
        # Keras reads every attribute when it saves or tracks a model: that
        # is no use of the old name.
        return
    warnings.warn(
        f"`Distiller.{old}` is deprecated and will be removed in the next "
        f"release: use `Distiller.{new}`. It is the temperature of the teacher "
        "side (SoftTargetKL.teacher_temperature), while SoftTargetKL.temperature "
        "is the student's.",
        DeprecationWarning,
        stacklevel=_user_stacklevel(),
    )


def _user_stacklevel():
    """The `stacklevel` of the first caller outside this module and Keras.

    An attribute assignment reaches a property setter through Keras's (and on
    TensorFlow, tf.Module's) ``__setattr__``: the warning should name the
    user's line, not theirs.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != __name__ and not module.startswith(_FRAMEWORK_MODULES):
            return level
        frame, level = frame.f_back, level + 1
    return 1


_FRAMEWORK_MODULES = ("keras.", "tensorflow.", "tf_keras.", "torch.", "jax.")


@keras.saving.register_keras_serializable(package="keras_tfkd")
class Distiller(keras.Model):
    """Trains `student` on ``(1 - alpha) * hard + alpha * soft``, or on
    ``hard_weight * hard + soft_weight * soft``.

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
    without retracing. For weights that need not sum to 1 (DKD's
    ``CE + w * DKD``) give `hard_weight` and `soft_weight` instead (each
    defaults to 1 when the other is given); they are variables too. Any of
    the three may be a `keras_tfkd.weight_schedules.WeightSchedule`, which
    `fit` sets at every epoch begin (``value(epoch, epochs)`` with `fit`'s
    ``epochs``, or `schedule_epochs` when set) and logs in ``history``.

    A soft loss that subclasses `keras_tfkd.losses.LabelAwareLoss` also
    receives the labels. A `Teacher` may keep state that it updates after
    every training step from the student's logits and at epoch ends
    (`keras_tfkd.online`: PS-KD, OLS, CS-KD); `fit` runs its hooks.

    Every argument is keyword-only: ``Distiller(student=..., teacher=...)``.
    (`keras.distillation.Distiller` takes ``(teacher, student)`` positionally,
    the opposite order; a positional call here raises a `TypeError` rather than
    risk training the teacher.)

    Args:
        student: the `keras.Model` being trained; outputs logits ``(N, K)``.
        teacher: a logits `keras.Model`, a `Teacher`, or None.
        soft_loss: a `keras.losses.Loss` or a list of them; defaults to
            `SoftTargetKL()` (batch-mean KL at T = 1) when there is a teacher.
        alpha: weight of the soft term, in [0, 1] (default 0.5), or a
            `WeightSchedule`; the hard term weighs ``1 - alpha``.
        hard_loss: loss against the labels (overridden by `compile(loss=...)`);
            a `keras.losses.Loss` on logits. Cross-entropy names are refused,
            see `compile`.
        hard_weight, soft_weight: the two weights, numbers >= 0 or
            `WeightSchedule` objects, instead of `alpha` (not with it).

    Example:

    ```python
    from keras_tfkd import Distiller, losses, teachers
    distiller = Distiller(
        student=student,
        teacher=teachers.VirtualTeacher(num_classes=10, correct_prob=0.99),
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
        *args,
        student=None,
        teacher=None,
        soft_loss=None,
        alpha=None,
        hard_loss=None,
        hard_weight=None,
        soft_weight=None,
        name="distiller",
        **kwargs,
    ):
        if args:
            raise TypeError(_positional_models_message(args))
        keras_names = sorted(set(kwargs) & set(_KERAS_DISTILLER_ARGUMENTS))
        if keras_names:
            raise TypeError(
                f"Distiller got {', '.join(f'`{n}`' for n in keras_names)}, an "
                "argument of keras.distillation.Distiller: here the soft term is "
                "`soft_loss=` (a keras.losses.Loss or a list of them) and its "
                "weight `alpha=` (the hard term weighs 1 - alpha)."
            )
        if student is None:
            raise TypeError(
                "Distiller needs `student=`: Distiller(student=..., teacher=..., "
                "soft_loss=..., alpha=...)."
            )
        super().__init__(name=name, **kwargs)
        if not isinstance(student, keras.Model):
            raise TypeError(
                f"`student` must be a keras.Model, got student={student!r}."
            )
        weights = _loss_weights(alpha, hard_weight, soft_weight)
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
        _check_target_kinds(teacher, soft_losses)
        self.student = student
        self.teacher = teacher
        self.soft_losses = soft_losses
        self.hard_loss = _resolve_hard_loss(hard_loss)
        self.num_classes = num_classes
        # The loss weights live in non-trainable variables: a schedule (or
        # AlphaScheduler) changes them at the next step without retracing.
        self._weighting = weights["weighting"]
        self._schedules = {}
        if self._weighting == "alpha":
            self._alpha = self._weight_variable("alpha", weights["alpha"])
        else:
            self._hard_weight = self._weight_variable(
                "hard_weight", weights["hard_weight"]
            )
            self._soft_weight = self._weight_variable(
                "soft_weight", weights["soft_weight"]
            )
        if isinstance(teacher, teachers_lib.Teacher):
            teacher.bind_student(student)
        #: The ``E`` of the weight schedules and the teacher's epoch hooks;
        #: None: `fit`'s ``epochs``. Set it when one run is trained by
        #: several `fit` calls of one epoch each (as `keras_tfkd.runs` does).
        self.schedule_epochs = None
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
    def _weight_variable(self, name, value):
        if isinstance(value, weight_schedules.WeightSchedule):
            self._schedules[name] = value
            value = value.initial_value()
        return self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(float(value)),
            trainable=False,
            dtype="float32",
            name=name,
            autocast=False,
        )

    @property
    def weighting(self):
        """``"alpha"`` (``(1 - alpha) hard + alpha soft``) or ``"weights"`` (free)."""
        return self._weighting

    def _weight(self, name):
        if self._weighting == "alpha":
            alpha = float(self._alpha.numpy())
            return {"alpha": alpha, "hard_weight": 1.0 - alpha, "soft_weight": alpha}[
                name
            ]
        if name == "alpha":
            raise AttributeError(
                "This Distiller weighs its terms with `hard_weight` and "
                "`soft_weight` (given at construction), so it has no `alpha`; "
                "read or assign `hard_weight`/`soft_weight` instead."
            )
        return float(getattr(self, f"_{name}").numpy())

    def _assign_weight(self, name, value):
        if self._weighting == "alpha" and name != "alpha":
            raise AttributeError(
                f"This Distiller weighs its terms with `alpha`, so `{name}` is "
                "1 - alpha or alpha: assign `alpha`, or build the Distiller with "
                "hard_weight=/soft_weight= for weights that need not sum to 1."
            )
        self._weight(name)  # the AttributeError above, for `alpha`
        value = _checked_weight(name, value)
        if isinstance(value, weight_schedules.WeightSchedule):
            raise TypeError(
                f"A schedule is given at construction (Distiller({name}=...)); "
                f"assign a number to `{name}`."
            )
        self._schedules.pop(name, None)
        getattr(self, f"_{name}").assign(value)

    @property
    def alpha(self):
        """The weight of the soft term (a float); assignable."""
        return self._weight("alpha")

    @alpha.setter
    def alpha(self, value):
        self._assign_weight("alpha", value)

    @property
    def alpha_variable(self):
        """The variable behind `alpha` (None with ``hard_weight``/``soft_weight``)."""
        return self._alpha if self._weighting == "alpha" else None

    @property
    def hard_weight(self):
        """The weight of the hard term: ``1 - alpha``, or the one given."""
        return self._weight("hard_weight")

    @hard_weight.setter
    def hard_weight(self, value):
        self._assign_weight("hard_weight", value)

    @property
    def soft_weight(self):
        """The weight of the soft term: ``alpha``, or the one given."""
        return self._weight("soft_weight")

    @soft_weight.setter
    def soft_weight(self, value):
        self._assign_weight("soft_weight", value)

    @property
    def weight_schedules(self):
        """``{name: WeightSchedule}`` of the weights the Distiller sets per epoch."""
        return dict(self._schedules)

    def _weight_tensors(self):
        if self._weighting == "alpha":
            alpha = ops.convert_to_tensor(self._alpha)
            return 1.0 - alpha, alpha
        return (
            ops.convert_to_tensor(self._hard_weight),
            ops.convert_to_tensor(self._soft_weight),
        )

    @property
    def teacher_temperature_variable(self):
        """The teacher-side temperature ``T_t`` of the first soft loss that has one.

        This is `SoftTargetKL.teacher_temperature` (the temperature that
        softens the teacher's logits), not `SoftTargetKL.temperature` (the
        student's). For losses whose two sides share a temperature (normal KD,
        Tf-KD_self) it is that shared variable; for Tf-KD_reg it is the virtual
        teacher's ``T`` (the student side stays at 1). None without one.
        """
        for loss in self.soft_losses:
            var = getattr(loss, "teacher_temperature", None)
            if isinstance(var, keras.Variable):
                return var
        return None

    @property
    def teacher_temperature(self):
        """The value of `teacher_temperature_variable` (a float or None); assignable."""
        var = self.teacher_temperature_variable
        return None if var is None else float(var.numpy())

    @teacher_temperature.setter
    def teacher_temperature(self, value):
        var = self.teacher_temperature_variable
        if var is None:
            raise ValueError("This Distiller has no soft loss with a temperature.")
        if (
            not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(
                "`teacher_temperature` must be a finite number > 0, got "
                f"teacher_temperature={value!r}."
            )
        var.assign(float(value))

    # Deprecated names (0.x; removed in the next release): `temperature` read
    # like `SoftTargetKL.temperature`, which is the *student's* temperature.
    @property
    def temperature_variable(self):
        """Deprecated alias of `teacher_temperature_variable`."""
        _warn_renamed("temperature_variable", "teacher_temperature_variable")
        return self.teacher_temperature_variable

    @property
    def temperature(self):
        """Deprecated alias of `teacher_temperature`."""
        _warn_renamed("temperature", "teacher_temperature")
        return self.teacher_temperature

    @temperature.setter
    def temperature(self, value):
        _warn_renamed("temperature", "teacher_temperature", setting=True)
        self.teacher_temperature = value

    # ------------------------------------------------------------ keras.Model
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile`; `loss` is the hard loss (default: CE on logits).

        `loss` is a `keras.losses.Loss` applied to the student's *logits* and
        the labels; None (the default) picks cross-entropy on logits, sparse
        for integer labels and categorical for one-hot ones. A Keras loss name
        or function (``"mse"``, ``"huber"``, ...) keeps its Keras meaning
        (``keras.losses.get``). The cross-entropies, the losses with a
        ``from_logits`` flag (``"sparse_categorical_crossentropy"``,
        ``"categorical_crossentropy"``, ``"binary_crossentropy"``, the focal
        ones, by name or as functions), raise a `ValueError`: in Keras they
        mean ``from_logits=False``, wrong on logits, and reading them as
        ``from_logits=True`` instead would give them another meaning than in
        Keras, silently. Pass the object, e.g.
        ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``.
        Other functions raise a `TypeError` (wrap them in a `keras.losses.Loss`).
        """
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
            z_t = teachers_lib.teacher_logits(self.teacher, x, y, training=training)
            if z_t is not None:
                for loss in self.soft_losses:
                    y_true = (
                        losses_lib.targets_with_labels(z_t, y)
                        if getattr(loss, "uses_labels", False)
                        else z_t
                    )
                    soft = soft + ops.cast(
                        loss(y_true, y_pred, sample_weight=sample_weight), "float32"
                    )
        if training and isinstance(self.teacher, teachers_lib.Teacher):
            # Per-step state (PS-KD's predictions, OLS's class sums), from this
            # forward pass, before the weight update.
            self.teacher.update(x, y, ops.stop_gradient(ops.convert_to_tensor(y_pred)))
        hard_weight, soft_weight = self._weight_tensors()
        total = hard_weight * hard + soft_weight * soft
        for extra in self.losses:
            total = total + ops.cast(
                _keras_compat.aggregate_additional_loss(self, extra), "float32"
            )
        batch = ops.shape(y_pred)[0]
        self.hard_loss_tracker.update_state(
            _keras_compat.unscale_loss_for_distribution(hard), sample_weight=batch
        )
        self.soft_loss_tracker.update_state(
            _keras_compat.unscale_loss_for_distribution(soft), sample_weight=batch
        )
        return total

    # ---------------------------------------------- validation before training
    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, after checking the data (clear errors, no step taken)."""
        if isinstance(self.teacher, teachers_lib.Teacher):
            x, y, kwargs = self.teacher.prepare_fit_data(x, y, kwargs)
        x, y, kwargs = validation.check_fit_data(self, x, y, kwargs)
        if self._schedules or _has_epoch_hooks(self.teacher):
            callbacks = kwargs.get("callbacks")
            if isinstance(callbacks, keras.callbacks.CallbackList):
                callbacks.callbacks.insert(0, _EpochHooks(self))
                callbacks.set_model(self)
            else:
                callbacks = [] if callbacks is None else list(callbacks)
                kwargs["callbacks"] = [_EpochHooks(self), *callbacks]
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
        config = {
            "name": self.name,
            "student": ser(self.student),
            "teacher": None if self.teacher is None else ser(self.teacher),
            "soft_loss": [ser(loss) for loss in self.soft_losses],
            "hard_loss": None if self.hard_loss is None else ser(self.hard_loss),
        }
        names = (
            ("alpha",) if self._weighting == "alpha" else ("hard_weight", "soft_weight")
        )
        for name in names:
            schedule = self._schedules.get(name)
            config[name] = self._weight(name) if schedule is None else ser(schedule)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        de = keras.saving.deserialize_keras_object
        student = de(config.pop("student"))
        teacher = config.pop("teacher")
        teacher = None if teacher is None else de(teacher)
        soft = [de(c) for c in config.pop("soft_loss", [])]
        for name in ("alpha", "hard_weight", "soft_weight"):
            if isinstance(config.get(name), dict):
                config[name] = de(config[name])
        return cls(student=student, teacher=teacher, soft_loss=soft or None, **config)
