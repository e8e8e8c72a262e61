"""Named studies: `PRESETS`, `preset`, and the settings each one gives `StudyConfig`.

A preset is a set of `StudyConfig` fields chosen and measured together, so a
study can be named instead of spelled out (``keras-tfkd study --preset
fashion_mnist_regime``). Any field given next to it wins over the preset's.

* ``digits`` (the default): every method on scikit-learn's 8x8 digits with a
  6k-parameter student, a few minutes on 2 CPU cores. Its student barely
  overfits (98.9% of its training images against 97.4% of the validation
  split), so it tests the code and the protocol more than the paper's claims.
* ``fashion_mnist_regime``: the regime of the paper's claims on 2 CPU cores,
  an over-parameterised student on a Fashion-MNIST training subset it can
  fit, with the paper's augmentation and a long schedule (see
  docs/reproducing.md for the measurement behind each choice).
* ``fashion_mnist_full``: the same study on all 60,000 training images, for
  a GPU (``benchmarks/gpu_study.py`` runs it with the data passed in).
* ``fortunes_lm``: a language-modelling study on real text, Debian's
  ``fortunes`` package (``apt-get install fortunes``, read offline;
  `keras_tfkd.data.text`): byte-level windows of 64 tokens, split by
  fortune; the causal transformer ``lm_tiny`` (83k parameters) taught by
  ``lm_small`` (463k, trained first), by baseline, LSR, Tf-KD_reg,
  Tf-KD_self, KD (forward KL), reverse KL and generalized JSD, every loss a
  mean over the unmasked tokens; held-out perplexity, next-token accuracy
  and token-level ECE, selected on validation perplexity, paired over 3
  seeds (`keras_tfkd.study.lm`; its hyper-parameters and why:
  `keras_tfkd.study.lm_config`).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

from keras_tfkd import experiments as experiments_lib

__all__ = ["PRESETS", "Preset", "preset"]


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named study: `settings` are `StudyConfig` fields; `summary` says what
    it is and `cost` what it took where it was measured."""

    name: str
    summary: str
    settings: Mapping
    cost: str


def _preset(name, summary, cost, **settings):
    return Preset(name, summary, types.MappingProxyType(settings), cost)


#: The training examples of the Fashion-MNIST regime (before the validation
#: split): few enough that the student can fit them on 2 CPU cores.
REGIME_TRAIN_EXAMPLES = 2000
#: Its test examples: the test accuracy is measured after every epoch of every
#: run, and on all 10,000 that evaluation would cost more than the training.
REGIME_TEST_EXAMPLES = 2000

#: The study of ``fashion_mnist_regime`` (``fashion_mnist_full`` changes only
#: the data, the schedule and the batch).
_REGIME = dict(
    dataset="fashion_mnist",
    limit=(REGIME_TRAIN_EXAMPLES, REGIME_TEST_EXAMPLES),
    epochs=30,
    seeds=(0, 1, 2),
    student="cnn5",
    teacher="cnn_small",
    augment="cifar",
    batch_size=64,
    learning_rate=1e-2,
    dekd_teacher_epochs=3,
)

#: The training windows of ``fortunes_lm`` (of about 37,000), and the
#: validation and test windows (of about 4,700 each) its runs are measured
#: on after every epoch. At 4,800 windows and 2 epochs (150 steps) the
#: students ended at test perplexity 15.5 against the teacher's 9.0, still
#: far from trained; 9,600 windows and 5 epochs (750 steps) took 31 minutes
#: on 2 CPU cores (with the teacher trained for twice the students' epochs
#: and its logits computed once, `keras_tfkd.study.lm`).
FORTUNES_TRAIN_WINDOWS = 9600
FORTUNES_EVAL_WINDOWS = 1000

#: The language-modelling study (`keras_tfkd.study.lm`; its methods are
#: `keras_tfkd.study.lm_config.LM_METHODS`, spelled out here).
_FORTUNES = dict(
    dataset="fortunes",
    limit=(FORTUNES_TRAIN_WINDOWS, FORTUNES_EVAL_WINDOWS),
    epochs=5,
    seeds=(0, 1, 2),
    methods=(
        "baseline",
        "lsr",
        "tfkd_reg",
        "tfkd_self",
        "kd",
        "reverse_kl",
        "generalized_jsd",
    ),
    student="lm_tiny",
    teacher="lm_small",
    batch_size=64,
    learning_rate=3e-3,
)

PRESETS = {
    p.name: p
    for p in (
        _preset(
            "digits",
            "every method on scikit-learn's digits (8x8, 1,347 train / 450 test), "
            "cnn_tiny <- cnn_small, 12 epochs, 5 seeds: the `StudyConfig` defaults",
            "about 5 min on 2 CPU cores (JAX)",
        ),
        _preset(
            "fashion_mnist_regime",
            f"the paper's regime: cnn5 <- cnn_small on the first "
            f"{REGIME_TRAIN_EXAMPLES:,} Fashion-MNIST training and test images, "
            "the paper's augmentation, 30 epochs, 3 seeds",
            "64 min on 2 CPU cores (TensorFlow, measured 2026-12-01)",
            **_REGIME,
        ),
        _preset(
            "fashion_mnist_full",
            "fashion_mnist_regime on all 60,000 training and 10,000 test images, "
            "10 epochs, batch 256, for one GPU (benchmarks/gpu_study.py)",
            "not measured yet: no GPU was lent; its budget is 8 min on one GPU",
            **{
                **_REGIME,
                "limit": None,
                "epochs": 10,
                "batch_size": 256,
                "dekd_teacher_epochs": 1,
            },
        ),
        _preset(
            "fortunes_lm",
            f"language modelling on Debian's fortunes (byte-level, windows of 64 "
            f"tokens): lm_tiny <- lm_small, baseline, LSR, Tf-KD_reg, Tf-KD_self, "
            f"KD, reverse KL and generalized JSD per token, "
            f"{FORTUNES_TRAIN_WINDOWS:,} training windows, 3 seeds",
            "31 min on 2 CPU cores (JAX, measured 2026-12-07)",
            **_FORTUNES,
        ),
    )
}

#: The preset `keras-tfkd study` and `StudyConfig.from_preset()` use.
DEFAULT_PRESET = "digits"


def preset(name):
    """The `Preset` called `name`; `UnknownNameError` lists the known ones.

    >>> preset("fashion_mnist_regime").settings["student"]
    'cnn5'
    """
    if name not in PRESETS:
        names = list(PRESETS)
        raise experiments_lib.UnknownNameError(
            f"Unknown preset {name!r}; valid presets: {', '.join(names)}.",
            name,
            names,
        )
    return PRESETS[name]
