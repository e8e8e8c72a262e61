"""`Term`: one weighted soft term of a `keras_tfkd.Distiller`.

A Distiller built with ``terms=[...]`` minimises::

    loss = hard_weight * hard + sum_i weight_i * term_i + regularisation

where ``term_i`` is the sum of the losses of term ``i`` between its teacher
and the student: soft-target losses on the logits (`SoftTargetKL`, ...)
or `FeatureDistillation` between intermediate layers. Each teacher runs once
per step however many terms use it, and the student runs once.

Every term is logged in ``fit``/``evaluate`` as ``<name>_loss`` (its value
before weighting), and its weight is the variable ``<name>_weight``: a
number, a `keras_tfkd.weight_schedules.WeightSchedule` set at every epoch
begin, or set by ``distiller.set_weight("<name>_weight", value)`` or the
`keras_tfkd.callbacks.WeightScheduler` callback, without retracing.
"""

from __future__ import annotations

import re

import keras

from keras_tfkd import weight_schedules

__all__ = ["Term", "RESERVED_NAMES"]

#: Names a term may not take: they name the Distiller's own logs and weights.
RESERVED_NAMES = ("hard", "soft", "alpha", "loss")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def as_losses(loss, argument="loss"):
    """`loss` (a `keras.losses.Loss`, a config dict or a list of them) as a list.

    Raises a `TypeError` naming `argument` for anything else.
    """
    losses = list(loss) if isinstance(loss, (list, tuple)) else [loss]
    resolved = []
    for item in losses:
        if isinstance(item, dict):
            item = keras.saving.deserialize_keras_object(item)
        if not isinstance(item, keras.losses.Loss):
            raise TypeError(
                f"`{argument}` must be a keras.losses.Loss (SoftTargetKL, "
                "FeatureDistillation, ...) or a list of them, on teacher outputs "
                f"(y_true) and student outputs (y_pred); got {argument}={item!r}."
            )
        resolved.append(item)
    return resolved


class Term:
    """One soft term: ``weight * sum(losses(teacher, student))``.

    Args:
        teacher: a `keras.Model` that outputs logits, or a
            `keras_tfkd.teachers.Teacher` (`VirtualTeacher`, `EnsembleTeacher`,
            `CachedTeacher`, ...). Terms may share a teacher: it still runs
            once per step.
        loss: a `keras.losses.Loss` or a list of them, summed: losses on the
            logits (``loss(teacher_logits, student_logits)``) and
            `keras_tfkd.losses.FeatureDistillation` (between layers).
        weight: a number >= 0 or a `WeightSchedule` (default 1).
        name: the term's name in the logs (``<name>_loss``, ``<name>_weight``);
            default: the first loss's name, made unique with ``_2``, ``_3``.
        output_name: for a student (and teacher) with several outputs, the
            key (or index) of the output the logit losses compare; default:
            the Distiller's `output_name`.

    Example:

    ```python
    from keras_tfkd import Distiller, Term, losses
    distiller = Distiller(
        student=student,
        terms=[
            Term(teacher_a, losses.SoftTargetKL(temperature=4.0), weight=0.5,
                 name="kd_a"),
            Term(teacher_b, losses.SoftTargetKL(temperature=4.0), weight=0.5,
                 name="kd_b"),
        ],
        hard_weight=1.0,
    )
    distiller.compile(optimizer="adam")
    history = distiller.fit(x, y, epochs=2)
    history.history["kd_a_loss"]
    ```
    """

    def __init__(self, teacher, loss, weight=1.0, name=None, output_name=None):
        if teacher is None:
            raise TypeError(
                "A Term needs a `teacher`: a keras.Model that outputs logits or a "
                "keras_tfkd.teachers.Teacher."
            )
        self.teacher = teacher
        self.losses = as_losses(loss)
        if not self.losses:
            raise ValueError("A Term needs at least one loss, got loss=[].")
        self.weight = weight_schedules.check_weight("weight", weight)
        if name is not None:
            check_name(name)
        self.name = name
        self.output_name = output_name

    def __repr__(self):
        losses = ", ".join(type(loss).__name__ for loss in self.losses)
        return f"Term(name={self.name!r}, losses=[{losses}], weight={self.weight!r})"


def check_name(name):
    """Raise unless `name` can name a term (an identifier, not a reserved name)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            "A Term's `name` must be a letter followed by letters, digits or "
            f"underscores, got name={name!r}."
        )
    if name in RESERVED_NAMES or name.endswith(("_loss", "_weight")):
        raise ValueError(
            f"A Term may not be named {name!r}: {list(RESERVED_NAMES)} and names "
            "ending in _loss or _weight name the Distiller's own logs."
        )
    return name


def unique_names(terms):
    """The terms' names: given ones kept, missing ones from their first loss."""
    names = []
    taken = {term.name for term in terms if term.name is not None}
    if len(taken) < sum(term.name is not None for term in terms):
        given = [term.name for term in terms if term.name is not None]
        duplicate = sorted({n for n in given if given.count(n) > 1})
        raise ValueError(f"Two terms are named {duplicate[0]!r}: give each its own.")
    for term in terms:
        if term.name is not None:
            names.append(term.name)
            continue
        base = re.sub(r"[^A-Za-z0-9_]", "_", term.losses[0].name or "term")
        if not base[:1].isalpha() or base in RESERVED_NAMES:
            base = f"term_{base}"
        base = re.sub(r"_(loss|weight)$", "", base) or "term"
        name, k = base, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names.append(name)
    return names
