"""Loss weights that change with the epoch, applied by the `Distiller` itself.

A `Distiller`'s ``alpha``, ``hard_weight`` and ``soft_weight`` each take a
number or a `WeightSchedule`: an object whose ``value(epoch, epochs)`` is the
weight of a (0-based) epoch of a `fit` of ``epochs`` epochs. The Distiller
assigns it to the weight's variable at every epoch begin (no callback to add,
no retracing), so the schedules of the methods that need one live in the
model and survive saving and `BackupAndRestore` resume (`fit`'s
``initial_epoch`` is the epoch resumed at, ``epochs`` the same total):

* `LinearRamp` -- PS-KD's ``a_e = alpha_T * (e + 1) / E``;
* `LinearWarmup` -- DKD's ``min(e / warmup, 1)`` ramp of the KD term, in
  whole epochs;
* `StepWarmup` -- the same ramp over a fraction of the run's optimizer steps,
  rising every step (``warmup_fraction``): it shrinks with the run, where a
  warm-up of one whole epoch is the full weight from the first step of a
  one-epoch run.

The value in use is written to the epoch logs (``history.history["alpha"]``,
``["soft_weight"]``, ...).
"""

from __future__ import annotations

import math

import keras

__all__ = [
    "WeightSchedule",
    "LinearRamp",
    "LinearWarmup",
    "StepWarmup",
    "check_weight",
]


def _check_number(name, value, *, upper=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {name}={value!r}.")
    if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
        bound = f"in [0, {upper:g}]" if upper is not None else "a finite number >= 0"
        raise ValueError(f"`{name}` must be {bound}, got {name}={value!r}.")
    return float(value)


def check_weight(name, value, *, upper=None):
    """`value` as a float weight (``>= 0``, ``<= upper``) or a `WeightSchedule`."""
    if isinstance(value, WeightSchedule):
        return value
    try:
        return _check_number(name, value, upper=upper)
    except TypeError:
        raise TypeError(
            f"`{name}` must be a number or a keras_tfkd.weight_schedules."
            f"WeightSchedule, got {name}={value!r}."
        ) from None


class WeightSchedule:
    """Base class: ``value(epoch, epochs)``, the weight of 0-based `epoch` of `epochs`.

    Subclasses implement `value` and `get_config`; register them with
    ``keras.saving.register_keras_serializable`` so a saved `Distiller` keeps
    its schedule.
    """

    #: True for a schedule that also changes within an epoch (`StepWarmup`):
    #: the Distiller then counts its optimizer steps in a variable.
    per_step = False

    def value(self, epoch, epochs):  # pragma: no cover - abstract
        raise NotImplementedError

    def initial_value(self):
        """The weight before any `fit` (the first epoch of a one-epoch run)."""
        return self.value(0, 1)

    def get_config(self):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package="keras_tfkd")
class LinearRamp(WeightSchedule):
    """``final * (epoch + 1) / epochs``: PS-KD's ``a_e = alpha_T (e + 1) / E``.

    The ramp reaches `final` in the last epoch of the `fit` (``E`` is `fit`'s
    ``epochs``, so a resumed run keeps the same ramp).

    Example:

    >>> ramp = LinearRamp(0.8)
    >>> [round(ramp.value(e, 4), 2) for e in range(4)]
    [0.2, 0.4, 0.6, 0.8]
    """

    def __init__(self, final):
        self.final = _check_number("final", final, upper=1.0)

    def value(self, epoch, epochs):
        return self.final * (epoch + 1) / max(int(epochs), 1)

    def get_config(self):
        return {"final": self.final}


@keras.saving.register_keras_serializable(package="keras_tfkd")
class LinearWarmup(WeightSchedule):
    """``value * min(epoch / warmup_epochs, 1)`` (``value`` from the start if 0).

    DKD's warm-up of its KD term: mdistiller counts epochs from 1, so its
    ``min(epoch / 20, 1)`` is ``min((e + 1) / 20, 1)`` for keras's 0-based
    ``e`` -- set ``first_epoch=1`` (the default) for that; ``first_epoch=0``
    starts at weight 0.

    Example:

    >>> warm = LinearWarmup(4)
    >>> [warm.value(e, 10) for e in range(6)]
    [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    """

    def __init__(self, warmup_epochs, value=1.0, first_epoch=1):
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, int)
            or warmup_epochs < 0
        ):
            raise ValueError(
                "`warmup_epochs` must be an integer >= 0, got "
                f"warmup_epochs={warmup_epochs!r}."
            )
        if first_epoch not in (0, 1):
            raise ValueError(
                f"`first_epoch` must be 0 or 1, got first_epoch={first_epoch!r}."
            )
        self.warmup_epochs = warmup_epochs
        self.weight = _check_number("value", value)
        self.first_epoch = first_epoch

    def value(self, epoch, epochs):
        if self.warmup_epochs == 0:
            return self.weight
        return self.weight * min((epoch + self.first_epoch) / self.warmup_epochs, 1.0)

    def get_config(self):
        return {
            "warmup_epochs": self.warmup_epochs,
            "value": self.weight,
            "first_epoch": self.first_epoch,
        }


def check_warmup_fraction(value):
    """`value` as a float in [0, 1), else a ValueError naming `warmup_fraction`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value < 1
    ):
        raise ValueError(
            "`warmup_fraction` must be a number in [0, 1) (the share of the run's "
            "optimizer steps the warm-up lasts; 0: none), got "
            f"warmup_fraction={value!r}."
        )
    return float(value)


@keras.saving.register_keras_serializable(package="keras_tfkd")
class StepWarmup(WeightSchedule):
    """``value * min((s + 1) / W, 1)`` at optimizer step ``s`` (0-based) of the run.

    ``W = max(1, round(warmup_fraction * S))`` steps, ``S`` the run's steps
    (epochs x steps per epoch, read from `fit`; the epochs are the
    Distiller's `schedule_epochs` when set). The weight rises every step, so
    the warm-up is the same share of a one-epoch run as of a 240-epoch one
    (mdistiller's DKD: 20 of 240 epochs, ``warmup_fraction = 1/12``).
    ``warmup_fraction=0`` is the full weight from the first step. The step
    count lives in a variable of the Distiller, saved and restored with it.

    Example:

    >>> warm = StepWarmup(0.25)
    >>> [warm.factor(s, run_steps=8) for s in range(4)]
    [0.5, 1.0, 1.0, 1.0]
    """

    per_step = True

    def __init__(self, warmup_fraction, value=1.0):
        self.warmup_fraction = check_warmup_fraction(warmup_fraction)
        self.weight = _check_number("value", value)

    def value(self, epoch, epochs):
        return self.weight  # the per-step ramp is applied on top, in the step

    def ramp_steps(self, run_steps):
        """``W``: the steps of the warm-up in a run of `run_steps` steps (0: none)."""
        if self.warmup_fraction == 0:
            return 0
        return max(1, round(self.warmup_fraction * int(run_steps)))

    def factor(self, step, run_steps):
        """The ramp ``min((step + 1) / W, 1)`` at 0-based `step` (host side)."""
        width = self.ramp_steps(run_steps)
        return 1.0 if width == 0 else min((int(step) + 1) / width, 1.0)

    def get_config(self):
        return {"warmup_fraction": self.warmup_fraction, "value": self.weight}
