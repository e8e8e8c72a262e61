"""Warm-ups in a share of the run's steps, and a plain fit that says why it diverged.

`StepWarmup` (``recipes.dkd(..., warmup_fraction=f)``) ramps DKD's weight
every optimizer step over the first ``f`` of the run, so it shrinks with the
run; `Distiller.fit` stops at a NaN/Inf loss with a message naming the term
and its weights.
"""

import keras
import numpy as np
import pytest

from keras_tfkd import experiments, recipes
from keras_tfkd.callbacks import NaNGuard, NonFiniteLossError
from keras_tfkd.losses import targets_with_labels
from keras_tfkd.study.config import StudyConfig, _study_experiment
from keras_tfkd.weight_schedules import LinearWarmup, StepWarmup


def _dense(k=3, features=6, name=None):
    return keras.Sequential(
        [keras.Input((features,)), keras.layers.Dense(k)], name=name
    )


def _data(n=8, repeats=4, seed=0):
    """`repeats` identical batches of `n` examples (same loss every batch at lr 0)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = rng.integers(0, 3, n).astype("int32")
    return np.tile(x, (repeats, 1)), np.tile(y, repeats)


# ------------------------------------------------------------ the schedule
def test_step_warmup_ramps_over_a_share_of_the_run():
    warm = StepWarmup(0.5)
    assert warm.ramp_steps(8) == 4
    assert [warm.factor(s, 8) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # The same share of a longer run is a longer ramp in steps.
    assert warm.ramp_steps(800) == 400
    assert warm.factor(199, 800) == pytest.approx(0.5)
    # No warm-up, and at least one step of one.
    assert StepWarmup(0.0).factor(0, 100) == 1.0
    assert StepWarmup(0.01).ramp_steps(10) == 1


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), "0.1", True])
def test_step_warmup_refuses_a_bad_fraction_by_name(bad):
    with pytest.raises(ValueError, match="warmup_fraction"):
        StepWarmup(bad)
    with pytest.raises(ValueError, match="warmup_fraction"):
        recipes.dkd(_dense(), _dense(name="t"), warmup_fraction=bad)


def test_step_warmup_round_trips_through_keras_serialisation():
    warm = StepWarmup(0.25, value=2.0)
    back = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(warm)
    )
    assert back == warm and back.per_step


def test_dkd_takes_one_warm_up_and_keeps_warmup_epochs():
    student, teacher = _dense(), _dense(name="t")
    with pytest.raises(ValueError, match="warmup_epochs=2 and warmup_fraction=0.1"):
        recipes.dkd(student, teacher, warmup_epochs=2, warmup_fraction=0.1)
    by_epochs = recipes.dkd(student, teacher, warmup_epochs=2)
    assert by_epochs.weight_schedules["soft_weight"] == LinearWarmup(2)
    default = recipes.dkd(student, teacher)
    assert default.weight_schedules["soft_weight"] == LinearWarmup(20)
    by_steps = recipes.dkd(student, teacher, warmup_fraction=0.1)
    assert by_steps.weight_schedules["soft_weight"] == StepWarmup(0.1)


# ------------------------------------------------------------ in the step
def _per_batch_losses(distiller, x, y, batch_size, epochs):
    """Each batch's total loss, from Keras's running means (reset per epoch)."""
    means = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            means.append([])

        def on_train_batch_end(self, batch, logs=None):
            means[-1].append(float(logs["loss"]))

    distiller.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[Record()],
    )
    losses = []
    for epoch in means:
        for b, mean in enumerate(epoch):
            losses.append((b + 1) * mean - (b * epoch[b - 1] if b else 0.0))
    return np.array(losses)


def test_the_weight_rises_every_step_inside_the_compiled_step():
    keras.utils.set_random_seed(0)
    student, teacher = _dense(), _dense(name="t")
    x, y = _data()
    distiller = recipes.dkd(student, teacher, warmup_fraction=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    losses = _per_batch_losses(distiller, x, y, batch_size=8, epochs=2)
    # lr 0: the weights never change, so hard and soft are the same every
    # batch and the loss is hard + w_s * soft with w_s the ramp of step s.
    logits_s = student.predict(x[:8], verbose=0)
    logits_t = teacher.predict(x[:8], verbose=0)
    targets = targets_with_labels(logits_t, y[:8])
    soft = float(
        keras.ops.convert_to_numpy(distiller.soft_losses[0](targets, logits_s))
    )
    z = logits_s - logits_s.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    hard = float(-log_p[np.arange(8), y[:8]].mean())
    ramp = np.array([StepWarmup(0.5).factor(s, 8) for s in range(8)])
    np.testing.assert_allclose(losses, hard + ramp * soft, rtol=2e-4, atol=2e-5)
    assert ramp[0] == 0.25 and distiller.loss_weighting.steps_taken == 8


def test_a_resumed_fit_goes_on_with_the_same_ramp():
    keras.utils.set_random_seed(0)
    x, y = _data()
    distiller = recipes.dkd(_dense(), _dense(name="t"), warmup_fraction=0.75)
    distiller.compile(optimizer="sgd")
    first = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    # 8 steps, a ramp of 6: 4/6 after the first epoch's 4 steps, then full.
    assert first.history["soft_weight"] == pytest.approx([4 / 6, 1.0])
    again = recipes.dkd(_dense(), _dense(name="t2"), warmup_fraction=0.75)
    again.compile(optimizer="sgd")
    again.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    resumed = again.fit(
        x, y, batch_size=8, initial_epoch=1, epochs=2, verbose=0, shuffle=False
    )
    assert resumed.history["soft_weight"] == pytest.approx([1.0])
    assert again.loss_weighting.steps_taken == 8


def test_the_registry_and_the_study_speak_warmup_fraction():
    row = experiments.get("dkd/mobilenet_v2_from_resnet18")
    assert "warmup_fraction" not in row.hyperparameters()  # keys unchanged
    variant = row.replace(warmup_fraction=0.1)
    assert variant.warmup_epochs == 0 and variant.warmup_fraction == 0.1
    assert variant.hyperparameters()["warmup_fraction"] == 0.1
    assert "warmup_fraction=0.1" in variant.describe()
    with pytest.raises(ValueError, match="warmup_fraction"):
        row.replace(warmup_fraction=0.1, warmup_epochs=3)
    with pytest.raises(ValueError, match="warmup_fraction"):
        row.replace(warmup_fraction=1.5)
    built = variant.build(_dense(), _dense(name="t"))
    assert built.weight_schedules["soft_weight"] == StepWarmup(0.1)
    # The study's DKD: mdistiller's 20 of 240 epochs as a share of the steps.
    exp = _study_experiment(StudyConfig(epochs=1), "dkd")
    assert exp.warmup_fraction == pytest.approx(20 / 240, abs=1e-4)
    assert exp.warmup_epochs == 0


# ------------------------------------------------------------ divergence
def _diverging_dkd():
    keras.utils.set_random_seed(0)
    distiller = recipes.dkd(
        _dense(), _dense(name="t"), nckd_weight=1e38, warmup_fraction=0.0
    )
    distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=1e3))
    return distiller


def test_a_plain_fit_stops_at_a_nan_loss_and_names_the_term_and_weights():
    x, y = _data()
    distiller = _diverging_dkd()
    with pytest.raises(NonFiniteLossError) as info:
        distiller.fit(x, y, batch_size=8, epochs=3, verbose=0)
    message = str(info.value)
    assert "loss became" in message and "at epoch 1, batch" in message
    assert "Non-finite: " in message and "soft_loss" in message
    assert "DecoupledKD" in message and "T^2*beta = 1.6e+39" in message
    assert "lower the learning rate" in message and "warmup_fraction" in message


def test_your_own_guard_stops_without_raising():
    x, y = _data()
    distiller = _diverging_dkd()
    lines = []
    guard = NaNGuard(raise_error=False, log=lines.append)
    history = distiller.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[guard])
    assert guard.tripped and len(history.epoch) == 1
    assert len(lines) == 1 and "T^2*beta" in lines[0]
