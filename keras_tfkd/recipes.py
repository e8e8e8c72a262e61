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
ps_kd           ``(1-a_e) CE + a_e CE(P[i], S(z_s))``, ``a_e = alpha (e+1)/E``,
                ``P[i]`` the example's softmax at its previous visit
cs_kd           ``CE + m T^2 KL(S(z_s(x')/T) || S(z_s/T))``, ``x'`` another
                example of the same class, its logits gradient-stopped
online_label_   ``(1-alpha) CE + alpha CE(S_y, S(z_s))``, ``S_y`` the mean
smoothing       softmax of the correct predictions of class ``y`` last epoch
dkd             ``CE + w T^2 (a TCKD + b NCKD)``, ``w`` a warm-up per step
                (``warmup_fraction``) or per epoch (``warmup_epochs``)
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
student)``), and an int `num_classes` is checked against the student. A
hyper-parameter passed positionally is Python's `TypeError`.
"""

from __future__ import annotations

from keras_tfkd.distiller import Distiller
from keras_tfkd.losses import (
    LabelSmoothingCrossEntropy,
    SoftTargetKL,
    check_kl,
)
from keras_tfkd.teachers import VirtualTeacher

__all__ = [
    "baseline",
    "label_smoothing",
    "kd",
    "tfkd_self",
    "tfkd_reg",
    "ps_kd",
    "cs_kd",
    "online_label_smoothing",
    "dkd",
]


def _num_classes(student, num_classes=None):
    if not student.built:
        raise ValueError("The student must be built (call it once or give an Input).")
    k = int(student.output_shape[-1])
    if num_classes is not None and num_classes != k:
        raise ValueError(
            f"`num_classes`={num_classes} but the student predicts {k} classes: "
            "the teacher must have as many classes as the student."
        )
    return k


def baseline(student):
    """Plain training: ``loss = CE``.

    >>> distiller = baseline(student)  # doctest: +SKIP
    """
    return Distiller(student=student, teacher=None, alpha=0.0, name="baseline")


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


def kd(
    student,
    teacher,
    *,
    alpha,
    temperature,
    multiplier=1.0,
    kl="batchmean",
):
    """Normal KD (also Re-KD and De-KD: only the teacher differs).

    ``(1-alpha) CE + alpha m T^2 KL(S(z_t/T) || S(z_s/T))`` with the batch-mean
    ``KL`` (``m = multiplier``); ``kl="reference"`` divides the KL by K, as the
    reference code (the published KD rows use m = 1 with it, i.e. m = 0.01 on
    the batch-mean KL at K = 100).

    >>> distiller = kd(student, teacher, alpha=0.95, temperature=20.0)  # doctest: +SKIP
    """
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


def tfkd_self(
    student,
    teacher,
    *,
    alpha,
    temperature,
    multiplier=1.0,
    kl="batchmean",
):
    """Tf-KD_self: KD from a trained, frozen copy of the same architecture.

    ``(1-alpha) CE + alpha m T^2 KL(S(z_t/T) || S(z_s/T))`` (``m = multiplier``,
    batch-mean ``KL``; ``kl="reference"`` divides it by K).

    >>> distiller = tfkd_self(student, trained_copy, alpha=0.95, temperature=6.0,
    ...                       multiplier=0.5)  # doctest: +SKIP
    """
    return _kd_distiller(
        "tfkd_self", student, teacher, alpha, temperature, multiplier, kl
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
        multiplier=multiplier,  # SoftTargetKL checks it and `kl`
        kl=kl,
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


# ------------------------------------------------- after the paper (docs/methods.md)
def ps_kd(
    student,
    num_classes=None,
    *,
    alpha=0.8,
    num_examples=None,
    store_dtype="float32",
    shard_rows=False,
):
    """PS-KD (Kim et al., ICCV 2021): distil from the student's own last predictions.

    At epoch ``e`` of ``E`` (0-based; ``E`` is `fit`'s ``epochs``)::

        a_e  = alpha * (e + 1) / E
        loss = CE((1 - a_e) onehot(y) + a_e P[i], S(z_s))
             = (1 - a_e) CE + a_e CE(P[i], S(z_s))

    ``P[i]`` is the softmax the student gave example ``i`` at its previous
    visit (``onehot(y)`` before the first), kept by a
    `keras_tfkd.online.PastPredictions` store of ``num_examples x K``
    floats (`store_dtype` ``"float16"``/``"bfloat16"`` halves it). `alpha` is
    PS-KD's ``alpha_T`` (0.8 on CIFAR-100), the soft weight of the last
    epoch; the ramp is the Distiller's `alpha` schedule
    (`keras_tfkd.weight_schedules.LinearRamp`). `num_examples` is taken from
    the first `fit` on arrays (or a `keras_tfkd.data.pipeline`) when left
    None; give it to restore a saved run or to train under a distribution.
    `shard_rows` (True, ``"auto"``) splits the store by rows over the devices
    of a JAX distribution instead of copying it to each
    (`keras_tfkd.online.PastPredictions`).

    >>> distiller = ps_kd(student, alpha=0.8)  # doctest: +SKIP
    >>> distiller.compile(optimizer="sgd")  # doctest: +SKIP
    >>> distiller.fit(x, y, epochs=300, batch_size=128)  # doctest: +SKIP
    """
    from keras_tfkd.losses import SoftTargetCrossEntropy
    from keras_tfkd.online import PastPredictions
    from keras_tfkd.weight_schedules import LinearRamp

    k = _num_classes(student, num_classes)
    teacher = PastPredictions(
        num_examples, k, store_dtype=store_dtype, shard_rows=shard_rows
    )
    return Distiller(
        student=student,
        teacher=teacher,
        soft_loss=SoftTargetCrossEntropy(targets="probabilities", name="ps_kd_ce"),
        alpha=LinearRamp(alpha),
        name="ps_kd",
    )


def cs_kd(
    student, num_classes=None, *, temperature=4.0, multiplier=1.0, kl="batchmean"
):
    """CS-KD (Yun et al., CVPR 2020): match the predictions of two examples of a class.

    ``loss = CE(z_s(x), y) + m T^2 KL(S(z_s(x')/T) || S(z_s(x)/T))``, with
    ``x'`` another training example of the same class, drawn anew each
    epoch, whose logits are gradient-stopped (``m`` = `multiplier`, CS-KD's
    lambda; T = 4, m = 1 on CIFAR). The batches of pairs come from
    `keras_tfkd.online.ClassPairBatches`, which `fit` builds from arrays
    itself; the partners run through the student in a second forward pass,
    in training mode, as in the official code.

    >>> distiller = cs_kd(student, temperature=4.0)  # doctest: +SKIP
    >>> distiller.fit(x, y, epochs=200, batch_size=128)  # doctest: +SKIP
    """
    from keras_tfkd.online import ClassPairTeacher

    k = _num_classes(student, num_classes)
    loss = SoftTargetKL(
        temperature=temperature, multiplier=multiplier, kl=check_kl(kl), name="cs_kd_kl"
    )
    return Distiller(
        student=student,
        teacher=ClassPairTeacher(k),
        soft_loss=loss,
        hard_weight=1.0,
        soft_weight=1.0,
        name="cs_kd",
    )


def online_label_smoothing(
    student, num_classes=None, *, alpha=0.5, variant="official", epsilon=0.1
):
    """Online Label Smoothing (Zhang et al., TIP 2021): soft labels learned per class.

    ``loss = (1 - alpha) CE + alpha CE(S_y, S(z_s))``: ``S_y``, the soft label
    of class ``y``, is the mean softmax of the training examples of class
    ``y`` that the student classified correctly during the previous epoch
    (`keras_tfkd.online.OnlineSoftLabels`). `alpha` is the soft term's
    weight, as everywhere in keras-tfkd (the paper's ``alpha`` weighs the CE:
    0.5 either way). ``variant="official"`` starts from zeros (plain CE in
    the first epoch), ``"port"`` from label smoothing with `epsilon`.

    >>> distiller = online_label_smoothing(student, alpha=0.5)  # doctest: +SKIP
    """
    from keras_tfkd.losses import SoftTargetCrossEntropy
    from keras_tfkd.online import OnlineSoftLabels

    k = _num_classes(student, num_classes)
    return Distiller(
        student=student,
        teacher=OnlineSoftLabels(k, variant=variant, epsilon=epsilon),
        soft_loss=SoftTargetCrossEntropy(targets="probabilities", name="ols_ce"),
        alpha=alpha,
        name="online_label_smoothing",
    )


def dkd(
    student,
    teacher,
    *,
    tckd_weight=1.0,
    nckd_weight=8.0,
    temperature=4.0,
    warmup_epochs=None,
    warmup_fraction=None,
):
    """DKD (Zhao et al., CVPR 2022): KD split into target and non-target parts.

    ``loss = CE + w T^2 (a TCKD + b NCKD)`` with ``a`` = `tckd_weight` and
    ``b`` = `nckd_weight` (DKD's alpha and beta: 1 and 8 on most CIFAR-100
    pairs) and a warm-up ``w`` of the DKD term, one of:

    * `warmup_fraction` ``f`` in [0, 1): ``w_s = min((s + 1) / W, 1)`` at
      optimizer step ``s``, ``W = max(1, round(f * S))`` for a run of ``S``
      steps (`keras_tfkd.weight_schedules.StepWarmup`): the weight rises every
      step and the warm-up shrinks with the run. mdistiller's 20 of 240
      epochs is ``f = 1/12``.
    * `warmup_epochs` ``W`` (the default, 20, when neither is given):
      ``w_e = min((e + 1) / W, 1)`` at 0-based epoch ``e``, constant within
      an epoch (mdistiller counts epochs from 1). In a short run it is coarse:
      ``warmup_epochs=1`` is the full weight, ``T^2 * b = 128`` times NCKD
      at the defaults, from the first step.

    0 (either) gives the full weight from the first step. The weights need
    not sum to 1: the Distiller is built with ``hard_weight=1`` and the
    warm-up as ``soft_weight`` (see `keras_tfkd.losses.DecoupledKD`).

    >>> distiller = dkd(student, teacher, nckd_weight=8.0,
    ...                 warmup_fraction=0.1)  # doctest: +SKIP
    """
    from keras_tfkd.losses import DecoupledKD
    from keras_tfkd.weight_schedules import LinearWarmup, StepWarmup

    if warmup_epochs is not None and warmup_fraction is not None:
        raise ValueError(
            "Give one warm-up: warmup_epochs (whole epochs) or warmup_fraction "
            f"(a share of the run's steps), got warmup_epochs={warmup_epochs!r} "
            f"and warmup_fraction={warmup_fraction!r}."
        )
    if warmup_fraction is not None:
        warmup = StepWarmup(warmup_fraction)
    else:
        warmup = LinearWarmup(20 if warmup_epochs is None else warmup_epochs)
    _num_classes(student)
    loss = DecoupledKD(
        tckd_weight=tckd_weight, nckd_weight=nckd_weight, temperature=temperature
    )
    return Distiller(
        student=student,
        teacher=teacher,
        soft_loss=loss,
        hard_weight=1.0,
        soft_weight=warmup,
        name="dkd",
    )
