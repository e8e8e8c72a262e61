"""The `Distiller`: a `keras.Model` that trains a student on hard and soft targets.

Its parts live beside it: `keras_tfkd.distiller_checks` (the arguments and
their forms), `keras_tfkd.term_plan` (teachers, losses, features, outputs),
`keras_tfkd.loss_weights` (variables, schedules, names) and
`keras_tfkd.teacher_hooks` (epoch hooks of schedules and stateful teachers).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_tfkd import _keras_compat, teacher_hooks, terms, tokens, validation
from keras_tfkd import distiller_checks as checks
from keras_tfkd import features as features_lib
from keras_tfkd import fused as fused_lib
from keras_tfkd import teachers as teachers_lib
from keras_tfkd.data import shards
from keras_tfkd.loss_weights import weight_property
from keras_tfkd.term_plan import (
    TermPlan,
    hard_value,
    select_output,
    teacher_temperature_property,
)

__all__ = ["Distiller"]


@keras.saving.register_keras_serializable(package="keras_tfkd")
class Distiller(keras.Model):
    """Trains `student` on ``hard_weight * hard + sum_i weight_i * term_i``.

    * ``hard``: the loss against the labels, `hard_loss` (or `compile(loss=)`),
      else cross-entropy on logits (sparse for integer labels, categorical for
      one-hot ones).
    * ``term_i``: the sum of a term's losses, each called as
      ``loss(teacher_logits, student_logits, sample_weight)`` (or on two
      layers' features, `losses.FeatureDistillation`).

    The weights are given in one of three forms, all the same sum underneath
    (`keras_tfkd.loss_weights`): ``teacher=``/``soft_loss=`` with ``alpha=``
    (one term ``soft`` weighed ``alpha``, the hard term ``1 - alpha``); the
    same with ``hard_weight=``/``soft_weight=`` (free weights, DKD's ``CE + w
    * DKD``); or ``terms=[Term(...), ...]`` with ``hard_weight=``. Every
    weight is a non-trainable variable (``distiller.alpha = 0.3``,
    `set_weight`, `AlphaScheduler` act at the next step without retracing)
    or a `weight_schedules.WeightSchedule` that `fit` sets at every epoch
    begin and logs in ``history``.

    Every term uses Keras's default reduction (the weighted sum over the
    batch size), so `sample_weight` weighs all alike and a weight of 0
    removes a sample from each. The student's regularisation losses are
    added. `compute_loss` returns exactly the scalar `fit` minimises; `fit`
    and `evaluate` log it as ``loss``, the terms as ``hard_loss`` and
    ``<name>_loss`` (``soft_loss`` in the one-teacher forms). `predict` and
    ``__call__`` run the student alone.

    A model teacher is frozen, run in inference mode and gradient-stopped; a
    `keras_tfkd.teachers.Teacher` may be virtual, cached, or keep state that
    it updates after each training step and at epoch ends
    (`keras_tfkd.online`: PS-KD, OLS, CS-KD), hooks `fit` runs.

    Every argument is keyword-only: `keras.distillation.Distiller` takes
    ``(teacher, student)`` positionally, so a positional call is refused
    rather than risk training the teacher.

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
        fused_projection: True (a KerasHub CausalLM) or the final layer's name:
            the logits made chunk by chunk inside the loss, `keras_tfkd.fused`.

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
        fused_projection=None,
        name="distiller",
        **kwargs,
    ):
        checks.refuse_call_style(args, kwargs, student)
        super().__init__(name=name, **kwargs)
        if not isinstance(student, keras.Model):
            raise TypeError(
                f"`student` must be a keras.Model, got student={student!r}."
            )
        weighting, bound, make_weights = checks.soft_terms(
            teacher=teacher,
            soft_loss=soft_loss,
            alpha=alpha,
            hard_weight=hard_weight,
            soft_weight=soft_weight,
            terms=terms,
            output_name=output_name,
        )
        teachers_lib.check_logits_teacher(student, argument="student")
        self.output_name = output_name
        shape = checks.student_logits_shape(student, output_name)
        #: K (V for a language model), and the logits' leading axes: 1 for
        #: (N, K), 2 for (N, L, V); None while the student is unbuilt.
        self.num_classes = None if shape is None else shape[-1]
        self.token_axes = tokens.token_axes(shape)
        for term in bound:
            where = "teacher" if weighting != "terms" else f"{term.name}: teacher"
            checks.check_teacher(term, student, shape, where)
        self._plan = TermPlan(bound, student, output_name)
        self._fused = fused_lib.plan(student, fused_projection, self._plan, output_name)
        self._weighting = weighting
        self.student = student
        self.soft_losses = self._plan.soft_losses
        self.hard_loss = checks.resolve_hard_loss(hard_loss)
        # Tracked so that saving keeps the teachers with the Distiller.
        if weighting == "terms":
            self.teacher = None
            self.term_teachers = self._plan.teachers()
        else:
            self.teacher = teacher
        # The loss weights live in non-trainable variables: a schedule (or
        # AlphaScheduler) changes them at the next step without retracing.
        self.loss_weighting = make_weights(self.add_weight)
        for hooked in self.hooked_teachers:
            hooked.check_logits_shape(shape)
            hooked.token_axes = self.token_axes
            hooked.bind_student(student)
        #: The ``E`` of the weight schedules and the teacher's epoch hooks;
        #: None: `fit`'s ``epochs``. Set it when one run is trained by
        #: several `fit` calls of one epoch each (as `keras_tfkd.runs` does).
        self.schedule_epochs = None
        # Temperatures of the soft losses are variables too: track them so that
        # every backend's compiled step reads their current value.
        self._soft_loss_variables = [
            v for loss in self.soft_losses for v in getattr(loss, "variables", [])
        ]
        self.feature_adapters = self._plan.adapters()
        # Multi-output students: the losses of the other outputs (compile).
        self._heads = checks.OutputHeads()
        self.head_loss_trackers = []
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        self.term_loss_trackers = [
            keras.metrics.Mean(name=f"{term.name}_loss") for term in self._plan.terms
        ]
        # An adapter still to be made stays unbuilt, and so does the Distiller:
        # Keras then builds it (`call` on symbolic inputs) before it builds the
        # optimizer, so the adapter's variables are trained from the first step.
        if student.built and not self._plan.needs_adapter_build:
            self.built = True

    # ------------------------------------------------------------ teachers
    @property
    def teachers(self):
        """Every distinct teacher of the Distiller (of its terms), in order."""
        return self._plan.teachers()

    @property
    def hooked_teachers(self):
        """The `Teacher` objects whose step and epoch hooks the Distiller runs."""
        return self._plan.hooked_teachers()

    # ------------------------------------------------------------ weights
    @property
    def weighting(self):
        """The form the weights were given in: ``"alpha"`` (``(1 - alpha) hard
        + alpha soft``), ``"weights"`` (free) or ``"terms"``."""
        return self._weighting

    @property
    def weight_names(self):
        """The names of every loss weight: what `get_weight`/`set_weight` take."""
        return self.loss_weighting.names

    @property
    def weight_schedules(self):
        """``{name: WeightSchedule}`` of the weights the Distiller sets per epoch."""
        return dict(self.loss_weighting.schedules)

    def get_weight(self, name):
        """The current value of the loss weight `name` (one of `weight_names`)."""
        return self.loss_weighting.get(name)

    def set_weight(self, name, value):
        """Set the loss weight `name` (a number; takes effect at the next step).

        The weight is a variable read by the compiled step: no retracing. A
        schedule given for it at construction stops.
        """
        self.loss_weighting.set(name, value)

    def weight_variable(self, name):
        """The variable behind the loss weight `name` (one of `weight_names`)."""
        return self.loss_weighting.variable(name)

    alpha = weight_property(
        "alpha", "The weight of the soft term (a float); assignable."
    )
    hard_weight = weight_property(
        "hard_weight", "The weight of the hard term: ``1 - alpha``, or the one given."
    )
    soft_weight = weight_property(
        "soft_weight", "The weight of the soft term: ``alpha``, or the one given."
    )

    @property
    def alpha_variable(self):
        """The variable behind `alpha` (None with ``hard_weight``/``soft_weight``)."""
        names = self.loss_weighting.names
        return self.loss_weighting.variable("alpha") if "alpha" in names else None

    @property
    def teacher_temperature_variable(self):
        """The teacher-side temperature variable ``T_t`` of the first soft loss
        that has one (`SoftTargetKL.teacher_temperature`, not the student's
        `temperature`): the shared ``T`` of KD and Tf-KD_self, the virtual
        teacher's ``T`` of Tf-KD_reg. None without one."""
        return self._plan.teacher_temperature_variable()

    teacher_temperature = teacher_temperature_property()

    # ------------------------------------------------------------ keras.Model
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile`; `loss` is the hard loss on the student's logits.

        None (the default) is cross-entropy on logits, sparse for integer
        labels, categorical for one-hot ones. A Keras loss name or function
        (``"mse"``, ``"huber"``) keeps its Keras meaning, except the ones with
        a ``from_logits`` flag (the cross-entropies and focal losses): Keras
        reads them as probabilities, so they raise a `ValueError` naming the
        object to pass, e.g. ``SparseCategoricalCrossentropy(from_logits=True)``.
        A student with several outputs takes ``loss={output: loss}`` and
        ``loss_weights={output: weight}`` for its other outputs.
        """
        loss_weights = kwargs.pop("loss_weights", None)
        if isinstance(loss, (dict, list, tuple)):
            hard = self._heads.compile(
                self.student, self.output_name, loss, loss_weights
            )
            self.hard_loss = hard if hard is not None else self.hard_loss
            self.head_loss_trackers = self._heads.trackers()
        elif loss_weights is not None:
            raise ValueError(
                "`loss_weights` weighs the other outputs of a multi-output student "
                "(compile(loss={...}, loss_weights={...})); the hard and soft terms "
                "are weighted by the Distiller's alpha=, hard_weight=, soft_weight= "
                "or Term(weight=)."
            )
        elif loss is not None:
            self.hard_loss = checks.resolve_hard_loss(loss)
        fused_lib.check_compile(self._fused, metrics)
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def get_compile_config(self):
        """Keras's compile config, plus the losses of a multi-output student's
        other outputs (`compile` hands Keras ``loss=None``)."""
        config = super().get_compile_config()
        return None if config is None else {**config, **self._heads.config()}

    def compile_from_config(self, config):
        """Re-compile after loading (optimizer, metrics, the other outputs'
        losses; the hard loss is in the Distiller's config)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**checks.OutputHeads.compile_arguments(self.student, config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=None):
        inputs = teacher_hooks.student_inputs(self.hooked_teachers, inputs)
        if training and self._fused is not None:  # logits: inside the loss
            return self._fused.forward(inputs, training)
        layers = self._plan.student_layers()
        if not layers:
            return self.student(inputs, training=training)
        # Feature terms: record the student's layers in this forward pass, for
        # `compute_loss` of the same step (the student runs once).
        with features_lib.FeatureCapture(layers) as capture:
            outputs = self.student(inputs, training=training)
        self._plan.record(outputs, capture)
        if self._plan.needs_adapter_build:
            self._plan.build_adapters(inputs, capture)
        return outputs

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """``hard_weight * hard + sum_i weight_i * term_i + heads + regularisation``.

        With `alpha` that is ``(1 - alpha) * hard + alpha * soft``; ``heads``
        are the other outputs' compiled losses of a multi-output student. For
        sequence logits ``(N, L, V)`` each term is the mean over the tokens
        weighted by `sample_weight` (a padding mask), `keras_tfkd.tokens`.
        """
        if y is None:
            raise ValueError("The Distiller needs labels `y` to compute its loss.")
        y = keras.tree.map_structure(ops.convert_to_tensor, y)
        logits = select_output(y_pred, self.output_name, "student")
        labels = select_output(y, self.output_name, "labels")
        hard, values = _hard_and_terms(self, x, y, y_pred, sample_weight, training)
        if training:
            teacher_hooks.update_after_step(self.hooked_teachers, x, labels, logits)
        heads = self._heads.values(y, y_pred, sample_weight)
        hard_weight, term_weights = self.loss_weighting.tensors()
        if training:  # the per-step warm-ups count the steps taken
            self.loss_weighting.advance()
        total = hard_weight * hard
        for weight, value in zip(term_weights, values):
            total = total + weight * value
        for weight, head in self._heads.weighted(heads):
            total = total + weight * head
        for extra in self.losses:
            total = total + ops.cast(
                _keras_compat.aggregate_additional_loss(self, extra), "float32"
            )
        self._track(
            [
                self.hard_loss_tracker,
                *self.term_loss_trackers,
                *self.head_loss_trackers,
            ],
            [hard, *values, *heads],
            ops.shape(logits)[0],
        )
        return total

    @staticmethod
    def _track(trackers, values, batch):
        unscale = _keras_compat.unscale_loss_for_distribution
        for tracker, value in zip(trackers, values):
            tracker.update_state(unscale(value), sample_weight=batch)

    # ---------------------------------------------- validation before training
    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, after checking the data (clear errors, no step taken)."""
        arrays_global = None if args else shards.prepare(self, x, y, kwargs)
        for teacher in self.hooked_teachers:
            x, y, kwargs = teacher.prepare_fit_data(x, y, kwargs)
        x, y, kwargs = validation.check_fit_data(self, x, y, kwargs)
        self._plan.build_adapters_from(self, x)
        x, y, kwargs = shards.shard_fit_data(x, y, kwargs, arrays_global=arrays_global)
        kwargs = teacher_hooks.fit_callbacks(self, kwargs)
        _keep_pipeline_order(x, args, kwargs)
        with shards.own_sharding(x, kwargs.get("validation_data")):
            return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        x, y, kwargs = validation.check_fit_data(self, x, y, kwargs, training=False)
        self._plan.build_adapters_from(self, x)
        with shards.evaluate_data(x, y, kwargs, args) as (x, y, kwargs):
            return super().evaluate(x, y, *args, **kwargs)

    # ------------------------------------------------------------ serialising
    def get_config(self):
        ser = keras.saving.serialize_keras_object
        config = {
            "name": self.name,
            "student": ser(self.student),
            "hard_loss": None if self.hard_loss is None else ser(self.hard_loss),
            "output_name": self.output_name,
            **fused_lib.config(self._fused),
            **self.loss_weighting.config(),
        }
        if self._weighting != "terms":
            (term,) = self._plan.terms
            config["teacher"] = None if term.teacher is None else ser(term.teacher)
            config["soft_loss"] = [ser(loss) for loss in term.losses]
            return config
        teachers = self.term_teachers
        config["term_teachers"] = [ser(t) for t in teachers]
        config["terms"] = [
            {
                "teacher": next(i for i, t in enumerate(teachers) if t is term.teacher),
                "loss": [ser(loss) for loss in term.losses],
                "weight": config.pop(term.weight_name),
                "name": term.name,
                "output_name": term.output_name,
            }
            for term in self._plan.terms
        ]
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
            config["terms"] = [
                terms.Term(
                    teachers[item["teacher"]],
                    [de(loss) for loss in item["loss"]],
                    weight=weight(item["weight"]),
                    name=item["name"],
                    output_name=item.get("output_name"),
                )
                for item in config.pop("terms")
            ]
            return cls(student=student, **config)
        teacher = config.pop("teacher", None)
        teacher = None if teacher is None else de(teacher)
        soft = [de(c) for c in config.pop("soft_loss", [])]
        return cls(student=student, teacher=teacher, soft_loss=soft or None, **config)


def _hard_and_terms(distiller, x, y, y_pred, sample_weight, training):
    """The hard term and each term's value, before weighting (the fused
    projection reads the step's weights: the sum it differentiates).

    For sequence logits ``(N, L, V)`` each is a mean over the weighted
    (unmasked) tokens, classifier logits keep Keras's reduction
    (`keras_tfkd.tokens`). In the training pass of a ``fused_projection``
    Distiller `y_pred` are the student's hidden states and the projection is
    applied inside the losses (`keras_tfkd.fused`).
    """
    logits = select_output(y_pred, distiller.output_name, "student")
    labels = select_output(y, distiller.output_name, "labels")
    weights = tokens.token_weights(sample_weight, logits)
    plan, fused = distiller._plan, distiller._fused
    hidden = fused.take(y_pred) if fused is not None else None
    if hidden is not None:
        loss_weights = distiller.loss_weighting.tensors()  # this step's, as below
        return fused.values(
            plan, distiller.hard_loss, x, y, hidden, weights, training, loss_weights
        )
    hard = hard_value(distiller.hard_loss, labels, logits, weights)
    capture = plan.student_capture(distiller, x, y_pred, training)
    return hard, plan.values(x, y, y_pred, weights, training, capture)


def _keep_pipeline_order(x, args, kwargs):
    """``shuffle=False`` unless given, for input that shuffles itself.

    A tf.data pipeline or a keras_tfkd.data.pipeline shuffles itself (seeded);
    Keras would reorder the batches again, or warn.
    """
    if not args and (validation.is_dataset(x) or getattr(x, "shuffles_itself", False)):
        kwargs.setdefault("shuffle", False)
