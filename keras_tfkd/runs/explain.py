"""`explain_accuracy`: why a finished run's accuracy looks the way it does."""

from __future__ import annotations

import math

from keras_tfkd import experiments as experiments_lib

__all__ = ["explain_accuracy"]


def _finite(value):  # a run that diverged in its first epoch has NaN here
    return value if value is not None and math.isfinite(value) else None


def _divergence(record):
    stop = record.get("stopped_at") or {}
    epochs = record.get("epochs")
    if stop.get("epoch") is not None:
        detail = [
            f"{name} {stop[name]}"
            for name in ("batch", "loss")
            if stop.get(name) is not None
        ]
        what = f"diverged at epoch {stop['epoch']}"
        what += f" ({', '.join(detail)})" if detail else ""
    else:
        done = record.get("epochs_completed")
        what = "diverged (a non-finite loss)"
        if done is not None and epochs is not None:
            what += f" after {done} of {epochs} epochs"
    return (
        f"{what}; the accuracies are those of the epochs before: lower the "
        "learning rate or the soft term's weight (alpha, multiplier)"
    )


def _soft_weight_reason(record, alpha, schedule):
    hp = record.get("hyperparameters") or {}
    epochs = record.get("epochs")
    labels = round(100 * (1 - alpha), 2)
    why = f"alpha={alpha:g} leaves {labels:g}% of the loss weight on the labels"
    # kl_weight: the weight in front of the batch-mean KL (0.1.0: kl_translation)
    soft = record.get(
        "kl_weight", (record.get("kl_translation") or {}).get("soft_weight")
    )
    if hp.get("optimizer", "reference") == "reference" and soft is not None:
        total = (1 - alpha) + soft
        if 0 < total < 0.5:
            why += (
                f" (the soft term weighs {soft:.3g}), so SGD's steps are about "
                f"{1 / total:.0f}x smaller than a baseline's"
            )
    if schedule and epochs and epochs < schedule:
        why += (
            f"; the published setting expects the {schedule}-epoch schedule: "
            f"try --epochs {schedule} or --alpha 0.5"
        )
    else:
        why += ": try --alpha 0.5"
    return why


def _near_chance_reasons(record, limit):
    hp = record.get("hyperparameters") or {}
    epochs = record.get("epochs")
    try:  # the schedule of the registry row the run started from
        schedule = experiments_lib.get(record.get("experiment") or "").epochs
    except (KeyError, ValueError, TypeError):
        schedule = None
    reasons = []
    if record.get("role") == "teacher":
        run = hp.get("schedule_epochs")
        run = f" of its {run}-epoch run" if run else ""
        reasons.append(
            f"the De-KD teacher, stopped after {epochs} epoch(s){run} on purpose "
            "(a poorly trained teacher is the point)"
        )
    alpha = hp.get("alpha")
    if (
        record.get("method") in experiments_lib.KL_METHODS
        and isinstance(alpha, (int, float))
        and alpha >= 0.9
    ):
        reasons.append(_soft_weight_reason(record, alpha, schedule))
    teacher_acc = record.get("teacher_test_accuracy")
    if teacher_acc is not None and teacher_acc <= limit:
        reasons.append(f"its teacher is itself near chance ({100 * teacher_acc:.1f}%)")
    if not reasons:
        if schedule and epochs and epochs < schedule:
            reasons.append(
                f"only {epochs} epoch(s) of the published {schedule}: train longer "
                f"(--epochs {schedule})"
            )
        else:
            reasons.append("the model did not learn: check the learning rate and data")
    return reasons


def explain_accuracy(record):
    """Why a finished run's accuracy looks the way it does: lines to print.

    Reads a result record (`train`'s return value, a line of ``results.json``)
    and returns ``[]`` for a run that learned, or lines such as
    ``"diverged at epoch 3 (batch 7, loss nan); ..."`` and
    ``"near chance (1/K = 10.0%): alpha=0.95 leaves 5% of the loss weight on
    the labels; ..."``. A run is *near chance* when its best test accuracy is
    at most ``min(1.5 / K, 1 / K + 0.1)``; one that got further and then fell
    back there has *collapsed*. The reasons looked for: a soft term that
    leaves little weight on the labels (``alpha >= 0.9``) in a run shorter
    than its published schedule, a teacher that is itself near chance, a
    De-KD teacher stopped early on purpose, or simply too few epochs.

    >>> explain_accuracy({"num_classes": 10, "best_test_accuracy": 0.098,
    ...                   "test_accuracy": 0.098, "epochs": 2,
    ...                   "method": "tfkd_reg", "experiment": "tfkd_reg/mobilenet_v2",
    ...                   "hyperparameters": {"alpha": 0.95}})[0][:34]
    'near chance (1/K = 10.0%): alpha=0'
    """
    lines = [_divergence(record)] if record.get("diverged") else []
    k = record.get("num_classes")
    best = _finite(record.get("best_test_accuracy"))
    final = _finite(record.get("test_accuracy"))
    acc = best if best is not None else final
    if not k or k < 2 or acc is None:
        return lines
    chance = 1.0 / k
    limit = min(1.5 * chance, chance + 0.1)
    head = f"near chance (1/K = {100 * chance:.1f}%)"
    if acc > limit:
        if final is not None and final <= limit:
            at = record.get("best_epoch")
            at = f" at epoch {at}" if at else ""
            lines.append(
                f"ended {head} at {100 * final:.1f}% after a best of "
                f"{100 * best:.1f}%{at}: training collapsed; lower the learning "
                "rate or the soft term's weight"
            )
        return lines
    lines.append(f"{head}: " + "; ".join(_near_chance_reasons(record, limit)))
    return lines
