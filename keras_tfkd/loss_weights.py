"""The loss weights of a `Distiller`: variables, schedules and names.

A Distiller minimises one weighted sum, whatever form it was built with::

    loss = hard_weight * hard + sum_i weight_i * term_i

`LossWeights` holds the weights behind it. Each is read from a non-trainable
float32 variable (so a new value takes effect at the next step without
retracing) as ``offset + scale * variable``:

* built with ``terms=[...]``: ``hard_weight`` and ``<name>_weight`` per term,
  one variable each;
* built with ``hard_weight=``/``soft_weight=``: the same, the one term named
  ``soft``;
* built with ``alpha=``: one variable ``alpha``, read as the soft term's
  weight ``alpha`` and the hard weight ``1 - alpha`` (the convex mix).

The public names (`names`) are the variables' names: what
``Distiller.get_weight``/``set_weight``, `WeightScheduler` and the epoch logs
use. A weight may be a `keras_tfkd.weight_schedules.WeightSchedule`, set at
every epoch begin from ``value(epoch, epochs)``; a per-step one
(`keras_tfkd.weight_schedules.StepWarmup`) is also multiplied, inside the
step, by its ramp at the step count kept in a variable (``warmup_step``,
advanced by every training step; ``run_steps``, the run's length, is set at
every epoch begin from `fit`'s steps).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_tfkd import weight_schedules

__all__ = ["LossWeights", "check_alpha", "check_weight", "weight_property"]

#: The convex form's variable, and the two weights it stands for.
ALPHA = "alpha"
HARD = "hard_weight"


def check_alpha(alpha):
    """`alpha` as a float in [0, 1], or a `WeightSchedule` of it."""
    if isinstance(alpha, weight_schedules.WeightSchedule):
        return alpha
    if (
        not isinstance(alpha, (int, float, np.floating))
        or isinstance(alpha, bool)
        or not math.isfinite(alpha)
        or not 0.0 <= alpha <= 1.0
    ):
        raise ValueError(f"`alpha` must be a number in [0, 1], got alpha={alpha!r}.")
    return float(alpha)


def check_weight(name, value):
    """`alpha` in [0, 1], any other weight >= 0 (or a schedule of either)."""
    if name == ALPHA:
        return check_alpha(value)
    return weight_schedules.check_weight(name, value)


class LossWeights:
    """The hard weight and one weight per soft term, behind variables.

    Args:
        add_weight: the owning model's ``add_weight`` (the variables are the
            model's, saved and restored with it).
        values: ``{name: number or WeightSchedule}`` of the variables to make,
            in order; checked with `check_weight`.
        hard: ``(name, scale, offset)``: the hard weight is
            ``offset + scale * variable[name]``.
        terms: one ``(name, scale, offset)`` per soft term, in order.
    """

    def __init__(self, add_weight, values, hard, terms):
        self.schedules = {}
        self._by_name = {}
        for name, value in values.items():
            value = check_weight(name, value)
            if isinstance(value, weight_schedules.WeightSchedule):
                self.schedules[name] = value
                value = value.initial_value()
            self._by_name[name] = add_weight(
                shape=(),
                initializer=keras.initializers.Constant(float(value)),
                trainable=False,
                dtype="float32",
                name=name,
                autocast=False,
            )
        self._hard = hard
        self._terms = list(terms)
        #: The per-step schedules (`StepWarmup`) and the two variables they
        #: read in the step: the steps taken and the run's length in steps.
        self.step_schedules = {
            n: s for n, s in self.schedules.items() if getattr(s, "per_step", False)
        }
        self._step = self._run_steps = None
        if self.step_schedules:
            self._step, self._run_steps = (
                add_weight(
                    shape=(),
                    initializer="zeros",
                    trainable=False,
                    dtype="float32",
                    name=name,
                    autocast=False,
                )
                for name in ("warmup_step", "run_steps")
            )
        # The weights read through a variable that is not their own (the
        # convex form's 1 - alpha and alpha): readable, not assignable.
        self._derived = {
            derived: (name, scale, offset)
            for derived, (name, scale, offset) in self._readings()
            if derived not in self._by_name
        }

    @classmethod
    def convex(cls, add_weight, alpha, term_name):
        """``(1 - alpha) * hard + alpha * term``: one variable, ``alpha``."""
        return cls(
            add_weight,
            {ALPHA: alpha},
            hard=(ALPHA, -1.0, 1.0),
            terms=[(ALPHA, 1.0, 0.0, term_name)],
        )

    @classmethod
    def free(cls, add_weight, hard_weight, term_weights):
        """``hard_weight * hard + sum_i w_i * term_i``: a variable each.

        `term_weights` is ``[(weight name, value), ...]``, one per term.
        """
        values = {HARD: hard_weight, **dict(term_weights)}
        return cls(
            add_weight,
            values,
            hard=(HARD, 1.0, 0.0),
            terms=[(name, 1.0, 0.0, name) for name, _ in term_weights],
        )

    def _readings(self):
        """``(weight name, (variable name, scale, offset))`` of every weight."""
        yield HARD, self._hard
        for name, scale, offset, weight_name in self._terms:
            yield weight_name, (name, scale, offset)

    # ------------------------------------------------------------ names
    @property
    def names(self):
        """The public names: the variables', in order."""
        return tuple(self._by_name)

    @property
    def is_convex(self):
        """Whether the weights are ``1 - alpha`` and ``alpha`` of one variable."""
        return ALPHA in self._by_name

    def variable(self, name):
        """The variable of the public weight `name`."""
        self._check_name(name)
        return self._by_name[name]

    def _check_name(self, name):
        if name in self._by_name:
            return
        if name == ALPHA:
            raise AttributeError(
                "This Distiller weighs its terms with "
                f"{' and '.join(f'`{n}`' for n in self.names)} (given at "
                "construction), so it has no `alpha`; read or assign those instead."
            )
        if name in self._derived:
            raise AttributeError(
                f"This Distiller weighs its terms with `alpha`, so `{name}` is "
                "1 - alpha or alpha: assign `alpha`, or build the Distiller with "
                "hard_weight=/soft_weight= for weights that need not sum to 1."
            )
        raise AttributeError(
            f"This Distiller has no weight {name!r}; its weights are "
            f"{list(self.names)}."
        )

    # ------------------------------------------------------------ values
    def get(self, name):
        """The current value of weight `name` (public or derived), a float."""
        if name in self._derived:
            source, scale, offset = self._derived[name]
            return offset + scale * float(self._by_name[source].numpy())
        return float(self.variable(name).numpy())

    def set(self, name, value):
        """Assign a number to the public weight `name`; its schedule stops."""
        self._check_name(name)
        value = check_weight(name, value)
        if isinstance(value, weight_schedules.WeightSchedule):
            raise TypeError(
                f"A schedule is given at construction (Distiller({name}=...) or "
                f"Term(weight=...)); assign a number to `{name}`."
            )
        self.schedules.pop(name, None)
        self._by_name[name].assign(value)

    def tensors(self):
        """The hard weight and each term's weight, as tensors of this step."""

        def read(name, scale, offset):
            value = ops.convert_to_tensor(self._by_name[name])
            schedule = self.step_schedules.get(name)
            if schedule is not None and schedule.warmup_fraction > 0:
                run = ops.convert_to_tensor(self._run_steps)
                width = ops.maximum(ops.round(schedule.warmup_fraction * run), 1.0)
                step = ops.convert_to_tensor(self._step)
                value = value * ops.minimum((step + 1.0) / width, 1.0)
            return offset + scale * value

        hard = read(*self._hard)
        return hard, [
            read(name, scale, offset) for name, scale, offset, _ in self._terms
        ]

    # ------------------------------------------------------------ schedules
    def apply_schedules(self, epoch, epochs):
        """Set every scheduled weight to its value at `epoch` of `epochs`."""
        for name, schedule in self.schedules.items():
            self._by_name[name].assign(
                check_weight(name, schedule.value(epoch, epochs))
            )

    def set_run_steps(self, run_steps):
        """The run's length in optimizer steps, for the per-step schedules."""
        if self._run_steps is not None:
            self._run_steps.assign(float(run_steps))

    def advance(self):
        """Count one training step (called in the step, after the weights are read)."""
        if self._step is not None:
            self._step.assign_add(1.0)

    @property
    def steps_taken(self):
        """The training steps counted so far (0 without a per-step schedule)."""
        return 0 if self._step is None else int(float(self._step.numpy()))

    def effective(self, name):
        """The weight `name` at the last step, its per-step ramp included."""
        value = self.get(name)
        schedule = self.step_schedules.get(name)
        if schedule is None:
            return value
        run = int(float(self._run_steps.numpy()))
        return value * schedule.factor(max(self.steps_taken - 1, 0), run)

    def log(self, logs):
        """Write the scheduled weights' values into an epoch's `logs`."""
        for name in self.schedules:
            logs[name] = self.effective(name)

    def config(self):
        """``{name: value or serialised schedule}`` of the public weights."""
        return {
            name: (
                keras.saving.serialize_keras_object(self.schedules[name])
                if name in self.schedules
                else self.get(name)
            )
            for name in self.names
        }


def weight_property(name, doc):
    """A model property reading and assigning its ``loss_weighting``' `name`."""

    def get(self):
        return self.loss_weighting.get(name)

    def set_(self, value):
        self.loss_weighting.set(name, value)

    return property(get, set_, doc=doc)
