"""Every reference experiment of the paper as data, and how to run it at any K.

An :class:`Experiment` is one row of the paper: a method, a student, a teacher
and the published hyper-parameters (docs/paper.md). The rows are data: the
package file ``experiments.json`` (`DATA_FILE`) has one table per table of
docs/paper.md, every value written out, and `load_registry` reads it. The
registry holds

* every row of the two CIFAR-100 hyper-parameter tables of docs/paper.md (normal KD,
  Re-KD, Tf-KD_self, Tf-KD_reg),
* a baseline and an LSR (``epsilon = 0.1``) entry for every model,
* the De-KD rows: the teacher is the checkpoint after ``teacher_epochs`` epochs
  of normal training (ResNet18 after 1, ResNet50 after 50, ResNeXt29 after 50),
* the ImageNet experiments (90 epochs, batch 512, ``lr = 0.1 * bs / 256``,
  weight decay 1e-4, x0.1 at epochs 30/60/80) on the `keras.applications`
  students ResNet50, MobileNetV2 and DenseNet121 (model names
  ``imagenet_resnet50``, ``imagenet_mobilenet_v2``, ``imagenet_densenet121``,
  built with ``weights=None``).

Ids are ``<method>/<student>`` for one-model methods (``tfkd_reg/resnet18``,
``lsr/mobilenet_v2``, ``baseline/resnet18``) and
``<method>/<student>_from_<teacher>`` otherwise
(``kd/mobilenet_v2_from_resnet18``, ``tfkd_self/resnet18_from_resnet18``,
``dekd/mobilenet_v2_from_resnet18``, ``rekd/resnet18_from_mobilenet_v2``).
The model names are those of `keras_tfkd.models`.

The KL term: ``kl`` and ``multiplier``
--------------------------------------
The paper tuned ``alpha``, ``T`` and ``multiplier`` on CIFAR-100 (``K = 100``)
with the reference code's KL, which divides by ``N*K`` (``kl="reference"``).
Copied as they are to ``K = 10``, that term is 10x larger for the same
distributions and training can diverge. So the registry stores every row in
the form that means the same at any K, as the rest of keras-tfkd does: the
batch-mean KL (``kl="batchmean"``, the default) with
``multiplier = published_multiplier / 100``, the published number kept
beside it. At ``K = 100`` the two forms are the same loss; elsewhere the
batch-mean one keeps the published meaning. ``replace(kl="reference",
multiplier=published_multiplier)`` runs the reference code's form verbatim
(to reproduce it on CIFAR-10, say). Nothing is translated at run time:
`multiplier` goes to the loss as it is.

Example:

>>> from keras_tfkd import experiments
>>> exp = experiments.get("tfkd_reg/resnet18")
>>> exp.alpha, exp.temperature, exp.multiplier, exp.published_multiplier
(0.1, 20.0, 1.0, 100.0)
>>> quick = exp.replace(student="cnn_tiny", dataset="digits", epochs=5)
>>> quick.id, quick.based_on, quick.kl
('tfkd_reg/cnn_tiny', 'tfkd_reg/resnet18', 'batchmean')
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import json
import math
import types
from collections.abc import Mapping

__all__ = [
    "Experiment",
    "METHODS",
    "ONE_MODEL_METHODS",
    "IMAGENET_APPLICATIONS",
    "REGISTRY",
    "RegistryError",
    "UnknownNameError",
    "FIELD_CHOICES",
    "FIELD_HELP",
    "FIELD_MINIMUMS",
    "RUN_FIELDS",
    "available",
    "check_method",
    "experiment_id",
    "field_kind",
    "get",
    "load_registry",
]

#: Every method: the paper's, in the order of its comparison, then the later
#: ones (docs/methods.md): PS-KD, CS-KD, Online Label Smoothing, DKD.
METHODS = (
    "baseline",
    "lsr",
    "kd",
    "rekd",
    "dekd",
    "tfkd_self",
    "tfkd_reg",
    "pskd",
    "cskd",
    "ols",
    "dkd",
)
#: Methods that train one model and take no teacher model.
ONE_MODEL_METHODS = ("baseline", "lsr", "tfkd_reg", "pskd", "cskd", "ols")
#: Methods whose loss has a KL term to a teacher (model or virtual) weighed
#: by ``alpha`` (the paper's family).
KL_METHODS = ("kd", "rekd", "dekd", "tfkd_self", "tfkd_reg")
#: Methods with a KL term of form ``kl`` and a ``multiplier`` (CS-KD's is to
#: the prediction on a same-class partner; its lambda is the multiplier).
KL_FORM_METHODS = (*KL_METHODS, "cskd")
#: Methods whose ``alpha`` (the soft term's weight) is used: the paper's KL
#: methods, PS-KD (the last epoch's weight of its ramp) and OLS.
ALPHA_METHODS = (*KL_METHODS, "pskd", "ols")
#: Methods with a temperature.
TEMPERATURE_METHODS = (*KL_METHODS, "cskd", "dkd")
#: How each method gets its teacher: trained normally first (``"trained"``),
#: the checkpoint after ``teacher_epochs`` epochs of normal training
#: (``"early"``), the best checkpoint of a normal run of the student's own
#: architecture (``"self"``), or none (virtual teachers are built from labels).
TEACHER_SOURCE = types.MappingProxyType(
    {
        "baseline": None,
        "lsr": None,
        "kd": "trained",
        "rekd": "trained",
        "dekd": "early",
        "tfkd_self": "self",
        "tfkd_reg": None,
        "pskd": None,
        "cskd": None,
        "ols": None,
        "dkd": "trained",
    }
)
PROTOCOLS = ("cifar", "imagenet")
#: The values of ``kl`` (`keras_tfkd.losses.KL_FORMS`; this module imports Keras
#: only when it builds a Distiller).
KL_FORMS = ("batchmean", "reference")

#: ImageNet students: registry name -> `keras.applications` builder name.
IMAGENET_APPLICATIONS = types.MappingProxyType(
    {
        "imagenet_resnet50": "ResNet50",
        "imagenet_mobilenet_v2": "MobileNetV2",
        "imagenet_densenet121": "DenseNet121",
    }
)


class UnknownNameError(ValueError):
    """An unknown experiment, model or data-set name; `valid` lists the known ones."""

    def __init__(self, message, name=None, valid=()):
        super().__init__(message)
        self.name = name
        self.valid = list(valid)


def check_method(method):
    """`method` if it is one of `METHODS`, else `UnknownNameError` listing them.

    >>> check_method("tfkd_reg")
    'tfkd_reg'
    """
    if method not in METHODS:
        raise UnknownNameError(
            f"Unknown method {method!r}; valid methods: {', '.join(METHODS)}.",
            method,
            METHODS,
        )
    return method


def experiment_id(method, student, teacher=None):
    """``<method>/<student>`` or ``<method>/<student>_from_<teacher>``.

    >>> experiment_id("kd", "mobilenet_v2", "resnet18")
    'kd/mobilenet_v2_from_resnet18'
    """
    if teacher is None:
        return f"{method}/{student}"
    return f"{method}/{student}_from_{teacher}"


# --------------------------------------------------------------- validation
_FLOAT = "a number"
_INT = "an integer"
_STR = "a string"
# name -> (kind, may be None)
_FIELD_TYPES = {
    "method": (_STR, False),
    "student": (_STR, False),
    "teacher": (_STR, True),
    "alpha": (_FLOAT, False),
    "temperature": (_FLOAT, True),
    "multiplier": (_FLOAT, False),
    "kl": (_STR, False),
    "published_multiplier": (_FLOAT, True),
    "batch_size": (_INT, False),
    "dataset": (_STR, False),
    "epochs": (_INT, False),
    "teacher_epochs": (_INT, True),
    "teacher_batch_size": (_INT, True),
    "correct_prob": (_FLOAT, False),
    "epsilon": (_FLOAT, False),
    "tckd_weight": (_FLOAT, False),
    "nckd_weight": (_FLOAT, False),
    "warmup_epochs": (_INT, False),
    "warmup_fraction": (_FLOAT, True),
    "protocol": (_STR, False),
    "published_accuracy": (_FLOAT, True),
    "teacher_accuracy": (_FLOAT, True),
    "source": (_STR, False),
    "based_on": (_STR, True),
}


#: One line on each field, for ``keras-tfkd run --help`` (its flags are the
#: fields of `RUN_FIELDS`, generated from this table and `_FIELD_TYPES`).
FIELD_HELP = types.MappingProxyType(
    {
        "student": "another student model",
        "teacher": "another teacher model",
        "alpha": "the soft term's weight, in [0, 1] (PS-KD: its last epoch's)",
        "temperature": "the KL's temperature T",
        "multiplier": "the factor in front of the KL of form --kl",
        "kl": "the KL form: batchmean (default) or reference (the authors' KL / K)",
        "batch_size": None,
        "dataset": "(default: the experiment's, cifar100)",
        "epochs": None,
        "teacher_epochs": "De-KD: epochs of the teacher's normal run it stops at",
        "teacher_batch_size": "the teacher's batch size (default: batch_size)",
        "correct_prob": "Tf-KD_reg's a",
        "epsilon": "LSR's epsilon",
        "tckd_weight": "DKD's alpha: the weight of its target-class term",
        "nckd_weight": "DKD's beta: the weight of its non-target term",
        "warmup_epochs": "DKD: epochs over which its term ramps up (0: none)",
        "warmup_fraction": "DKD: share of the run's steps over which its term "
        "ramps up, every step (replaces warmup_epochs)",
    }
)
#: The fields a run may override from the command line, in this order; the
#: others (method, protocol, published values, provenance) belong to the row.
RUN_FIELDS = tuple(FIELD_HELP)
#: Fields whose values are one of a few names.
FIELD_CHOICES = types.MappingProxyType({"kl": KL_FORMS})
#: The smallest value of each integer field a run may set (1 unless listed):
#: DKD's warm-up may be 0 epochs (its full weight from the first step).
FIELD_MINIMUMS = types.MappingProxyType({"warmup_epochs": 0})


def field_kind(name):
    """``"number"``, ``"integer"`` or ``"string"``: what field `name` holds."""
    kind = _FIELD_TYPES[name][0]
    return {_FLOAT: "number", _INT: "integer", _STR: "string"}[kind]


def _coerce(name, value):
    """Check the type of one field; ints become floats where a number is meant."""
    kind, nullable = _FIELD_TYPES[name]
    if value is None:
        if nullable:
            return None
        raise TypeError(f"`{name}` must be {kind}, got {name}=None.")
    bad = TypeError(
        f"`{name}` must be {kind}{' or None' if nullable else ''}, got "
        f"{name}={value!r} ({type(value).__name__})."
    )
    if kind == _STR:
        if not isinstance(value, str) or not value:
            raise bad
        return value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        if kind == _INT or not hasattr(value, "__float__") or isinstance(value, bool):
            raise bad
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"`{name}` must be finite, got {name}={value!r}.")
        return value
    return int(value) if kind == _INT else float(value)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One reference experiment: a method, its models and hyper-parameters.

    Fields (see docs/paper.md for the formulas):

    * ``id``: ``<method>/<student>`` or ``<method>/<student>_from_<teacher>``,
      derived from the three fields below (never set by hand).
    * ``method``: one of `METHODS`. ``student``/``teacher``: model names of
      `keras_tfkd.models` (or `IMAGENET_APPLICATIONS`); ``teacher`` is None for
      baseline, lsr and tfkd_reg, and equals ``student`` for tfkd_self.
    * ``alpha``, ``temperature``: the soft term's weight and temperature as
      published; ``alpha = 0`` and ``temperature = None`` for baseline and
      lsr. ``multiplier``: the factor in front of the KL of form ``kl``
      (``"batchmean"``, default, or ``"reference"``), passed to the loss as
      it is; ``published_multiplier``: the paper's number (reference form,
      ``K = 100``; see the module docstring).
    * ``batch_size``, ``dataset``, ``epochs``, ``protocol`` (``"cifar"``:
      SGD + warm-up + x0.2 at 60/120/160; ``"imagenet"``: x0.1 at 30/60/80).
    * ``teacher_epochs``: De-KD stops the teacher's normal training after this
      many epochs (for other methods, if set, the teacher trains this long
      instead of ``epochs``); ``teacher_batch_size``: batch size the teacher
      is trained with (None: ``batch_size``).
    * ``correct_prob`` (Tf-KD_reg's ``a``), ``epsilon`` (LSR).
    * ``tckd_weight``, ``nckd_weight``, ``warmup_epochs``: DKD's alpha, beta
      and warm-up (its loss is ``CE + min((e+1)/warmup, 1) * DKD``; the
      weights are not a convex mix, so they are not ``alpha``);
      ``warmup_fraction`` (None, or in [0, 1) with ``warmup_epochs=0``): the
      warm-up as a share of the run's steps, rising every step instead. For CS-KD,
      ``multiplier`` is its lambda; for PS-KD ``alpha`` is its ``alpha_T``
      (the soft weight it ramps up to); for OLS ``alpha`` is the soft
      term's weight.
    * ``published_accuracy`` / ``teacher_accuracy``: CIFAR-100 top-1 % from
      the paper, where published; ``source``: where the row comes from;
      ``based_on``: the registry id an overridden experiment started from.

    Construct it from the registry (`get`) and change it with `replace`.

    Example:

    >>> exp = get("kd/mobilenet_v2_from_resnet18").replace(epochs=20)
    >>> exp.alpha, exp.temperature, exp.epochs
    (0.95, 20.0, 20)
    """

    method: str
    student: str
    teacher: str | None = None
    alpha: float = 0.0
    temperature: float | None = None
    multiplier: float = 1.0
    kl: str = "batchmean"
    published_multiplier: float | None = None
    batch_size: int = 128
    dataset: str = "cifar100"
    epochs: int = 200
    teacher_epochs: int | None = None
    teacher_batch_size: int | None = None
    correct_prob: float = 0.99
    epsilon: float = 0.1
    tckd_weight: float = 1.0
    nckd_weight: float = 8.0
    warmup_epochs: int = 20
    warmup_fraction: float | None = None
    protocol: str = "cifar"
    published_accuracy: float | None = None
    teacher_accuracy: float | None = None
    source: str = "docs/paper.md"
    based_on: str | None = None
    id: str = dataclasses.field(init=False)

    def __post_init__(self):
        for name in _FIELD_TYPES:
            object.__setattr__(self, name, _coerce(name, getattr(self, name)))
        self._check()
        object.__setattr__(
            self, "id", experiment_id(self.method, self.student, self.teacher)
        )

    def _check(self):
        def fail(name, why):
            raise ValueError(
                f"`{name}` {why}, got {name}={getattr(self, name)!r} "
                f"(method={self.method!r})."
            )

        check_method(self.method)
        if self.protocol not in PROTOCOLS:
            fail("protocol", f"must be one of {PROTOCOLS}")
        if self.kl not in KL_FORMS:
            fail("kl", f"must be one of {KL_FORMS}")
        needs_teacher = self.method not in ONE_MODEL_METHODS
        if needs_teacher and self.teacher is None:
            fail("teacher", "must name the teacher model of this method")
        if not needs_teacher and self.teacher is not None:
            fail("teacher", "must be None: this method trains one model")
        if self.method == "tfkd_self" and self.teacher != self.student:
            fail("teacher", f"must equal student={self.student!r} for tfkd_self")
        if self.method == "dekd" and self.teacher_epochs is None:
            fail("teacher_epochs", "must be set for dekd (the defective teacher)")
        if self.method in ALPHA_METHODS:
            if not 0.0 <= self.alpha <= 1.0:
                fail("alpha", "must be in [0, 1]")
        elif self.alpha != 0.0:
            fail("alpha", "must be 0: this method has no alpha-weighted soft term")
        if self.method in TEMPERATURE_METHODS:
            if self.temperature is None or self.temperature <= 0:
                fail("temperature", "must be a number > 0")
        elif self.temperature is not None:
            fail("temperature", "must be None: this method has no temperature")
        for name in ("tckd_weight", "nckd_weight"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0")
        if self.warmup_epochs < 0:
            fail("warmup_epochs", "must be >= 0")
        if self.warmup_fraction is not None:
            if not 0.0 <= self.warmup_fraction < 1.0:
                fail("warmup_fraction", "must be in [0, 1)")
            if self.warmup_epochs != 0:
                fail("warmup_fraction", "replaces warmup_epochs, which must be 0")
        if self.multiplier < 0:
            fail("multiplier", "must be >= 0")
        for name in ("batch_size", "epochs", "teacher_epochs", "teacher_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                fail(name, "must be >= 1")
        if not 0.0 < self.correct_prob <= 1.0:
            fail("correct_prob", "must be in (0, 1]")
        if not 0.0 <= self.epsilon < 1.0:
            fail("epsilon", "must be in [0, 1)")

    # ------------------------------------------------------------- overrides
    def replace(self, **overrides):
        """A copy with some fields changed; names, types and values are checked.

        The id follows ``method``/``student``/``teacher``; for tfkd_self a new
        ``student`` also becomes the teacher unless ``teacher`` is given, and a
        method without a teacher drops it. ``based_on`` keeps the registry id
        the chain of overrides started from; the published accuracies are
        those of that row, so a variant has none (unless given).

        Raises:
            TypeError: an unknown field, or a value of the wrong type (the
                message names the field and the value).
            ValueError: a value out of range (``alpha=1.5``, ``epochs=0``...).

        >>> get("tfkd_self/resnet18_from_resnet18").replace(student="cnn_tiny").id
        'tfkd_self/cnn_tiny_from_cnn_tiny'
        """
        valid = sorted(_FIELD_TYPES)
        for key, value in overrides.items():
            if key == "id":
                raise TypeError(
                    f"`id` cannot be overridden (got id={value!r}): it is derived "
                    "from method, student and teacher."
                )
            if key not in _FIELD_TYPES:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(
                    f"Unknown experiment field {key!r} (got {key}={value!r}).{hint} "
                    f"Valid fields: {', '.join(valid)}."
                )
            _coerce(key, value)
        if all(_coerce(k, v) == getattr(self, k) for k, v in overrides.items()):
            return self  # nothing changes: still the published row
        method = overrides.get("method", self.method)
        if (
            method == "tfkd_self"
            and "teacher" not in overrides
            and ("student" in overrides or self.method != "tfkd_self")
        ):
            overrides["teacher"] = overrides.get("student", self.student)
        if method in ONE_MODEL_METHODS and "teacher" not in overrides:
            overrides["teacher"] = None
        if method not in ALPHA_METHODS and self.method in ALPHA_METHODS:
            overrides.setdefault("alpha", 0.0)
        if method not in TEMPERATURE_METHODS:
            overrides.setdefault("temperature", None)
        if overrides.get("warmup_fraction") is not None:  # one warm-up at a time
            overrides.setdefault("warmup_epochs", 0)
        overrides.setdefault("based_on", self.based_on or self.id)
        # The published numbers belong to the registry row, not to a variant.
        overrides.setdefault("published_accuracy", None)
        overrides.setdefault("teacher_accuracy", None)
        if "multiplier" in overrides or "kl" in overrides:  # no longer the paper's
            overrides.setdefault("published_multiplier", None)
        return dataclasses.replace(self, **overrides)

    # ---------------------------------------------------------------- teacher
    @property
    def teacher_source(self):
        """``"trained"``, ``"early"``, ``"self"`` or None (see `TEACHER_SOURCE`)."""
        return TEACHER_SOURCE[self.method]

    def teacher_experiment(self):
        """The normal (baseline) run that produces this experiment's teacher.

        None for methods without a teacher model. The teacher is trained on
        the same data set with `teacher_batch_size`, for `epochs` epochs (De-KD
        stops it after `teacher_epochs` of them; for the other methods a set
        `teacher_epochs` is the length of the teacher's run).
        """
        if self.teacher_source is None:
            return None
        epochs = self.epochs
        if self.teacher_source != "early" and self.teacher_epochs is not None:
            epochs = self.teacher_epochs
        return Experiment(
            method="baseline",
            student=self.teacher,
            batch_size=self.teacher_batch_size or self.batch_size,
            dataset=self.dataset,
            epochs=epochs,
            protocol=self.protocol,
            source=f"teacher of {self.id}",
        )

    def kl_weight(self, num_classes):
        """The weight in front of the batch-mean KL once built for K classes.

        ``alpha * m * T^2`` (kd, rekd, dekd, tfkd_self), ``alpha * m``
        (tfkd_reg) or ``m * T^2`` (cskd, whose CE weighs 1), divided by K
        with ``kl="reference"``; 0 without a KL of form ``kl``.

        >>> get("tfkd_reg/resnet18").kl_weight(10)
        0.1
        """
        k = int(num_classes)
        if k < 2:
            raise ValueError(f"`num_classes` must be >= 2, got num_classes={k!r}.")
        if self.method not in KL_FORM_METHODS:
            return 0.0
        t_factor = 1.0 if self.method == "tfkd_reg" else self.temperature**2
        alpha = 1.0 if self.method == "cskd" else self.alpha
        weight = alpha * self.multiplier * t_factor
        return weight / k if self.kl == "reference" else weight

    def kl_note(self, num_classes):
        """One line on the KL term at K = `num_classes`: its form and weight.

        >>> get("tfkd_reg/resnet18").kl_note(10)
        'batch-mean KL, multiplier 1 (paper: 100 with KL/K at K=100); weight 0.1'
        """
        if self.method not in KL_FORM_METHODS:
            return f"{self.method}: no KL term"
        form = (
            "batch-mean KL"
            if self.kl == "batchmean"
            else f"reference KL/K (K={num_classes})"
        )
        text = f"{form}, multiplier {self.multiplier:g}"
        if self.published_multiplier is not None:
            text += f" (paper: {self.published_multiplier:g} with KL/K at K=100)"
        return f"{text}; weight {self.kl_weight(num_classes):.4g}"

    def build(self, student, teacher=None, num_examples=None):
        """The uncompiled `Distiller` of this experiment for a built `student`.

        `teacher` is the trained teacher model for kd/rekd/dekd/tfkd_self/dkd
        (a logits `keras.Model`) and must be None otherwise. K is read from the
        student's output; `multiplier` and `kl` go to the loss as they are.
        `num_examples` is the size of the training set, for PS-KD's store.

        >>> distiller = get("lsr/resnet18").build(student)  # doctest: +SKIP
        """
        from keras_tfkd import recipes

        needs_model = self.teacher_source is not None
        if needs_model and teacher is None:
            raise ValueError(
                f"Experiment {self.id!r} needs a trained teacher model "
                f"({self.teacher!r}), got teacher=None."
            )
        if not needs_model and teacher is not None:
            raise ValueError(
                f"Experiment {self.id!r} takes no teacher model, got "
                f"teacher={teacher!r}."
            )
        if not getattr(student, "built", False):
            raise ValueError(
                "The student must be built (call it once or give an Input)."
            )
        k = int(student.output_shape[-1])
        if self.method == "baseline":
            return recipes.baseline(student)
        if self.method == "lsr":
            return recipes.label_smoothing(student, epsilon=self.epsilon)
        if self.method == "pskd":
            # Split over the devices of a JAX distribution, else replicated.
            return recipes.ps_kd(
                student,
                alpha=self.alpha,
                num_examples=num_examples,
                shard_rows="auto",
            )
        if self.method == "cskd":
            return recipes.cs_kd(
                student,
                temperature=self.temperature,
                multiplier=self.multiplier,
                kl=self.kl,
            )
        if self.method == "ols":
            return recipes.online_label_smoothing(student, alpha=self.alpha)
        if self.method == "dkd":
            return recipes.dkd(
                student,
                teacher,
                tckd_weight=self.tckd_weight,
                nckd_weight=self.nckd_weight,
                temperature=self.temperature,
                **(
                    {"warmup_epochs": self.warmup_epochs}
                    if self.warmup_fraction is None
                    else {"warmup_fraction": self.warmup_fraction}
                ),
            )
        kl = {"alpha": self.alpha, "temperature": self.temperature}
        kl.update(multiplier=self.multiplier, kl=self.kl)
        if self.method == "tfkd_reg":
            return recipes.tfkd_reg(student, k, correct_prob=self.correct_prob, **kl)
        recipe = recipes.tfkd_self if self.method == "tfkd_self" else recipes.kd
        return recipe(student, teacher, **kl)

    def hyperparameters(self):
        """The hyper-parameters that define a run of this method, as a dict."""
        hp = {"batch_size": self.batch_size}
        if self.method in KL_METHODS:
            hp.update(
                alpha=self.alpha,
                temperature=self.temperature,
                multiplier=self.multiplier,
                kl=self.kl,
            )
        if self.method == "tfkd_reg":
            hp["correct_prob"] = self.correct_prob
        if self.method == "lsr":
            hp["epsilon"] = self.epsilon
        if self.method in ("pskd", "ols"):
            hp["alpha"] = self.alpha
        if self.method == "cskd":
            hp.update(
                temperature=self.temperature, multiplier=self.multiplier, kl=self.kl
            )
        if self.method == "dkd":
            hp.update(
                temperature=self.temperature,
                tckd_weight=self.tckd_weight,
                nckd_weight=self.nckd_weight,
                warmup_epochs=self.warmup_epochs,
            )
            if self.warmup_fraction is not None:  # keys of the others unchanged
                hp["warmup_fraction"] = self.warmup_fraction
        if self.teacher_source is not None:
            hp["teacher_batch_size"] = self.teacher_batch_size or self.batch_size
        if self.method == "dekd":
            hp["teacher_epochs"] = self.teacher_epochs
        return hp

    def describe(self):
        """One line: id, hyper-parameters and the published accuracy."""
        parts = [self.id.ljust(44)]
        if self.method in KL_METHODS:
            text = f"alpha={self.alpha:g} T={self.temperature:g} m={self.multiplier:g}"
            if self.kl != "batchmean":
                text += f" kl={self.kl}"
            if self.published_multiplier is not None:
                text += f" (paper m={self.published_multiplier:g})"
            parts.append(text)
        elif self.method == "lsr":
            parts.append(f"eps={self.epsilon:g}")
        elif self.method in ("pskd", "ols"):
            parts.append(f"alpha={self.alpha:g}")
        elif self.method == "cskd":
            parts.append(f"T={self.temperature:g} m={self.multiplier:g}")
        elif self.method == "dkd":
            parts.append(
                f"T={self.temperature:g} tckd={self.tckd_weight:g} "
                f"nckd={self.nckd_weight:g} "
                + (
                    f"warmup={self.warmup_epochs}"
                    if self.warmup_fraction is None
                    else f"warmup_fraction={self.warmup_fraction:g}"
                )
            )
        if self.method == "dekd":
            parts.append(f"teacher_epochs={self.teacher_epochs}")
        parts.append(f"batch={self.batch_size} {self.dataset} {self.epochs}ep")
        if self.published_accuracy is not None:
            parts.append(f"published {self.published_accuracy:.2f}%")
        return "  ".join(parts)


# ------------------------------------------------------------------ registry
#: The package data file that holds every row of the registry.
DATA_FILE = "experiments.json"
_TABLE_KEYS = ("about", "common", "columns", "rows")


class RegistryError(ValueError):
    """A malformed table or row of the registry's data file (`DATA_FILE`)."""


def load_registry(tables=None):
    """id -> `Experiment`, read-only, from the tables of `DATA_FILE`.

    `tables` (default: the packaged ``experiments.json``) maps a table name to
    ``{"about": [lines], "common": {field: value}, "columns": [field, ...],
    "rows": [[value, ...], ...]}``; one table per table of docs/paper.md. Row
    ``r`` is ``Experiment(**common, **dict(zip(columns, r)))``: every value is
    written out in the file, fields left out take the `Experiment` defaults,
    and nothing is derived from another row.

    Raises:
        RegistryError: an unknown key or field, a row of the wrong length, a
            value `Experiment` rejects or a duplicate id; the message names
            the table, the row and the field.
    """
    if tables is None:
        path = importlib.resources.files(__package__).joinpath(DATA_FILE)
        tables = json.loads(path.read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(Experiment) if f.init}
    entries = {}
    for name, table in tables.items():
        unknown = sorted(set(table) - set(_TABLE_KEYS))
        if unknown or "columns" not in table or "rows" not in table:
            raise RegistryError(
                f"{DATA_FILE}, table {name!r}: keys must be {', '.join(_TABLE_KEYS)} "
                f"(columns and rows required), got {', '.join(table)}."
            )
        columns, common = table["columns"], table.get("common", {})
        for i, row in enumerate(table["rows"], 1):
            where = f"{DATA_FILE}, table {name!r}, row {i} {json.dumps(row)}"
            if len(row) != len(columns):
                raise RegistryError(
                    f"{where}: {len(row)} values for {len(columns)} columns "
                    f"({', '.join(columns)})."
                )
            values = {**common, **dict(zip(columns, row))}
            for field in values:
                if field not in fields:
                    raise RegistryError(
                        f"{where}: unknown field {field!r}; valid fields: "
                        f"{', '.join(sorted(fields))}."
                    )
            try:
                exp = Experiment(**values)
            except (TypeError, ValueError) as e:
                raise RegistryError(f"{where}: {e}") from None
            if exp.id in entries:
                raise RegistryError(f"{where}: duplicate experiment id {exp.id!r}.")
            entries[exp.id] = exp
    return types.MappingProxyType(dict(sorted(entries.items())))


#: id -> `Experiment`, read-only.
REGISTRY: Mapping[str, Experiment] = load_registry()


def available(method=None):
    """Sorted ids of the registry, optionally only those of one `method`.

    >>> "tfkd_reg/resnet18" in available()
    True
    >>> available("dekd")[:1]
    ['dekd/mobilenet_v2_from_resnet18']
    """
    if method is not None:
        check_method(method)
    return [k for k, e in REGISTRY.items() if method is None or e.method == method]


def get(experiment_id):
    """The registered `Experiment` with this id.

    Raises:
        UnknownNameError: the id is not registered; the message gives the
            closest ids, the whole list and how to print it.

    >>> get("tfkd_self/resnet18_from_resnet18").multiplier
    0.5
    """
    if isinstance(experiment_id, str) and experiment_id in REGISTRY:
        return REGISTRY[experiment_id]
    ids = available()
    close = difflib.get_close_matches(str(experiment_id), ids, n=3, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise UnknownNameError(
        f"Unknown experiment {experiment_id!r}.{hint} Valid experiments "
        f"(`keras-tfkd list experiments` prints them): {', '.join(ids)}.",
        experiment_id,
        ids,
    )
