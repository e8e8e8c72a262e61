"""Why a Distiller's loss turned NaN/Inf: the term, its weight, its scale.

`explain` is what `keras_tfkd.callbacks.NaNGuard` adds to its message when
the model is a `Distiller` (every `Distiller.fit` has one): which logged
terms are non-finite, each soft term's weight at that step (a warm-up's
ramp included) and the scale inside its loss (``T^2 * beta`` for DKD's
non-target part, ``m * T^2`` for a KL), with what to change. The logs of a
batch are the running means of the epoch, so a term that became NaN stays
NaN in them.
"""

from __future__ import annotations

import math

__all__ = ["explain", "loss_scale"]


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value


def loss_scale(loss):
    """One phrase on the factor inside `loss`, or "" (read from its config).

    >>> from keras_tfkd.losses import DecoupledKD
    >>> loss_scale(DecoupledKD(tckd_weight=1.0, nckd_weight=8.0, temperature=4.0))
    'T^2*beta = 128 (T=4, alpha=1, beta=8)'
    """
    try:
        config = loss.get_config()
    except Exception:  # noqa: BLE001 - a loss without a config: nothing to say
        return ""
    t = _number(config.get("temperature"))
    if "nckd_weight" in config and t is not None:
        a, b = _number(config["tckd_weight"]), _number(config["nckd_weight"])
        return f"T^2*beta = {t * t * b:g} (T={t:g}, alpha={a:g}, beta={b:g})"
    m = _number(config.get("multiplier"))
    if m is None or t is None:
        return ""
    if config.get("temperature_squared", True):
        return f"m*T^2 = {m * t * t:g} (T={t:g}, m={m:g})"
    return f"m = {m:g} (teacher T={_number(config.get('teacher_temperature')):g})"


def explain(distiller, logs):
    """One paragraph: the non-finite terms of `logs` and each soft term's weights."""
    logs = dict(logs or {})
    bad = [
        name
        for name, value in logs.items()
        if name.endswith("loss")
        and name != "loss"
        and _number(value) is not None
        and not math.isfinite(_number(value))
    ]
    weighting = distiller.loss_weighting
    step = weighting.steps_taken
    parts = []
    for term in distiller._plan.terms:
        if not term.losses:
            continue
        try:
            weight = weighting.effective(term.weight_name)
        except AttributeError:  # a weight read through another (convex alpha)
            weight = weighting.get(term.weight_name)
        text = f"{term.name} term (weight {weight:.4g}"
        if term.weight_name in weighting.step_schedules:
            text += f" at step {step}, in its warm-up"
        text += ")"
        scales = [s for s in (loss_scale(loss) for loss in term.losses) if s]
        kinds = ", ".join(type(loss).__name__ for loss in term.losses)
        text += f": {kinds}" + (f", {'; '.join(scales)}" if scales else "")
        parts.append(text)
    hard = logs.get("hard_loss")
    lines = []
    if bad:
        lines.append(f"Non-finite: {', '.join(sorted(bad))}.")
    if hard is not None and "hard_loss" not in bad:
        lines.append(f"hard_loss = {_number(hard):.4g}.")
    if parts:
        lines.append("Weights: " + "; ".join(parts) + ".")
    lines.append(
        "A large weight early in training diverges: lower the learning rate, "
        "lengthen the warm-up (warmup_fraction) or lower the term's weight."
    )
    return " ".join(lines)
