"""The checks a `Distiller` runs on its arguments, and the forms it accepts.

Everything here runs before any weight exists or changes: a mistake gets a
message naming the argument and value. `soft_terms` turns the three ways of
giving the soft side (``teacher=``/``soft_loss=`` with ``alpha=``, the same
with ``hard_weight=``/``soft_weight=``, or ``terms=[Term(...)]``) into the one
model underneath: bound terms and their `LossWeights`.
"""

from __future__ import annotations

import inspect

import keras
from keras import ops

from keras_tfkd import loss_weights as weights_lib
from keras_tfkd import teachers as teachers_lib
from keras_tfkd import terms as terms_lib
from keras_tfkd import weight_schedules
from keras_tfkd.term_plan import BoundTerm, output_keys, select_output

__all__ = [
    "refuse_call_style",
    "resolve_hard_loss",
    "soft_terms",
    "check_teacher",
    "student_logits_shape",
    "OutputHeads",
]

#: keras.distillation.Distiller's own arguments, refused here with a pointer.
KERAS_DISTILLER_ARGUMENTS = (
    "distillation_losses",
    "distillation_loss_weights",
    "student_loss_weight",
)


# ------------------------------------------------------------------ call style
def refuse_call_style(args, kwargs, student):
    """Positional models, keras.distillation's arguments, no student: refused."""
    if args:
        kinds = ", ".join(type(arg).__name__ for arg in args)
        raise TypeError(
            f"Distiller takes its arguments by keyword only, got {len(args)} "
            f"positional argument(s) ({kinds}). Write "
            "Distiller(student=..., teacher=..., soft_loss=..., alpha=...): "
            "`student` is the model being trained, `teacher` the frozen one. "
            "keras.distillation.Distiller takes them positionally in the opposite "
            "order (teacher, student), so a positional call could silently train "
            "the teacher."
        )
    keras_names = sorted(set(kwargs) & set(KERAS_DISTILLER_ARGUMENTS))
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


# ------------------------------------------------------------------ hard loss
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
    target = (
        type(resolved).__init__ if isinstance(resolved, keras.losses.Loss) else resolved
    )
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


def resolve_hard_loss(loss):
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


# ------------------------------------------------------------------ soft terms
def soft_terms(
    *, teacher, soft_loss, alpha, hard_weight, soft_weight, terms, output_name
):
    """The weighting's name, the bound terms and a maker of their `LossWeights`.

    The one-teacher forms are sugar for one term named ``soft``: with
    ``alpha`` its weight is ``alpha`` and the hard weight ``1 - alpha`` (one
    variable); with ``hard_weight``/``soft_weight`` two free variables.
    Without a teacher the ``soft`` term has no losses and weighs 0 in value.
    """
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
        return _given_terms(terms, hard_weight, output_name)
    if hard_weight is not None or soft_weight is not None:
        if alpha is not None:
            raise ValueError(
                "Give either `alpha` (the loss is (1 - alpha) * hard + alpha * "
                "soft) or `hard_weight`/`soft_weight` (hard_weight * hard + "
                "soft_weight * soft), not both: got "
                f"alpha={alpha!r}, hard_weight={hard_weight!r}, "
                f"soft_weight={soft_weight!r}."
            )
        weighting = "weights"
        hard = weight_schedules.check_weight(
            "hard_weight", 1.0 if hard_weight is None else hard_weight
        )
        soft = weight_schedules.check_weight(
            "soft_weight", 1.0 if soft_weight is None else soft_weight
        )

        def make(add_weight):
            return weights_lib.LossWeights.free(
                add_weight, hard, [("soft_weight", soft)]
            )

    else:
        weighting = "alpha"
        alpha = weights_lib.check_alpha(0.5 if alpha is None else alpha)

        def make(add_weight):
            return weights_lib.LossWeights.convex(add_weight, alpha, "soft_weight")

    losses = [] if soft_loss is None else terms_lib.as_losses(soft_loss, "soft_loss")
    if teacher is not None and not losses:
        from keras_tfkd.losses import SoftTargetKL

        losses = [SoftTargetKL()]
    if losses and teacher is None:
        raise ValueError(
            "`soft_loss` was given but `teacher` is None: a soft-target loss "
            "needs a teacher (a model, VirtualTeacher, UniformTeacher, ...)."
        )
    bound = [BoundTerm("soft", teacher, losses, "soft_weight", output_name)]
    return weighting, bound, make


def _given_terms(terms, hard_weight, output_name):
    terms = list(terms) if isinstance(terms, (list, tuple)) else [terms]
    if not terms or not all(isinstance(t, terms_lib.Term) for t in terms):
        raise TypeError(
            "`terms` must be a non-empty list of keras_tfkd.Term objects, "
            f"got terms={terms!r}."
        )
    hard = weight_schedules.check_weight(
        "hard_weight", 1.0 if hard_weight is None else hard_weight
    )
    bound = [
        BoundTerm(
            name,
            term.teacher,
            term.losses,
            f"{name}_weight",
            output_name if term.output_name is None else term.output_name,
        )
        for term, name in zip(terms, terms_lib.unique_names(terms))
    ]
    term_weights = [(b.weight_name, t.weight) for b, t in zip(bound, terms)]

    def make(add_weight):
        return weights_lib.LossWeights.free(add_weight, hard, term_weights)

    return "terms", bound, make


# ------------------------------------------------------------------ teachers
def check_target_kinds(teacher, soft_losses):
    """A teacher that hands over probabilities needs losses that take them."""
    kind = teacher.targets if isinstance(teacher, teachers_lib.Teacher) else "logits"
    check_losses = getattr(teacher, "check_losses", None)
    if check_losses is not None:  # a teacher with its own kind of targets (top-k)
        check_losses(soft_losses)
        return
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


def student_logits_shape(student, output_name):
    """The shape of the student's distilled logits, ``(None, K)`` or
    ``(None, L, V)`` (None while the student is unbuilt)."""
    if not student.built:
        return None
    outputs = getattr(student, "output", None)
    keys = output_keys(outputs) if outputs is not None else []
    if len(keys) > 1 and output_name is None:
        raise ValueError(
            f"The student has several outputs ({keys}): give output_name=<name or "
            "index> for the logits to distil; the other outputs keep the "
            "losses given to compile(loss={...})."
        )
    if outputs is None:
        shape = getattr(student, "output_shape", None)
        return tuple(shape) if isinstance(shape, tuple) else None
    return tuple(select_output(outputs, output_name, "student").shape)


def check_teacher(term, student, shape, argument):
    """A bound term's teacher: a logits model (frozen here) or a `Teacher`,
    predicting the student's classes (its vocabulary, for sequence logits
    `shape`), with the student's tokenizer, handing its losses what they take."""
    teacher = term.teacher
    if teacher is None:
        return
    if isinstance(teacher, teachers_lib.Teacher):
        pass
    elif isinstance(teacher, keras.Model):
        teachers_lib.check_logits_teacher(teacher)
        check_same_tokenizer(student, teacher, argument)
        teacher.trainable = False
    else:
        raise TypeError(
            f"`{argument}` must be a keras.Model that outputs logits, a "
            f"keras_tfkd.teachers.Teacher, or None; got {teacher!r}."
        )
    outputs = (
        getattr(teacher, "output", None) if isinstance(teacher, keras.Model) else None
    )
    if teacher_is_multi_output(teacher, outputs):
        teacher_classes = select_output(outputs, term.output_name, "teacher").shape[-1]
    else:
        teacher_classes = teachers_lib.teacher_num_classes(teacher)
    num_classes = None if shape is None else shape[-1]
    if None in (num_classes, teacher_classes) or num_classes == teacher_classes:
        check_target_kinds(teacher, term.losses)
        return
    if len(shape) < 3:
        raise ValueError(
            f"The teacher predicts {teacher_classes} classes but the student "
            f"predicts {num_classes}: `{argument}` (num_classes="
            f"{teacher_classes}) and `student` must agree."
        )
    fix = (
        "If the teacher's vocabulary is the student's padded to a larger size "
        "(the same tokenizer, unused rows at the end, as Qwen2.5's 152,064 "
        "logits for 151,936 tokens), distil from its first "
        f"{num_classes:,} logits: teachers.TruncatedVocabulary({argument}, "
        f"vocabulary_size={num_classes}). "
        if teacher_classes > num_classes
        else ""
    )
    raise ValueError(
        f"The teacher's logits cover a vocabulary of {teacher_classes:,} tokens "
        f"but the student's {num_classes:,}: token-level distillation compares "
        f"the two distributions token id by token id. {fix}A teacher with another "
        "tokenizer cannot teach this student token by token."
    )


def _tokenizer(model):
    return getattr(getattr(model, "preprocessor", None), "tokenizer", None)


def _token_ids(tokenizer):
    """The token -> id mapping (BPE tokenizers) or the tokens in id order."""
    vocabulary = getattr(tokenizer, "vocabulary", None)
    if isinstance(vocabulary, dict):
        return dict(vocabulary)
    return list(tokenizer.get_vocabulary())


def check_same_tokenizer(student, teacher, argument="teacher"):
    """Refuse a KerasHub teacher whose tokenizer is not the student's.

    Token-level losses compare token id ``i`` of both models, which means the
    same text only with one tokenizer. Checked when both models carry a
    preprocessor with a tokenizer (a CausalLM built with ``preprocessor=None``
    is trusted).
    """
    mine, theirs = _tokenizer(student), _tokenizer(teacher)
    if mine is None or theirs is None:
        return
    same_kind = type(mine) is type(theirs)
    if same_kind and _token_ids(mine) == _token_ids(theirs):
        return
    raise ValueError(
        f"`{argument}` uses another tokenizer than the student "
        f"({type(theirs).__name__}, {theirs.vocabulary_size():,} tokens, against "
        f"{type(mine).__name__}, {mine.vocabulary_size():,} tokens): token-level "
        "distillation compares the probability of each token id, and the same "
        "id names different text in the two vocabularies. Distil from a teacher "
        "with the student's tokenizer (or train on the teacher's generated text "
        "with plain cross-entropy)."
    )


def teacher_is_multi_output(teacher, outputs):
    return (
        isinstance(teacher, keras.Model)
        and teacher.built
        and len(output_keys(outputs)) > 1
    )


# ------------------------------------------------------------------ compile
class OutputHeads:
    """The other outputs of a multi-output student: their losses and weights.

    ``compile(loss={output: loss}, loss_weights={output: weight})`` gives
    them; each adds ``weight * loss(y[output], y_pred[output])`` to the
    Distiller's loss and is logged as ``<output>_loss``.
    """

    def __init__(self):
        self.losses = {}
        self.weights = {}

    def compile(self, student, output_name, loss, loss_weights):
        """Resolve `loss`/`loss_weights`; the distilled output's loss, or None."""
        outputs = getattr(student, "output", None)
        keys = output_keys(outputs) if student.built else []
        given = dict(loss) if isinstance(loss, dict) else dict(enumerate(loss))
        if len(keys) < 2:
            raise ValueError(
                f"compile(loss={type(loss).__name__}) gives one loss per output, "
                "but the student has one output: give one loss (or None)."
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
        if output_name in weights:
            raise ValueError(
                f"loss_weights gives the distilled output {output_name!r} "
                "a weight: it is weighted by the Distiller (alpha= or hard_weight=)."
            )
        hard = given.pop(output_name, None)
        self.losses = {
            key: resolve_hard_loss(value)
            for key, value in given.items()
            if value is not None
        }
        self.weights = {
            key: weight_schedules.check_weight(f"loss_weights[{key!r}]", w)
            for key, w in weights.items()
        }
        return resolve_hard_loss(hard)

    def trackers(self):
        """One ``<output>_loss`` mean per head."""
        return [keras.metrics.Mean(name=f"{key}_loss") for key in self.losses]

    def values(self, y, y_pred, sample_weight):
        """Each head's loss (float32), unweighted."""
        return [
            ops.cast(loss(y[key], y_pred[key], sample_weight=sample_weight), "float32")
            for key, loss in self.losses.items()
        ]

    def weighted(self, values):
        """``(weight, value)`` of each head (weight 1 unless given)."""
        return [(self.weights.get(k, 1.0), v) for k, v in zip(self.losses, values)]

    def config(self):
        """The heads' part of the compile config (JSON keys are strings)."""
        if not self.losses:
            return {}
        ser = keras.saving.serialize_keras_object
        return {
            "head_losses": {str(k): ser(v) for k, v in self.losses.items()},
            "head_loss_weights": {str(k): w for k, w in self.weights.items()},
        }

    @staticmethod
    def compile_arguments(student, config):
        """A loaded compile config's heads as ``compile``'s `loss`/`loss_weights`."""
        config.pop("loss", None)
        heads = config.pop("head_losses", None)
        weights = config.pop("head_loss_weights", None)
        if heads:
            # JSON keys are strings: a list output's index comes back an int.
            by_text = {str(k): k for k in output_keys(student.output)}
            config["loss"] = {by_text.get(k, k): v for k, v in heads.items()}
            config["loss_weights"] = {
                by_text.get(k, k): v for k, v in (weights or {}).items()
            } or None
        return config
