"""Each method's search space: its one or two key hyper-parameters, as a grid.

`SEARCH_SPACES` maps every method of `keras_tfkd.experiments.METHODS` to
``{field: (values, ...)}``: the fields are those of an `Experiment` (the
registry's rows, ``keras-tfkd run --<field>``), in the units the user sees
there, and ``learning_rate`` (Adam's initial rate, the baseline's knob: it
has no hyper-parameter of its own, so tuning gives it the same budget over
the optimizer). ``keras_tfkd.compare(..., tune=N)`` and ``keras-tfkd study
--tune N`` (`keras_tfkd.study.tune`) try N points of a method's grid: the
method's untuned setting first, then points drawn without replacement.

=========  =====================================  ==============================
method     fields                                 why these
=========  =====================================  ==============================
baseline   learning_rate                          its one knob (Adam, cosine)
lsr        epsilon                                the smoothing
kd, rekd,  alpha, temperature                     the mix and the softness (the
dekd,                                             KL weight is alpha m T^2)
tfkd_self
tfkd_reg   alpha, multiplier                      the weight of the virtual
                                                  teacher's KL (alpha m)
pskd       alpha                                  the last epoch's soft weight
cskd       temperature, multiplier                T and lambda
ols        alpha                                  the soft labels' weight
dkd        nckd_weight, warmup_fraction           beta, and the warm-up as a
                                                  share of the run's steps
=========  =====================================  ==============================

Every grid holds the value the study uses untuned (the registry row's,
moved to the study: DKD's warm-up of 20 of 240 epochs is 0.0833), except the
baseline's learning rate, which is the study's own. Each value is one the
method's recipe accepts (tests/test_tune.py builds every one).

>>> SEARCH_SPACES["dkd"]["nckd_weight"]
(1.0, 2.0, 4.0, 8.0)
>>> grid("ols")
[{'alpha': 0.25}, {'alpha': 0.5}, {'alpha': 0.75}]
"""

from __future__ import annotations

import itertools
import types

__all__ = ["SEARCH_SPACES", "TRAIN_FIELDS", "grid", "space"]

#: The fields of a search space that are the optimizer's, not the method's.
TRAIN_FIELDS = ("learning_rate",)

_KL_FAMILY = {"alpha": (0.3, 0.6, 0.9, 0.95), "temperature": (4.0, 10.0, 20.0)}

#: method -> {field: values}; written once, read by the tuner and the tests.
SEARCH_SPACES = types.MappingProxyType(
    {
        "baseline": {"learning_rate": (0.001, 0.003, 0.01, 0.03)},
        "lsr": {"epsilon": (0.05, 0.1, 0.2, 0.3)},
        "kd": dict(_KL_FAMILY),
        "rekd": dict(_KL_FAMILY),
        "dekd": dict(_KL_FAMILY),
        "tfkd_self": dict(_KL_FAMILY),
        "tfkd_reg": {"alpha": (0.1, 0.5, 0.95), "multiplier": (0.01, 0.1, 1.0)},
        "pskd": {"alpha": (0.3, 0.5, 0.8)},
        "cskd": {"temperature": (1.0, 4.0), "multiplier": (0.5, 1.0, 2.0)},
        "ols": {"alpha": (0.25, 0.5, 0.75)},
        "dkd": {
            "nckd_weight": (1.0, 2.0, 4.0, 8.0),
            "warmup_fraction": (0.0, 0.0833, 0.25),
        },
    }
)


def space(method, spaces=None):
    """``{field: values}`` of `method` in `spaces` (`SEARCH_SPACES` when None;
    the language-modelling study's are
    `keras_tfkd.study.lm_config.LM_SEARCH_SPACES`); a KeyError names the
    methods that have one."""
    spaces = SEARCH_SPACES if spaces is None else spaces
    if method not in spaces:
        raise KeyError(
            f"No search space for method {method!r}; methods with one: "
            f"{', '.join(spaces)}."
        )
    return dict(spaces[method])


def grid(method, spaces=None):
    """Every point of `method`'s space, as dicts, in the grid's order."""
    fields = space(method, spaces)
    names = list(fields)
    return [dict(zip(names, combo)) for combo in itertools.product(*fields.values())]
