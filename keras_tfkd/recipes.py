"""The paper's methods as ready `Distiller`s.

Each recipe returns an uncompiled `Distiller` whose `compute_loss` is, after
`compile`, the docs/paper.md formula of its method. ``N`` is the batch size, ``K``
the number of classes, ``CE`` the mean cross-entropy on the student logits
``z_s``, ``S`` the softmax and ``KL`` the batch-mean KL divergence (summed over
classes, averaged over the batch).

==============  ==============================================================
recipe          total loss (``kl="batchmean"``, the default)
==============  ==============================================================
baseline        ``CE``
label_smoothing ``-(1/N) sum_n sum_k q[n,k] log S(z_s)[n,k]``, ``q = 1-eps`` on
                ``y``, ``eps/(K-1)`` elsewhere
kd              ``(1-alpha) CE + alpha m T^2 KL(S(z_t/T) || S(z_s/T))``
tfkd_self       ``(1-alpha) CE + alpha m T^2 KL(S(z_t/T) || S(z_s/T))``
tfkd_reg        ``(1-alpha) CE + alpha m KL(S(p_d/T) || S(z_s))``, ``p_d = a`` on
                ``y``, ``(1-a)/(K-1)`` elsewhere
==============  ==============================================================

``m`` is `multiplier` (default 1).

**The KL form: one setting, ``kl``.** ``kl="batchmean"`` (the default, here
as in `keras_tfkd.losses` and `keras.distillation`) means the same at any K.
``kl="reference"`` is the reference code's ``nn.KLDivLoss()``, which divides
by ``N*K`` instead of ``N`` (``KL / K``): with it, the published multipliers
reproduce the reference code exactly. They were tuned at ``K = 100``, so on
the batch-mean KL the same setting is ``m / 100``; the registry
(`keras_tfkd.experiments`) stores every published row in that form.

**Arguments.** Every recipe reads ``recipe(models..., *, hyper-parameters...)``:
the models are positional, the student first, then the teacher (`kd`,
`tfkd_self`) or the number of classes (`label_smoothing`, `tfkd_reg`); every
hyper-parameter (`alpha`, `temperature`, `multiplier`, `kl`, `correct_prob`,
`epsilon`) is keyword-only::

    kd(student, teacher, alpha=0.95, temperature=20.0, multiplier=0.01)
    tfkd_self(student, trained_copy, alpha=0.95, temperature=6.0, multiplier=0.5)
    tfkd_reg(student, 100, alpha=0.1, temperature=20.0, multiplier=1.0)

Keyword-only, rather than all positional in one order, because the
hyper-parameters are bare floats whose swaps are mostly valid, so they would
train the wrong method without an error (``tfkd_self(s, t, 0.95, 50.0, 6.0)``
would mean T = 50 and m = 6); the published tables name them; and the
`Distiller` itself is keyword-only. The model arguments stay positional:
there are two at most, in one order everywhere (the student first, as the
`Distiller` names it; unlike ``keras.distillation.Distiller(teacher,
student)``), and an int `num_classes` is checked against the student.

Until 0.x's next release the previous positional style (``kd(s, t, 0.9, 4.0)``,
``tfkd_self(s, t, alpha, T, m)``, ``tfkd_reg(s, K, alpha, T, m, a)``,
``label_smoothing(s, K, eps)``) still works, in the old order, and emits a
`DeprecationWarning` that spells out the keyword call, as does the 0.1.0
name ``kl_reduction`` (``"elementwise_mean"`` is now ``kl="reference"``).
"""

from __future__ import annotations

import functools
import inspect
import warnings

from keras_tfkd.distiller import Distiller
from keras_tfkd.losses import (
    LabelSmoothingCrossEntropy,
    SoftTargetKL,
    check_kl,
    check_multiplier,
)
from keras_tfkd.teachers import VirtualTeacher

__all__ = [
    "baseline",
    "label_smoothing",
    "kd",
    "tfkd_self",
    "tfkd_reg",
    "translate_multiplier",
]

#: The 0.1.0 values of `kl_reduction` -> the `kl` setting that replaced it.
_KL_REDUCTION_NAMES = {"elementwise_mean": "reference", "batchmean": "batchmean"}


def _num_classes(student):
    if not student.built:
        raise ValueError("The student must be built (call it once or give an Input).")
    return int(student.output_shape[-1])


def _kl_form(kl, kl_reduction, recipe):
    """`kl`, or the 0.1.0 `kl_reduction` it replaces (with a DeprecationWarning)."""
    if kl_reduction is None:
        return check_kl(kl)
    if kl_reduction not in _KL_REDUCTION_NAMES:
        raise ValueError(
            f"`kl_reduction` must be one of {tuple(_KL_REDUCTION_NAMES)}, got "
            f"kl_reduction={kl_reduction!r}."
        )
    new = _KL_REDUCTION_NAMES[kl_reduction]
    warnings.warn(
        f"recipes.{recipe}(kl_reduction={kl_reduction!r}) is deprecated and will be "
        f"removed in the next release: use kl={new!r}.",
        DeprecationWarning,
        stacklevel=3,
    )
    return new


def _positional_hyperparameters_deprecated(*old_order):
    """Accept the hyper-parameters positionally, in `old_order`, for one release."""

    def decorate(recipe):
        params = inspect.signature(recipe).parameters.values()
        models = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]

        @functools.wraps(recipe)
        def wrapper(*args, **kwargs):
            extra = args[len(models) :]
            if not extra:
                return recipe(*args, **kwargs)
            if len(extra) > len(old_order):
                raise TypeError(
                    f"recipes.{recipe.__name__}() takes {len(models)} positional "
                    f"argument(s) ({', '.join(models)}) and keyword-only "
                    f"hyper-parameters, got {len(args)} positional arguments."
                )
            names = old_order[: len(extra)]
            for name in names:
                if name in kwargs:
                    raise TypeError(
                        f"recipes.{recipe.__name__}() got multiple values for "
                        f"argument {name!r}."
                    )
            given = ", ".join(f"{n}={v!r}" for n, v in zip(names, extra))
            warnings.warn(
                f"recipes.{recipe.__name__}: passing {', '.join(names)} "
                "positionally is deprecated and will be refused in the next "
                "release; the hyper-parameters are keyword-only: "
                f"{recipe.__name__}({', '.join(models)}, {given}, ...).",
                DeprecationWarning,
                stacklevel=2,
            )
            kwargs.update(zip(names, extra))
            return recipe(*args[: len(models)], **kwargs)

        return wrapper

    return decorate


def translate_multiplier(multiplier, reference_num_classes=100):
    """Deprecated (0.1.0): a reference-form multiplier as a batch-mean one.

    ``m * KL / K_ref`` equals ``(m / K_ref) * KL``: divide by 100 by hand, or
    pass ``kl="reference"``.

    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     translate_multiplier(100.0)
    1.0
    """
    warnings.warn(
        "recipes.translate_multiplier is deprecated and will be removed in the next "
        f"release: the batch-mean multiplier is multiplier / {reference_num_classes}.",
        DeprecationWarning,
        stacklevel=2,
    )
    return check_multiplier(multiplier) / reference_num_classes


def baseline(student):
    """Plain training: ``loss = CE``.

    >>> distiller = baseline(student)  # doctest: +SKIP
    """
    return Distiller(student=student, teacher=None, alpha=0.0, name="baseline")


@_positional_hyperparameters_deprecated("epsilon")
def label_smoothing(student, num_classes=None, *, epsilon=0.1):
    """LSR: cross-entropy on ``q = 1-eps`` on ``y`` and ``eps/(K-1)`` elsewhere.

    >>> distiller = label_smoothing(student, epsilon=0.1)  # doctest: +SKIP
    """
    k = _num_classes(student)
    if num_classes is not None and num_classes != k:
        raise ValueError(
            f"`num_classes`={num_classes} but the student predicts {k} classes."
        )
    return Distiller(
        student=student,
        teacher=None,
        alpha=0.0,
        hard_loss=LabelSmoothingCrossEntropy(epsilon),
        name="label_smoothing",
    )


@_positional_hyperparameters_deprecated("alpha", "temperature")
def kd(
    student,
    teacher,
    *,
    alpha,
    temperature,
    multiplier=1.0,
    kl="batchmean",
    kl_reduction=None,
):
    """Normal KD (also Re-KD and De-KD: only the teacher differs).

    ``(1-alpha) CE + alpha m T^2 KL(S(z_t/T) || S(z_s/T))`` with the batch-mean
    ``KL`` (``m = multiplier``); ``kl="reference"`` divides the KL by K, as the
    reference code (the published KD rows use m = 1 with it, i.e. m = 0.01 on
    the batch-mean KL at K = 100).

    >>> distiller = kd(student, teacher, alpha=0.95, temperature=20.0)  # doctest: +SKIP
    """
    kl = _kl_form(kl, kl_reduction, "kd")
    return _kd_distiller("kd", student, teacher, alpha, temperature, multiplier, kl)


def _kd_distiller(name, student, teacher, alpha, temperature, multiplier, kl):
    """The Distiller of kd and tfkd_self: the same loss, another teacher."""
    _num_classes(student)
    loss = SoftTargetKL(
        temperature=temperature, multiplier=multiplier, kl=kl, name=f"{name}_kl"
    )
    return Distiller(
        student=student, teacher=teacher, soft_loss=loss, alpha=alpha, name=name
    )


@_positional_hyperparameters_deprecated(
    "alpha", "temperature", "multiplier", "kl_reduction"
)
def tfkd_self(
    student,
    teacher,
    *,
    alpha,
    temperature,
    multiplier=1.0,
    kl="batchmean",
    kl_reduction=None,
):
    """Tf-KD_self: KD from a trained, frozen copy of the same architecture.

    ``(1-alpha) CE + alpha m T^2 KL(S(z_t/T) || S(z_s/T))`` (``m = multiplier``,
    batch-mean ``KL``; ``kl="reference"`` divides it by K).

    >>> distiller = tfkd_self(student, trained_copy, alpha=0.95, temperature=6.0,
    ...                       multiplier=0.5)  # doctest: +SKIP
    """
    kl = _kl_form(kl, kl_reduction, "tfkd_self")
    return _kd_distiller(
        "tfkd_self", student, teacher, alpha, temperature, multiplier, kl
    )


@_positional_hyperparameters_deprecated(
    "alpha", "temperature", "multiplier", "correct_prob", "kl_reduction"
)
def tfkd_reg(
    student,
    num_classes,
    *,
    alpha,
    temperature,
    multiplier=1.0,
    correct_prob=0.99,
    kl="batchmean",
    kl_reduction=None,
):
    """Tf-KD_reg: a virtual teacher built from the labels, no teacher model.

    ``(1-alpha) CE + alpha m KL(S(p_d/T) || S(z_s))`` (batch-mean ``KL``;
    ``kl="reference"`` divides it by K) with ``p_d = a`` on the
    label and ``(1-a)/(K-1)`` elsewhere (``a = correct_prob``). As in the
    reference code the temperature softens the virtual teacher's
    *probabilities* only; the student is not softened and there is no ``T^2``
    (the paper's Eq. 9 softens both: build it with `SoftTargetKL` directly).

    >>> distiller = tfkd_reg(student, 100, alpha=0.1,
    ...                      temperature=20.0)  # doctest: +SKIP
    """
    k = _num_classes(student)
    if num_classes != k:
        raise ValueError(
            f"`num_classes`={num_classes} but the student predicts {k} classes: "
            "the virtual teacher must have as many classes as the student."
        )
    teacher = VirtualTeacher(num_classes, correct_prob=correct_prob)
    loss = SoftTargetKL(
        temperature=1.0,
        teacher_temperature=temperature,
        multiplier=multiplier,  # SoftTargetKL checks it
        kl=_kl_form(kl, kl_reduction, "tfkd_reg"),
        temperature_squared=False,
        name="tfkd_reg_kl",
    )
    return Distiller(
        student=student,
        teacher=teacher,
        soft_loss=loss,
        alpha=alpha,
        name="tfkd_reg",
    )
