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
from keras_tfkd import features as features_lib
from keras_tfkd import losses as losses_lib
from keras_tfkd import teachers as teachers_lib
from keras_tfkd import terms as terms_lib

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
            distiller._weight_var(name).assign(_checked_weight(name, value))
        for teacher in distiller._hook_teachers():
            teacher.on_epoch_begin(epoch, self._epochs())

    def on_epoch_end(self, epoch, logs=None):
        distiller = self._distiller
        for teacher in distiller._hook_teachers():
            teacher.on_epoch_end(epoch)
        if logs is not None:
            for name in distiller._schedules:
                logs[name] = distiller._weight(name)


def _select_output(outputs, output_name, what):
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


def _output_keys(outputs):
    if isinstance(outputs, dict):
        return list(outputs)
    if isinstance(outputs, (list, tuple)):
        return list(range(len(outputs)))
    return []


class _Bound:
    """One soft term as the Distiller runs it (not tracked by Keras)."""

    def __init__(self, name, teacher, losses, weight_name, output_name):
        self.name = name
        self.teacher = teacher
        self.losses = losses
        self.weight_name = weight_name
        self.output_name = output_name
        # FeatureDistillation losses: (loss, student layer, teacher layer).
        self.features = []


class _Plan:
    """What the Distiller computes per step, kept out of Keras's tracking.

    Holds the resolved feature layers and the student's recorded features of
    the current forward pass (`call` records them, `compute_loss` reads them),
    so the student runs once per step with feature terms too.
    """

    def __init__(self, terms):
        self.terms = terms
        self.stash = None

    @property
    def feature_losses(self):
        return [link for term in self.terms for link in term.features]

    @property
    def needs_adapter_build(self):
        """Whether a feature loss's adapter is still unbuilt."""
        return any(loss.needs_adapter_build for loss, _, _ in self.feature_losses)

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
        distinct = []
        for term in self.terms:
            if not any(term.teacher is t for t in distinct):
                distinct.append(term.teacher)
        return distinct

    def take(self, y_pred):
        """The capture of the forward pass that gave `y_pred` (None if another)."""
        stash, self.stash = self.stash, None
        if stash is None:
            return None
        outputs, capture = stash
        first = keras.tree.flatten(outputs)[0]
        given = keras.tree.flatten(y_pred)[0]
        return capture if first is given else None


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
        terms: instead of `teacher`/`soft_loss`/`alpha`/`soft_weight`, a list
            of `keras_tfkd.Term` (a teacher, its losses, a weight, a name):
            the loss is ``hard_weight * hard + sum_i weight_i * term_i``, each
            term logged as ``<name>_loss``, its weight ``<name>_weight``
            (`weight_names`, `set_weight`). Several teachers, feature terms
            (`losses.FeatureDistillation`); each model runs once per step.
        output_name: for a student with several outputs, the key (or index)
            of the logits to distil; the other outputs keep the losses given
            to ``compile(loss={...}, loss_weights={...})``.

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
        terms=None,
        output_name=None,
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
                "weight `alpha=` (the hard term weighs 1 - alpha); for one weight "
                "per loss, give terms=[keras_tfkd.Term(teacher, loss, weight), ...] "
                "and hard_weight=."
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
        if terms is not None:
            given = {
                "teacher": teacher,
                "soft_loss": soft_loss,
                "alpha": alpha,
                "soft_weight": soft_weight,
            }
            clash = [k for k, v in given.items() if v is not None]
            if clash:
                raise ValueError(
                    "Give the soft terms either as terms=[Term(...), ...] or as "
                    "teacher=/soft_loss= with alpha= or soft_weight=, not both: got "
                    f"terms and {', '.join(f'`{k}`' for k in clash)}. Each Term has "
                    "its own teacher and weight; hard_weight= weighs the hard term."
                )
            weights = {
                "weighting": "terms",
                "hard_weight": weight_schedules.check_weight(
                    "hard_weight", 1.0 if hard_weight is None else hard_weight
                ),
            }
        else:
            weights = _loss_weights(alpha, hard_weight, soft_weight)
        teachers_lib.check_logits_teacher(student, argument="student")
        self.output_name = output_name
        num_classes = self._student_classes(student, output_name)
        if terms is None:
            soft_losses = (
                [] if soft_loss is None else terms_lib.as_losses(soft_loss, "soft_loss")
            )
            if teacher is not None and not soft_losses:
                from keras_tfkd.losses import SoftTargetKL

                soft_losses = [SoftTargetKL()]
            if soft_losses and teacher is None:
                raise ValueError(
                    "`soft_loss` was given but `teacher` is None: a soft-target loss "
                    "needs a teacher (a model, VirtualTeacher, UniformTeacher, ...)."
                )
            bound = []
            if teacher is not None:
                self._check_teacher(teacher, num_classes, "teacher")
                _check_target_kinds(teacher, soft_losses)
                weight_name = (
                    "alpha" if weights["weighting"] == "alpha" else "soft_weight"
                )
                bound = [_Bound("soft", teacher, soft_losses, weight_name, output_name)]
        else:
            terms = list(terms) if isinstance(terms, (list, tuple)) else [terms]
            if not terms or not all(isinstance(t, terms_lib.Term) for t in terms):
                raise TypeError(
                    "`terms` must be a non-empty list of keras_tfkd.Term objects, "
                    f"got terms={terms!r}."
                )
            names = terms_lib.unique_names(terms)
            bound = []
            for term, term_name in zip(terms, names):
                term_output_name = (
                    output_name if term.output_name is None else term.output_name
                )
                self._check_teacher(term.teacher, num_classes, f"{term_name}: teacher")
                _check_target_kinds(term.teacher, term.losses)
                bound.append(
                    _Bound(
                        term_name,
                        term.teacher,
                        term.losses,
                        f"{term_name}_weight",
                        term_output_name,
                    )
                )
            soft_losses = [loss for term in bound for loss in term.losses]
        self.student = student
        self.soft_losses = soft_losses
        self.hard_loss = _resolve_hard_loss(hard_loss)
        self.num_classes = num_classes
        self._plan = _Plan(bound)
        self._link_features(student)
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
        if self._weighting == "weights":
            self._soft_weight = self._weight_variable(
                "soft_weight", weights["soft_weight"]
            )
        if self._weighting == "terms":
            self.teacher = None
            self.term_teachers = self._plan.teachers()
            self._term_weights = [
                self._weight_variable(f"{term.name}_weight", t.weight)
                for term, t in zip(bound, terms)
            ]
            self.term_loss_trackers = [
                keras.metrics.Mean(name=f"{term.name}_loss") for term in bound
            ]
        else:
            self.teacher = teacher
        for hooked in self._hook_teachers():
            hooked.bind_student(student)
        #: The ``E`` of the weight schedules and the teacher's epoch hooks;
        #: None: `fit`'s ``epochs``. Set it when one run is trained by
        #: several `fit` calls of one epoch each (as `keras_tfkd.runs` does).
        self.schedule_epochs = None
        # Temperatures of the soft losses are variables too: track them so that
        # every backend's compiled step reads their current value.
        self._soft_loss_variables = [
            v for loss in soft_losses for v in getattr(loss, "variables", [])
        ]
        # Feature adapters are trained with the student (not part of it).
        self.feature_adapters = [
            loss.adapter
            for loss, _, _ in self._plan.feature_losses
            if loss.adapter is not None
        ]
        # Multi-output students: the losses of the other outputs (compile).
        self._head_losses = {}
        self._head_loss_weights = {}
        self.head_loss_trackers = []
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        if self._weighting != "terms":
            self.soft_loss_tracker = keras.metrics.Mean(name="soft_loss")
        # An adapter still to be made stays unbuilt, and so does the Distiller:
        # Keras then builds it (`call` on symbolic inputs) before it builds the
        # optimizer, so the adapter's variables are trained from the first step.
        if student.built and not self._plan.needs_adapter_build:
            self.built = True

    @staticmethod
    def _student_classes(student, output_name):
        if not student.built:
            return None
        outputs = getattr(student, "output", None)
        keys = _output_keys(outputs) if outputs is not None else []
        if len(keys) > 1 and output_name is None:
            raise ValueError(
                f"The student has several outputs ({keys}): give output_name=<name or "
                "index> for the logits to distil; the other outputs keep the "
                "losses given to compile(loss={...})."
            )
        if outputs is None:
            shape = getattr(student, "output_shape", None)
            return shape[-1] if isinstance(shape, tuple) else None
        return _select_output(outputs, output_name, "student").shape[-1]

    def _check_teacher(self, teacher, num_classes, argument):
        if isinstance(teacher, teachers_lib.Teacher):
            pass
        elif isinstance(teacher, keras.Model):
            teachers_lib.check_logits_teacher(teacher)
            teacher.trainable = False
        else:
            raise TypeError(
                f"`{argument}` must be a keras.Model that outputs logits, a "
                f"keras_tfkd.teachers.Teacher, or None; got {teacher!r}."
            )
        if isinstance(teacher, keras.Model) and teacher.built:
            outputs = getattr(teacher, "output", None)
            if len(_output_keys(outputs)) > 1:
                teacher_classes = _select_output(
                    outputs, self.output_name, "teacher"
                ).shape[-1]
            else:
                teacher_classes = teachers_lib.teacher_num_classes(teacher)
        else:
            teacher_classes = teachers_lib.teacher_num_classes(teacher)
        if None not in (num_classes, teacher_classes) and (
            num_classes != teacher_classes
        ):
            raise ValueError(
                f"The teacher predicts {teacher_classes} classes but the student "
                f"predicts {num_classes}: `{argument}` (num_classes="
                f"{teacher_classes}) and `student` must agree."
            )

    def _link_features(self, student):
        """Resolve each FeatureDistillation's layers in the student and teacher."""
        for term in self._plan.terms:
            for loss in term.losses:
                if not getattr(loss, "uses_features", False):
                    continue
                if not isinstance(term.teacher, keras.Model):
                    raise ValueError(
                        f"{type(loss).__name__} compares layers of the student and "
                        "the teacher, so the teacher must be a keras.Model, got "
                        f"{type(term.teacher).__name__}."
                    )
                term.features.append(
                    (
                        loss,
                        features_lib.find_layer(
                            student, loss.student_layer, "student_layer"
                        ),
                        features_lib.find_layer(
                            term.teacher, loss.teacher_layer, "teacher_layer"
                        ),
                    )
                )

    @property
    def teachers(self):
        """Every distinct teacher of the Distiller (of its terms), in order."""
        return self._plan.teachers()

    def _hook_teachers(self):
        """The `Teacher` objects whose hooks the Distiller runs."""
        return [t for t in self._plan.teachers() if isinstance(t, teachers_lib.Teacher)]

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
        """``"alpha"`` (``(1 - alpha) hard + alpha soft``), ``"weights"`` (free)
        or ``"terms"`` (``hard_weight * hard + sum_i <name_i>_weight * term_i``)."""
        return self._weighting

    @property
    def weight_names(self):
        """The names of every loss weight: what `get_weight`/`set_weight` take."""
        if self._weighting == "alpha":
            return ("alpha",)
        if self._weighting == "weights":
            return ("hard_weight", "soft_weight")
        return ("hard_weight", *(term.weight_name for term in self._plan.terms))

    def _weight_var(self, name):
        if name in ("alpha", "hard_weight", "soft_weight"):
            return getattr(self, f"_{name}")
        return self._term_weights[self.weight_names.index(name) - 1]

    def _weight(self, name):
        if self._weighting == "alpha" and name in (
            "alpha",
            "hard_weight",
            "soft_weight",
        ):
            alpha = float(self._alpha.numpy())
            return {"alpha": alpha, "hard_weight": 1.0 - alpha, "soft_weight": alpha}[
                name
            ]
        if name == "alpha":
            raise AttributeError(
                "This Distiller weighs its terms with "
                f"{' and '.join(f'`{n}`' for n in self.weight_names)} (given at "
                "construction), so it has no `alpha`; read or assign those instead."
            )
        if name not in self.weight_names:
            raise AttributeError(
                f"This Distiller has no weight {name!r}; its weights are "
                f"{list(self.weight_names)}."
            )
        return float(self._weight_var(name).numpy())

    def _assign_weight(self, name, value):
        if self._weighting == "alpha" and name != "alpha":
            raise AttributeError(
                f"This Distiller weighs its terms with `alpha`, so `{name}` is "
                "1 - alpha or alpha: assign `alpha`, or build the Distiller with "
                "hard_weight=/soft_weight= for weights that need not sum to 1."
            )
        self._weight(name)  # the AttributeError above, for a name it lacks
        value = _checked_weight(name, value)
        if isinstance(value, weight_schedules.WeightSchedule):
            raise TypeError(
                f"A schedule is given at construction (Distiller({name}=...) or "
                f"Term(weight=...)); assign a number to `{name}`."
            )
        self._schedules.pop(name, None)
        self._weight_var(name).assign(value)

    def get_weight(self, name):
        """The current value of the loss weight `name` (one of `weight_names`)."""
        return self._weight(name)

    def set_weight(self, name, value):
        """Set the loss weight `name` (a number; takes effect at the next step).

        The weight is a variable read by the compiled step: no retracing. A
        schedule given for it at construction stops.
        """
        self._assign_weight(name, value)

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
        """The hard weight and each bound term's weight, as tensors."""
        if self._weighting == "alpha":
            alpha = ops.convert_to_tensor(self._alpha)
            return 1.0 - alpha, [alpha] * len(self._plan.terms)
        hard = ops.convert_to_tensor(self._hard_weight)
        if self._weighting == "weights":
            return hard, [ops.convert_to_tensor(self._soft_weight)] * len(
                self._plan.terms
            )
        return hard, [ops.convert_to_tensor(v) for v in self._term_weights]

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
        loss_weights = kwargs.pop("loss_weights", None)
        if isinstance(loss, (dict, list, tuple)):
            self._compile_head_losses(loss, loss_weights)
        elif loss is not None:
            self.hard_loss = _resolve_hard_loss(loss)
        if loss_weights is not None and not isinstance(loss, (dict, list, tuple)):
            raise ValueError(
                "`loss_weights` weighs the other outputs of a multi-output student "
                "(compile(loss={...}, loss_weights={...})); the hard and soft terms "
                "are weighted by the Distiller's alpha=, hard_weight=, soft_weight= "
                "or Term(weight=)."
            )
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def _compile_head_losses(self, loss, loss_weights):
        """``compile(loss={output: loss})`` for a student with several outputs."""
        outputs = getattr(self.student, "output", None)
        keys = _output_keys(outputs) if self.student.built else []
        given = loss if isinstance(loss, dict) else dict(enumerate(loss))
        if len(keys) < 2:
            raise ValueError(
                f"compile(loss={type(loss).__name__}) gives one loss per output, but "
                "the student has one output: give one loss (or None)."
            )
        unknown = [k for k in given if k not in keys]
        if unknown:
            raise ValueError(
                f"compile(loss=...) names outputs {unknown} the student does not "
                f"have; its outputs are {keys}."
            )
        weights = dict(loss_weights or {})
        if not isinstance(loss_weights, (dict, type(None))):
            weights = dict(enumerate(loss_weights))
        if self.output_name in weights:
            raise ValueError(
                f"loss_weights gives the distilled output {self.output_name!r} "
                "a weight: it is weighted by the Distiller (alpha= or hard_weight=)."
            )
        if self.output_name in given:
            self.hard_loss = _resolve_hard_loss(given.pop(self.output_name))
        self._head_losses = {
            key: _resolve_hard_loss(value)
            for key, value in given.items()
            if value is not None
        }
        self._head_loss_weights = {
            key: weight_schedules.check_weight(f"loss_weights[{key!r}]", w)
            for key, w in weights.items()
        }
        self.head_loss_trackers = [
            keras.metrics.Mean(name=f"{key}_loss") for key in self._head_losses
        ]

    def get_compile_config(self):
        """Keras's compile config, plus the losses of a multi-output student's
        other outputs (`compile` hands Keras ``loss=None``)."""
        config = super().get_compile_config()
        if config is not None and self._head_losses:
            ser = keras.saving.serialize_keras_object
            config = dict(config)
            config["head_losses"] = {
                str(k): ser(v) for k, v in self._head_losses.items()
            }
            config["head_loss_weights"] = {
                str(k): w for k, w in self._head_loss_weights.items()
            }
        return config

    def compile_from_config(self, config):
        """Re-compile after loading (optimizer, metrics, the other outputs'
        losses; the hard loss is in the Distiller's config)."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        heads = config.pop("head_losses", None)
        weights = config.pop("head_loss_weights", None)
        if heads:
            # JSON keys are strings: a list output's index comes back an int.
            keys = _output_keys(self.student.output)
            by_text = {str(k): k for k in keys}
            config["loss"] = {by_text.get(k, k): v for k, v in heads.items()}
            config["loss_weights"] = {
                by_text.get(k, k): v for k, v in (weights or {}).items()
            } or None
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def _student_inputs(self, inputs):
        """The part of a batch the student sees (a `Teacher` may pack more)."""
        hooked = self._hook_teachers()
        return hooked[0].student_inputs(inputs) if hooked else inputs

    def call(self, inputs, training=None):
        inputs = self._student_inputs(inputs)
        layers = self._plan.student_layers()
        if not layers:
            return self.student(inputs, training=training)
        # Feature terms: record the student's layers in this forward pass, for
        # `compute_loss` of the same step (the student runs once).
        with features_lib.FeatureCapture(layers) as capture:
            outputs = self.student(inputs, training=training)
        self._plan.stash = (outputs, capture)
        if self._plan.needs_adapter_build:
            self._build_adapters(inputs, capture)
        return outputs

    def _build_adapters_from(self, x):
        """Build unbuilt feature adapters on two examples of `x`, before `fit`.

        Keras builds them itself otherwise (from symbolic inputs), but only
        inside `fit`, after callbacks such as `BackupAndRestore` have looked
        for the weights to restore. A dataset or generator input is left to
        Keras.
        """
        if not self._plan.needs_adapter_build or teachers_lib.array_rows(x) is None:
            return
        self(keras.tree.map_structure(lambda a: a[:2], x), training=False)
        if self.student.built:
            self.built = True

    def _build_adapters(self, inputs, capture):
        """Make and build the adapters from the first forward pass's shapes."""
        teacher_captures = {
            id(teacher): self._teacher_pass(teacher, inputs, None, False)[1]
            for teacher in self._plan.teachers()
            if self._plan.teacher_layers(teacher)
        }
        for term in self._plan.terms:
            for loss, student_layer, teacher_layer in term.features:
                if not loss.needs_adapter_build:
                    continue
                loss.build_adapter(
                    capture.output(student_layer).shape,
                    teacher_captures[id(term.teacher)].output(teacher_layer).shape,
                )

    def _teacher_pass(self, teacher, x, y, training):
        """One forward pass of `teacher`: its float32 logits and its feature capture."""
        if isinstance(teacher, teachers_lib.Teacher):
            labels = (
                None if y is None else _select_output(y, self.output_name, "labels")
            )
            outputs = teachers_lib.teacher_logits(teacher, x, labels, training=training)
            return outputs, None
        with features_lib.FeatureCapture(self._plan.teacher_layers(teacher)) as capture:
            outputs = teachers_lib.teacher_logits(teacher, x, y, capture=capture)
        return outputs, capture

    def _hard(self, y, y_pred, sample_weight):
        if self.hard_loss is not None:
            return self.hard_loss(y, y_pred, sample_weight=sample_weight)
        num_classes = y_pred.shape[-1]
        if len(y.shape) == len(y_pred.shape) and y.shape[-1] == num_classes != 1:
            loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return loss(y, y_pred, sample_weight=sample_weight)

    def _term_value(self, term, z_t, capture_t, capture_s, y, y_pred, sample_weight):
        value = ops.zeros((), dtype="float32")
        logits = _select_output(y_pred, term.output_name, "student")
        for loss in term.losses:
            if getattr(loss, "uses_features", False):
                _, student_layer, teacher_layer = next(
                    link for link in term.features if link[0] is loss
                )
                t_feat = ops.stop_gradient(capture_t.output(teacher_layer))
                s_feat = capture_s.output(student_layer)
                part = loss(t_feat, s_feat, sample_weight=sample_weight)
            else:
                if z_t is None:
                    continue
                targets = _select_output(z_t, term.output_name, "teacher")
                if getattr(loss, "uses_labels", False):
                    targets = losses_lib.targets_with_labels(
                        targets, _select_output(y, term.output_name, "labels")
                    )
                part = loss(targets, logits, sample_weight=sample_weight)
            value = value + ops.cast(part, "float32")
        return value

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """``hard_weight * hard + sum_i weight_i * term_i + regularisation``.

        With `alpha` that is ``(1 - alpha) * hard + alpha * soft``.
        """
        if y is None:
            raise ValueError("The Distiller needs labels `y` to compute its loss.")
        y = keras.tree.map_structure(ops.convert_to_tensor, y)
        logits = _select_output(y_pred, self.output_name, "student")
        labels = _select_output(y, self.output_name, "labels")
        hard = ops.cast(self._hard(labels, logits, sample_weight), "float32")
        capture_s = None
        if self._plan.feature_losses:
            capture_s = self._plan.take(y_pred)
            if capture_s is None:
                # compute_loss called on outputs of another forward pass: run
                # the student once more to record its layers.
                with features_lib.FeatureCapture(self._plan.student_layers()) as cap:
                    self.student(self._student_inputs(x), training=training)
                capture_s = cap
        passes = {}
        for teacher in self._plan.teachers():
            passes[id(teacher)] = self._teacher_pass(teacher, x, y, training)
        values = []
        for term in self._plan.terms:
            z_t, capture_t = passes[id(term.teacher)]
            values.append(
                self._term_value(
                    term, z_t, capture_t, capture_s, y, y_pred, sample_weight
                )
            )
        if training:
            # Per-step state (PS-KD's predictions, OLS's class sums), from this
            # forward pass, before the weight update.
            for teacher in self._hook_teachers():
                teacher.update(
                    x, labels, ops.stop_gradient(ops.convert_to_tensor(logits))
                )
        hard_weight, term_weights = self._weight_tensors()
        total = hard_weight * hard
        for weight, value in zip(term_weights, values):
            total = total + weight * value
        heads = []
        for key, loss in self._head_losses.items():
            head = ops.cast(
                loss(y[key], y_pred[key], sample_weight=sample_weight), "float32"
            )
            total = total + self._head_loss_weights.get(key, 1.0) * head
            heads.append(head)
        for extra in self.losses:
            total = total + ops.cast(
                _keras_compat.aggregate_additional_loss(self, extra), "float32"
            )
        batch = ops.shape(logits)[0]
        unscale = _keras_compat.unscale_loss_for_distribution
        self.hard_loss_tracker.update_state(unscale(hard), sample_weight=batch)
        if self._weighting == "terms":
            trackers = self.term_loss_trackers
        else:
            trackers = [self.soft_loss_tracker]  # one term (or none: soft = 0)
            values = values or [ops.zeros(())]
        for tracker, value in zip(trackers, values):
            tracker.update_state(unscale(value), sample_weight=batch)
        for tracker, value in zip(self.head_loss_trackers, heads):
            tracker.update_state(unscale(value), sample_weight=batch)
        return total

    # ---------------------------------------------- validation before training
    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, after checking the data (clear errors, no step taken)."""
        for teacher in self._hook_teachers():
            x, y, kwargs = teacher.prepare_fit_data(x, y, kwargs)
        x, y, kwargs = validation.check_fit_data(self, x, y, kwargs)
        self._build_adapters_from(x)
        if self._schedules or any(t.has_epoch_hooks for t in self._hook_teachers()):
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
        self._build_adapters_from(x)
        return super().evaluate(x, y, *args, **kwargs)

    # ------------------------------------------------------------ serialising
    def get_config(self):
        ser = keras.saving.serialize_keras_object

        def weight_config(name):
            schedule = self._schedules.get(name)
            return self._weight(name) if schedule is None else ser(schedule)

        config = {
            "name": self.name,
            "student": ser(self.student),
            "hard_loss": None if self.hard_loss is None else ser(self.hard_loss),
            "output_name": self.output_name,
        }
        if self._weighting == "terms":
            teachers = self.term_teachers
            config["term_teachers"] = [ser(t) for t in teachers]
            config["terms"] = [
                {
                    "teacher": next(
                        i for i, t in enumerate(teachers) if t is term.teacher
                    ),
                    "loss": [ser(loss) for loss in term.losses],
                    "weight": weight_config(term.weight_name),
                    "name": term.name,
                    "output_name": term.output_name,
                }
                for term in self._plan.terms
            ]
            config["hard_weight"] = weight_config("hard_weight")
            return config
        config["teacher"] = None if self.teacher is None else ser(self.teacher)
        config["soft_loss"] = [ser(loss) for loss in self.soft_losses]
        for name in self.weight_names:
            config[name] = weight_config(name)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        de = keras.saving.deserialize_keras_object

        def weight(value):
            return de(value) if isinstance(value, dict) else value

        student = de(config.pop("student"))
        for name in ("alpha", "hard_weight", "soft_weight"):
            if name in config:
                config[name] = weight(config[name])
        if "terms" in config:
            teachers = [de(t) for t in config.pop("term_teachers")]
            terms = [
                terms_lib.Term(
                    teachers[item["teacher"]],
                    [de(loss) for loss in item["loss"]],
                    weight=weight(item["weight"]),
                    name=item["name"],
                    output_name=item.get("output_name"),
                )
                for item in config.pop("terms")
            ]
            return cls(student=student, terms=terms, **config)
        teacher = config.pop("teacher", None)
        teacher = None if teacher is None else de(teacher)
        soft = [de(c) for c in config.pop("soft_loss", [])]
        return cls(student=student, teacher=teacher, soft_loss=soft or None, **config)
