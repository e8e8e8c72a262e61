"""`TrainConfig`: how a run trains, beyond its experiment's hyper-parameters."""

from __future__ import annotations

import dataclasses
import math

__all__ = ["OPTIMIZERS", "TrainConfig"]

OPTIMIZERS = ("reference", "adam")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How runs are trained, beyond the experiment's own hyper-parameters.

    Args:
        optimizer: ``"reference"`` (the paper's SGD and schedule: CIFAR or
            ImageNet protocol of the experiment) or ``"adam"`` (Adam at
            `learning_rate`, see `lr_schedule`).
        learning_rate: Adam's learning rate (default 1e-3); must be None with
            the reference optimiser, whose rate follows the batch size.
        lr_schedule: Adam only: ``"constant"`` or ``"cosine"`` (decay to 0
            over the run's epochs, `keras.optimizers.schedules.CosineDecay`).
        augment: passed to `data.pipeline` for the train split (None: the data
            set's reference augmentation).
        eval_batch_size: batch size of the per-epoch test evaluation.
        drop_remainder: drop the last, smaller training batch of each epoch
            (the data is reshuffled every epoch, so no example is left out for
            good). The reference keeps it; on JAX a second batch shape means a
            second compilation of the train step, which dominates short runs.
        progress_every: print a line every this many epochs (0: never).

    >>> TrainConfig(optimizer="adam", lr_schedule="cosine").hyperparameters()
    {'optimizer': 'adam', 'learning_rate': 0.001, 'lr_schedule': 'cosine'}
    """

    optimizer: str = "reference"
    learning_rate: float | None = None
    lr_schedule: str = "constant"
    augment: bool | str | None = None
    eval_batch_size: int = 512
    drop_remainder: bool = False
    progress_every: int = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"`optimizer` must be one of {OPTIMIZERS}, got "
                f"optimizer={self.optimizer!r}."
            )
        if self.learning_rate is not None:
            if self.optimizer != "adam":
                raise ValueError(
                    "`learning_rate` is only for optimizer='adam' (the reference "
                    "optimiser uses 0.1 * batch_size / 128), got "
                    f"learning_rate={self.learning_rate!r}."
                )
            if not (
                isinstance(self.learning_rate, (int, float))
                and math.isfinite(self.learning_rate)
                and self.learning_rate > 0
            ):
                raise ValueError(
                    "`learning_rate` must be a number > 0, got "
                    f"learning_rate={self.learning_rate!r}."
                )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                "`lr_schedule` must be 'constant' or 'cosine', got "
                f"lr_schedule={self.lr_schedule!r}."
            )
        if self.lr_schedule != "constant" and self.optimizer != "adam":
            raise ValueError(
                "`lr_schedule` is only for optimizer='adam' (the reference "
                "optimiser has its own schedule), got "
                f"lr_schedule={self.lr_schedule!r}."
            )

    def hyperparameters(self):
        """The settings that change a run's result (they enter its key)."""
        hp = {"optimizer": self.optimizer}
        if self.optimizer == "adam":
            hp["learning_rate"] = self.learning_rate or 1e-3
            if self.lr_schedule != "constant":
                hp["lr_schedule"] = self.lr_schedule
        if self.augment is not None:
            hp["augment"] = self.augment
        if self.drop_remainder:
            hp["drop_remainder"] = True
        return hp
