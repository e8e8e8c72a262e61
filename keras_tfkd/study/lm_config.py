"""The methods and hyper-parameters of a language-modelling study.

A `StudyConfig` whose ``dataset`` is a text data set (``fortunes``:
`keras_tfkd.data.text`) is a language-modelling study (`keras_tfkd.study.lm`):
a causal LM teacher is trained first, then the student by each of
`LM_METHODS`, every loss a mean over the unmasked tokens. This module holds
the names and numbers only (no Keras), so `StudyConfig` can check them.

Hyper-parameters (`LM_HYPERPARAMETERS`) and why:

* ``lsr`` and ``tfkd_reg`` take the image study's rows unchanged
  (``lsr/mobilenet_v2``: eps = 0.1; ``tfkd_reg/mobilenet_v2``: alpha = 0.95,
  T = 40, a = 0.99, multiplier 0.01 on the batch-mean KL), per token: the
  paper's label-smoothing and virtual-teacher regularisers as published. At
  V = 258 and T = 40 the virtual teacher is close to uniform (the label gets
  about 0.4% of the mass), so Tf-KD_reg is a label smoothing here too.
* ``kd``, ``tfkd_self``, ``reverse_kl`` and ``generalized_jsd`` share
  alpha = 0.5 and T = 1: ``0.5 CE + 0.5 D(p_T, p_S)`` per token, so they
  differ only in their teacher (the LM teacher, or the student's own
  baseline run for Tf-KD_self) or their divergence (forward KL, reverse KL,
  generalized JSD with TRL's default beta = 0.5). T = 1 is what token-level
  LM distillation uses (GKD, MiniLLM, DistiLLM): a byte-level next-token
  distribution is already soft (the model's own entropy is about 1.5-2
  nats), and the image rows' T = 20 would flatten a 258-way distribution
  into near-uniform, i.e. into another label smoothing.

Search spaces (`LM_SEARCH_SPACES`, for ``tune=N``; `keras_tfkd.study.tune`):
one or two knobs per method, each grid holding the untuned value above. The
baseline's is Adam's learning rate around the preset's 3e-3; LSR's the
smoothing; Tf-KD_reg's the mix and the multiplier, as in the image study;
the teacher-term methods' the mix alpha and, for the KLs, T in (1, 2) (a
byte-level distribution needs little softening, see above), for the
generalized JSD its beta (0.1 is close to forward KL, 0.9 to reverse KL).
"""

from __future__ import annotations

import types

__all__ = [
    "LM_HYPERPARAMETERS",
    "LM_METHODS",
    "LM_METHOD_LABELS",
    "LM_SEARCH_SPACES",
    "LM_TEACHER_METHODS",
    "TEXT_DATASETS",
    "check_lm_method",
    "is_text_dataset",
]

#: The text data sets (`keras_tfkd.data.text.TEXT_DATASETS`, repeated here so
#: this module imports nothing heavy).
TEXT_DATASETS = ("fortunes",)

#: The methods of a language-modelling study, in the order of its tables.
LM_METHODS = (
    "baseline",
    "lsr",
    "tfkd_reg",
    "tfkd_self",
    "kd",
    "reverse_kl",
    "generalized_jsd",
)
#: Those that need the LM teacher (Tf-KD_self's teacher is the student's
#: own baseline run).
LM_TEACHER_METHODS = ("kd", "reverse_kl", "generalized_jsd")

LM_METHOD_LABELS = types.MappingProxyType(
    {
        "baseline": "Baseline",
        "lsr": "LSR",
        "tfkd_reg": "Tf-KD_reg",
        "tfkd_self": "Tf-KD_self",
        "kd": "KD (forward KL)",
        "reverse_kl": "Reverse KL",
        "generalized_jsd": "Generalized JSD",
    }
)

_TEACHER_TERM = types.MappingProxyType({"alpha": 0.5, "temperature": 1.0})

#: method -> its hyper-parameters (see the module docstring for the reasons).
LM_HYPERPARAMETERS = types.MappingProxyType(
    {
        "baseline": types.MappingProxyType({}),
        "lsr": types.MappingProxyType({"epsilon": 0.1}),
        "tfkd_reg": types.MappingProxyType(
            {
                "alpha": 0.95,
                "temperature": 40.0,
                "correct_prob": 0.99,
                "multiplier": 0.01,
            }
        ),
        "tfkd_self": _TEACHER_TERM,
        "kd": _TEACHER_TERM,
        "reverse_kl": _TEACHER_TERM,
        "generalized_jsd": types.MappingProxyType({**_TEACHER_TERM, "beta": 0.5}),
    }
)


_TEACHER_SPACE = types.MappingProxyType(
    {"alpha": (0.2, 0.5, 0.8), "temperature": (1.0, 2.0)}
)

#: method -> {field: values}: each method's search space (see the module
#: docstring); ``learning_rate`` is Adam's initial rate.
LM_SEARCH_SPACES = types.MappingProxyType(
    {
        "baseline": {"learning_rate": (0.001, 0.003, 0.01)},
        "lsr": {"epsilon": (0.02, 0.05, 0.1, 0.2)},
        "tfkd_reg": {"alpha": (0.5, 0.95), "multiplier": (0.01, 0.1, 1.0)},
        "tfkd_self": _TEACHER_SPACE,
        "kd": _TEACHER_SPACE,
        "reverse_kl": _TEACHER_SPACE,
        "generalized_jsd": {"alpha": (0.2, 0.5, 0.8), "beta": (0.1, 0.5, 0.9)},
    }
)


def is_text_dataset(name):
    """Whether a study on data set `name` is a language-modelling study."""
    return isinstance(name, str) and name in TEXT_DATASETS


def check_lm_method(method):
    """`method` if a language-modelling study runs it, else a ValueError
    naming the methods it runs (and why the others are not there)."""
    if method not in LM_METHODS:
        raise ValueError(
            f"A language-modelling study (dataset {TEXT_DATASETS[0]!r}) does not run "
            f"method {method!r}; its methods: {', '.join(LM_METHODS)}. (Re-KD, "
            "De-KD, PS-KD, CS-KD, OLS and DKD are left out of it: see "
            "keras_tfkd.study.lm.)"
        )
    return method
