"""The reference optimiser and learning-rate schedule of the Tf-KD paper.

The authors' PyTorch code trains CIFAR models with ``torch.optim.SGD`` (momentum
0.9, *coupled* L2 weight decay 5e-4, ``lr = 0.1 * batch_size / 128``), a linear
warm-up over the first epoch stepped per batch, and a multi-step decay (x0.2 at
epochs 60, 120 and 160 of 200). The 5-layer CNN uses Adam at 1e-3. ImageNet runs
use 90 epochs, ``lr = 0.1 * batch_size / 256``, weight decay 1e-4 and x0.1 at
epochs 30, 60 and 80.

This module provides those pieces as backend-agnostic Keras objects:

- :class:`ReferenceSchedule`: warm-up + multi-step decay, computed with
  ``keras.ops`` so it runs in-graph on TensorFlow, JAX and PyTorch.
- :class:`CoupledSGD`: SGD whose weight decay enters the gradient (and hence the
  momentum buffer) exactly as in ``torch.optim.SGD``.
- :func:`reference_lr`, :func:`reference_optimizer`, :func:`imagenet_optimizer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_tfkd import _keras_compat

__all__ = [
    "CoupledSGD",
    "ReferenceSchedule",
    "imagenet_optimizer",
    "reference_lr",
    "reference_optimizer",
    "scale_milestones",
]

#: Model names (lower case, ``-``/``_`` removed) trained with Adam in the paper.
ADAM_MODELS = frozenset({"cnn5"})


def scale_milestones(
    milestones: Sequence[int], epochs: int, reference_epochs: int
) -> tuple[int, ...]:
    """Scale decay milestones (in epochs) to a run of ``epochs`` epochs.

    Each milestone ``m`` becomes ``round(m * epochs / reference_epochs)`` with
    Python's ``round`` (half to even). When ``epochs == reference_epochs`` the
    milestones are returned unchanged.

    Example:
        >>> scale_milestones((60, 120, 160), epochs=20, reference_epochs=200)
        (6, 12, 16)
    """
    if epochs == reference_epochs:
        return tuple(int(m) for m in milestones)
    return tuple(int(round(m * epochs / reference_epochs)) for m in milestones)


def reference_lr(batch_size: int) -> float:
    """The reference CIFAR learning rate ``0.1 * batch_size / 128``.

    Example:
        >>> reference_lr(64)
        0.05
    """
    return 0.1 * batch_size / 128


@keras.saving.register_keras_serializable(package="keras_tfkd")
class ReferenceSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then multi-step decay, stepped per batch.

    With ``W = round(warmup_epochs * steps_per_epoch)`` warm-up steps and
    milestone epochs ``M`` (scaled, see below), the learning rate used for the
    update at (0-based) optimiser step ``s`` is::

        lr(s) = base_lr * gamma ** #{m in M : s >= m * steps_per_epoch}
                        * ((s + 1) / W   if s < W   else 1)

    so the first batch uses ``base_lr / W``, the last warm-up batch (``s = W-1``)
    uses the full ``base_lr``, and epoch ``m`` (0-based) is the first epoch at
    the decayed rate, as ``torch.optim.lr_scheduler.MultiStepLR`` stepped once
    per epoch. Epochs are counted from the start of training, the warm-up epoch
    included. (The reference ``WarmUpLR`` uses ``base_lr * s / W``, i.e. a zero
    learning rate for the very first batch; ``(s + 1) / W`` avoids that wasted
    step and otherwise follows the same line.)

    When ``epochs != reference_epochs`` the milestones are scaled
    proportionally: ``round(m * epochs / reference_epochs)`` (Python ``round``),
    e.g. (6, 12, 16) for a 20-epoch run. Repeated milestones decay repeatedly.
    The value is computed with ``keras.ops`` so it works in-graph on every
    backend.

    Args:
        base_lr: peak learning rate (after warm-up, before any decay).
        steps_per_epoch: optimiser steps (batches) per epoch.
        epochs: length of the run, in epochs (only used to scale milestones).
        warmup_epochs: warm-up length in epochs (0 disables warm-up).
        milestones: decay epochs for a ``reference_epochs``-long run.
        gamma: multiplicative decay at each milestone.
        reference_epochs: run length that ``milestones`` refer to.
        name: optional name.

    Example:
        >>> schedule = ReferenceSchedule(0.1, steps_per_epoch=391, epochs=200)
        >>> optimizer = CoupledSGD(schedule, momentum=0.9, weight_decay=5e-4)
        >>> round(float(schedule(0)), 6)  # first warm-up step: 0.1 / 391
        0.000256
    """

    def __init__(
        self,
        base_lr: float,
        steps_per_epoch: int,
        epochs: int = 200,
        warmup_epochs: float = 1,
        milestones: Sequence[int] = (60, 120, 160),
        gamma: float = 0.2,
        reference_epochs: int = 200,
        name: str = "ReferenceSchedule",
    ):
        super().__init__()
        if int(steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if int(epochs) < 1 or int(reference_epochs) < 1:
            raise ValueError("epochs and reference_epochs must be >= 1")
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.warmup_epochs = warmup_epochs
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.reference_epochs = int(reference_epochs)
        self.name = name

    @property
    def warmup_steps(self) -> int:
        """Number of warm-up steps, ``round(warmup_epochs * steps_per_epoch)``."""
        return int(round(self.warmup_epochs * self.steps_per_epoch))

    @property
    def milestone_epochs(self) -> tuple[int, ...]:
        """The milestones actually used, scaled to ``epochs``."""
        return scale_milestones(self.milestones, self.epochs, self.reference_epochs)

    @property
    def milestone_steps(self) -> tuple[int, ...]:
        """The first step at each decayed rate."""
        return tuple(m * self.steps_per_epoch for m in self.milestone_epochs)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.full((), self.base_lr, dtype="float32")
        for boundary in self.milestone_steps:
            lr = ops.where(
                ops.greater_equal(step, float(boundary)), lr * self.gamma, lr
            )
        warmup = self.warmup_steps
        if warmup > 0:
            ramp = ops.minimum((step + 1.0) / float(warmup), 1.0)
            lr = lr * ramp
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "reference_epochs": self.reference_epochs,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_tfkd")
class CoupledSGD(_keras_compat.NoDecoupledWeightDecay, keras.optimizers.SGD):
    """SGD with momentum and *coupled* L2 weight decay, as ``torch.optim.SGD``.

    For each variable ``w`` with gradient ``g`` and momentum buffer ``b``
    (initialised to zero), one step does::

        g = g + weight_decay * w          # coupled L2: part of the gradient
        b = momentum * b + g              # torch: dampening 0
        w = w - lr * b                    # (nesterov: w = w - lr * (g + momentum * b))

    which is ``torch.optim.SGD(params, lr, momentum, weight_decay=wd)``
    step for step, including when ``lr`` changes over time: the buffer holds
    raw gradients and the current ``lr`` scales the whole buffer. With
    ``momentum=0`` it is ``w = w - lr * (g + wd * w)``.

    How this differs from Keras: ``keras.optimizers.SGD(weight_decay=wd)`` is
    *decoupled* -- before the step it shrinks ``w <- w - lr * wd * w`` directly,
    so the decay never enters the momentum buffer and is not amplified by
    ``1 / (1 - momentum)`` (about 10x at momentum 0.9). Keras's SGD also folds
    ``lr`` into its velocity (``v = m * v - lr * g``), which matches torch only
    while ``lr`` is constant. With coupled decay, weight decay 5e-4 behaves as in
    the reference PyTorch code; with the decoupled one it is much weaker.

    Variables excluded with :meth:`exclude_from_weight_decay` get no decay term,
    as with the Keras optimisers. ``weight_decay`` here is the coupled factor;
    Keras's own decoupled decay is never applied.

    Args:
        learning_rate: float or ``LearningRateSchedule``.
        momentum: momentum factor in ``[0, 1]``.
        weight_decay: coupled L2 factor (``None`` or 0: no decay).
        nesterov: use Nesterov momentum as ``torch.optim.SGD(nesterov=True)``.
        **kwargs: other ``keras.optimizers.Optimizer`` arguments (``clipnorm``,
            ``name``, ...).

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> model.compile(
        ...     optimizer=CoupledSGD(0.1, momentum=0.9, weight_decay=5e-4),
        ...     loss="mse",
        ... )
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.9,
        weight_decay: float | None = 5e-4,
        nesterov: bool = False,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            momentum=float(momentum),
            nesterov=nesterov,
            weight_decay=weight_decay,
            **kwargs,
        )

    def update_step(self, gradient, variable, learning_rate):
        """One torch-style SGD step on ``variable``."""
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.weight_decay and _keras_compat.uses_weight_decay(self, variable):
            wd = ops.cast(self.weight_decay, variable.dtype)
            gradient = ops.add(gradient, ops.multiply(wd, variable))
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(learning_rate, gradient))
            return
        buf = self.momentums[_keras_compat.variable_index(self, variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        new_buf = ops.add(ops.multiply(momentum, buf), gradient)
        self.assign(buf, new_buf)
        if self.nesterov:
            direction = ops.add(gradient, ops.multiply(momentum, new_buf))
        else:
            direction = new_buf
        self.assign_sub(variable, ops.multiply(learning_rate, direction))


def _normalise_model_name(model_name: str) -> str:
    return model_name.lower().replace("-", "").replace("_", "")


def reference_optimizer(
    model_name: str,
    batch_size: int,
    steps_per_epoch: int,
    epochs: int = 200,
) -> keras.optimizers.Optimizer:
    """The optimiser the reference code uses for ``model_name`` on CIFAR.

    ``CoupledSGD(momentum=0.9, weight_decay=5e-4)`` driven by
    ``ReferenceSchedule(reference_lr(batch_size), steps_per_epoch, epochs)``
    (one warm-up epoch, x0.2 at epochs 60/120/160 of 200, scaled for shorter
    runs); the 5-layer CNN (``"cnn5"``) uses ``keras.optimizers.Adam(1e-3)``
    instead, with no schedule.

    Example:
        >>> opt = reference_optimizer("resnet18", batch_size=128, steps_per_epoch=391)
        >>> type(opt).__name__, opt.weight_decay
        ('CoupledSGD', 0.0005)
    """
    if _normalise_model_name(model_name) in ADAM_MODELS:
        return keras.optimizers.Adam(1e-3)
    schedule = ReferenceSchedule(
        reference_lr(batch_size), steps_per_epoch=steps_per_epoch, epochs=epochs
    )
    return CoupledSGD(schedule, momentum=0.9, weight_decay=5e-4)


def imagenet_optimizer(
    batch_size: int, steps_per_epoch: int, epochs: int = 90
) -> CoupledSGD:
    """The reference ImageNet optimiser.

    ``CoupledSGD(momentum=0.9, weight_decay=1e-4)`` with learning rate
    ``0.1 * batch_size / 256``, decayed x0.1 at epochs 30, 60 and 80 of 90
    (scaled for shorter runs) and no warm-up (the paper gives none for ImageNet).

    Example:
        >>> opt = imagenet_optimizer(batch_size=512, steps_per_epoch=2503)
        >>> opt.weight_decay
        0.0001
    """
    schedule = ReferenceSchedule(
        0.1 * batch_size / 256,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        warmup_epochs=0,
        milestones=(30, 60, 80),
        gamma=0.1,
        reference_epochs=90,
    )
    return CoupledSGD(schedule, momentum=0.9, weight_decay=1e-4)
