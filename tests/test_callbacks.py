"""Callbacks with the Distiller on every backend: the package's own and Keras's."""

import contextlib
import io
import json
import math
import os

import keras
import numpy as np
import pytest
import reference as ref
from sklearn.datasets import load_digits

from keras_tfkd import Distiller, recipes, teachers
from keras_tfkd import born_again as born_again_lib
from keras_tfkd import callbacks as cb
from keras_tfkd.losses import SoftTargetKL

BACKEND = keras.backend.backend()
K, BATCH = 10, 64


def _digits():
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    y = data.target.astype("int32")
    # 256 training samples = 4 full batches: no partial batch, so no retrace
    # for a new shape on JAX and a fixed number of steps per epoch.
    return x[:256], y[:256], x[256:384], y[256:384]


X, Y, XV, YV = _digits()
STEPS = len(X) // BATCH


def _net(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(K),
        ],
        name=f"net{seed}",
    )


def _sgd():
    # No momentum: the update depends on the current gradient alone, so a run
    # split across Distillers (or epochs) can be replayed step by step.
    return keras.optimizers.SGD(0.1)


def _fit(distiller, epochs, **kwargs):
    kwargs.setdefault("verbose", 0)
    return distiller.fit(X, Y, batch_size=BATCH, epochs=epochs, shuffle=False, **kwargs)


def _assert_weights_equal(a, b, atol=1e-6):
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(np.asarray(wa), np.asarray(wb), atol=atol, rtol=0)


class _WeightsPerEpoch(keras.callbacks.Callback):
    """Records the student's weights at the end of every epoch."""

    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = [w.copy() for w in self.model.student.get_weights()]


class _WeightsPerStep(keras.callbacks.Callback):
    """Records the student's weights after every step.

    Read through `self.model`: on JAX that syncs the training state into the
    variables first (mid-epoch they hold no value otherwise).
    """

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([w.copy() for w in self.model.student.get_weights()])


class _CountingDistiller(Distiller):
    """Counts runs of the Python body of `compute_loss` (= traces when compiled)."""

    calls = 0

    def compute_loss(self, *args, **kwargs):
        type(self).calls += 1
        return super().compute_loss(*args, **kwargs)


# --------------------------------------------------------------- schedulers


@pytest.mark.gradients
def test_schedules_take_effect_next_epoch_without_retracing():
    """alpha, T scheduled [1, 0.3], [2, 8] == fresh Distillers at those values."""
    teacher = _net(1)
    _CountingDistiller.calls = 0
    counts = []
    counter = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: counts.append(_CountingDistiller.calls)
    )
    student = _net(0)
    distiller = _CountingDistiller(
        student=student, teacher=teacher, soft_loss=SoftTargetKL(5.0), alpha=0.5
    )
    distiller.compile(optimizer=_sgd())
    history = _fit(
        distiller,
        2,
        callbacks=[
            cb.AlphaScheduler(lambda epoch: [1.0, 0.3][epoch]),
            cb.TemperatureScheduler(lambda epoch: [2.0, 8.0][epoch]),
            counter,
        ],
    )
    assert history.history["alpha"] == pytest.approx([1.0, 0.3])
    assert history.history["temperature"] == pytest.approx([2.0, 8.0])
    # Epoch 0 is pure soft loss (alpha = 1): loss == soft_loss.
    assert history.history["loss"][0] == pytest.approx(history.history["soft_loss"][0])

    # The same training as two Distillers built with fixed values, one epoch
    # each, on the same student: the scheduled values were really used.
    replay = _net(0)
    for alpha, temperature in [(1.0, 2.0), (0.3, 8.0)]:
        fixed = Distiller(
            student=replay,
            teacher=teacher,
            soft_loss=SoftTargetKL(temperature),
            alpha=alpha,
        )
        fixed.compile(optimizer=_sgd())
        _fit(fixed, 1)
    _assert_weights_equal(student.get_weights(), replay.get_weights())

    if BACKEND in ("tensorflow", "jax"):
        # Compiled: the loss body runs once, at trace time; the schedule
        # changes at epoch 1 leave the compiled train step untouched.
        assert counts[1] == counts[0]
        assert 1 <= counts[0] < STEPS
    else:
        # torch runs eagerly: the body runs at every step, reading the
        # variables afresh (nothing to retrace).
        assert counts == [STEPS, 2 * STEPS]


@pytest.mark.gradients
def test_alpha_scheduled_to_zero_reproduces_plain_training():
    student, plain = _net(0), _net(0)
    distiller = recipes.kd(student, _net(1), alpha=0.9, temperature=4.0)
    distiller.compile(optimizer=_sgd())
    history = _fit(distiller, 2, callbacks=[cb.AlphaScheduler(lambda epoch: 0.0)])
    assert history.history["alpha"] == [0.0, 0.0]
    assert min(history.history["soft_loss"]) > 0  # the teacher ran; weight 0
    baseline = recipes.baseline(plain)
    baseline.compile(optimizer=_sgd())
    _fit(baseline, 2)
    _assert_weights_equal(student.get_weights(), plain.get_weights())


def test_schedule_with_two_arguments_gets_the_current_value(capsys):
    distiller = recipes.kd(_net(0), _net(1), alpha=0.8, temperature=4.0)
    halve = cb.AlphaScheduler(lambda epoch, alpha: alpha / 2, verbose=1)
    cool = cb.TemperatureScheduler(lambda epoch, t: t - 1.0)
    for callback in (halve, cool):
        callback.set_model(distiller)
        callback.on_train_begin()
        callback.on_epoch_begin(0)
        callback.on_epoch_begin(1)
    assert distiller.alpha == pytest.approx(0.2)
    assert distiller.teacher_temperature == pytest.approx(2.0)
    logs = {}
    halve.on_epoch_end(1, logs)
    cool.on_epoch_end(1, logs)
    assert logs == pytest.approx({"alpha": 0.2, "temperature": 2.0})
    assert "Epoch 2: AlphaScheduler setting alpha to 0.2." in capsys.readouterr().out


@pytest.mark.parametrize(
    "scheduler, bad",
    [
        (cb.AlphaScheduler, 1.5),
        (cb.AlphaScheduler, -0.1),
        (cb.AlphaScheduler, float("nan")),
        (cb.AlphaScheduler, "0.5"),
        (cb.AlphaScheduler, True),
        (cb.TemperatureScheduler, 0.0),
        (cb.TemperatureScheduler, -2.0),
        (cb.TemperatureScheduler, float("inf")),
        (cb.TemperatureScheduler, None),
    ],
)
def test_bad_scheduled_value_names_epoch_and_value(scheduler, bad):
    distiller = recipes.kd(_net(0), _net(1), alpha=0.5, temperature=4.0)
    callback = scheduler(lambda epoch: 0.5 if epoch < 3 else bad)
    callback.set_model(distiller)
    callback.on_epoch_begin(0)
    with pytest.raises(ValueError, match=rf"epoch=3\).*{callback.key}={bad!r}"):
        callback.on_epoch_begin(3)
    # The last valid value is kept.
    attribute = {"temperature": "teacher_temperature"}.get(callback.key, callback.key)
    assert getattr(distiller, attribute) == pytest.approx(0.5)


@pytest.mark.gradients
def test_bad_schedule_stops_fit_before_its_epoch():
    distiller = recipes.kd(_net(0), _net(1), alpha=0.5, temperature=4.0)
    distiller.compile(optimizer=_sgd())
    seen = []
    log = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(e))
    with pytest.raises(ValueError, match=r"epoch=1\).*alpha=2"):
        _fit(distiller, 3, callbacks=[cb.AlphaScheduler(lambda e: [0.5, 2][e]), log])
    assert seen == [0]


def test_schedulers_need_a_distiller_with_the_knob():
    plain = _net(0)
    plain.compile(optimizer="sgd", loss="mse")
    alpha = cb.AlphaScheduler(lambda e: 0.5)
    alpha.set_model(plain)
    with pytest.raises(ValueError, match="AlphaScheduler needs a keras_tfkd.Distiller"):
        alpha.on_train_begin()
    temperature = cb.TemperatureScheduler(lambda e: 2.0)
    temperature.set_model(recipes.baseline(_net(0)))
    with pytest.raises(ValueError, match="soft loss that has a temperature"):
        temperature.on_train_begin()
    with pytest.raises(TypeError, match="schedule"):
        cb.AlphaScheduler(0.5)


def test_temperature_scheduler_drives_the_virtual_teacher_of_tfkd_reg():
    distiller = recipes.tfkd_reg(_net(0), K, alpha=0.5, temperature=20.0)
    callback = cb.TemperatureScheduler(lambda epoch: 40.0)
    callback.set_model(distiller)
    callback.on_epoch_begin(0)
    (loss,) = distiller.soft_losses
    assert float(keras.ops.convert_to_numpy(loss.teacher_temperature)) == 40.0
    assert float(keras.ops.convert_to_numpy(loss.temperature)) == 1.0


# ----------------------------------------------------------------- snapshots


@pytest.mark.gradients
def test_snapshot_keeps_a_frozen_copy_of_the_best_epoch():
    # Monitoring the training loss in "max" mode picks an early epoch, so the
    # kept copy is *not* simply the last student.
    snap = cb.SelfTeacherSnapshot(monitor="loss", mode="max")
    record = _WeightsPerEpoch()
    distiller = recipes.baseline(_net(0))
    distiller.compile(optimizer=_sgd())
    history = _fit(distiller, 3, callbacks=[record, snap])
    losses = history.history["loss"]
    best = int(np.argmax(losses))
    assert best != 2
    assert snap.best_epoch == best and snap.best == pytest.approx(losses[best])

    teacher = snap.teacher
    assert teacher is snap.teacher  # cached
    assert teacher.trainable is False and teacher.trainable_weights == []
    _assert_weights_equal(teacher.get_weights(), record.weights[best], atol=0)
    own = {id(v) for v in distiller.student.weights}
    assert not own & {id(v) for v in teacher.weights}

    # Stage 2 (Tf-KD_self) trains a fresh student; the teacher never moves.
    frozen = [w.copy() for w in teacher.get_weights()]
    stage2 = recipes.tfkd_self(_net(5), teacher, alpha=0.9, temperature=4.0)
    stage2.compile(optimizer=_sgd())
    history2 = _fit(stage2, 1)
    assert history2.history["soft_loss"][0] > 0
    _assert_weights_equal(teacher.get_weights(), frozen, atol=0)


@pytest.mark.gradients
def test_snapshot_without_monitor_keeps_the_last_student_of_a_plain_model():
    model = _net(0)
    model.compile(
        optimizer=_sgd(), loss=keras.losses.SparseCategoricalCrossentropy(True)
    )
    snap = cb.SelfTeacherSnapshot()
    model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[snap])
    assert snap.best_epoch == 1 and snap.best is None
    np.testing.assert_allclose(
        snap.teacher.predict(XV, verbose=0), model.predict(XV, verbose=0), atol=1e-6
    )
    # Training on does not change the snapshot; snapshot() takes a new one.
    before = snap.teacher.predict(XV, verbose=0)
    model.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0)
    np.testing.assert_allclose(snap.teacher.predict(XV, verbose=0), before)
    fresh = snap.snapshot(model)
    assert snap.best_epoch is None  # taken outside fit
    np.testing.assert_allclose(
        fresh.predict(XV, verbose=0), model.predict(XV, verbose=0), atol=1e-6
    )


def test_snapshot_errors_are_clear():
    snap = cb.SelfTeacherSnapshot(monitor="val_acc")
    with pytest.raises(ValueError, match="no snapshot yet"):
        _ = snap.teacher
    snap.set_model(recipes.baseline(_net(0)))
    with pytest.raises(ValueError, match=r"monitor='val_acc'.*val_accuracy"):
        snap.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.5})
    # An epoch without validation (validation_freq > 1) is skipped quietly.
    snap.on_epoch_end(0, {"loss": 1.0})
    # Never logged (no validation data at all): warn, keep the last student.
    distiller = recipes.baseline(_net(3))
    late = cb.SelfTeacherSnapshot(monitor="val_accuracy")
    late.set_model(distiller)
    late.on_train_begin()
    late.on_epoch_end(0, {"loss": 1.0})
    with pytest.warns(UserWarning, match="never logged"):
        late.on_train_end()
    assert late.best_epoch == 0
    _assert_weights_equal(late.teacher.get_weights(), distiller.student.get_weights())
    with pytest.raises(ValueError, match="mode"):
        cb.SelfTeacherSnapshot(monitor="loss", mode="up")
    assert cb.SelfTeacherSnapshot(monitor="val_accuracy").mode == "max"
    assert cb.SelfTeacherSnapshot(monitor="val_loss").mode == "min"


@pytest.mark.gradients
def test_born_again_chains_generations_through_frozen_copies():
    seeds = iter(range(10, 20))
    optimizer = _sgd()
    runs = born_again_lib.born_again(
        lambda: _net(next(seeds)),
        generations=2,
        recipe_kwargs=dict(alpha=0.9, temperature=4.0),
        compile_kwargs=dict(optimizer=optimizer, metrics=["accuracy"]),
        fit_kwargs=dict(x=X, y=Y, batch_size=BATCH, epochs=1, verbose=0),
    )
    assert [g.index for g in runs] == [0, 1, 2]
    assert runs[0].distiller.teacher is None
    assert runs[0].history.history["soft_loss"] == [0.0]
    for previous, current in zip(runs, runs[1:]):
        # Each generation learns from a frozen copy of the previous student.
        assert current.distiller.teacher is previous.teacher
        _assert_weights_equal(
            previous.teacher.get_weights(),
            previous.distiller.student.get_weights(),
            atol=0,
        )
        assert current.history.history["soft_loss"][0] > 0
        assert current.distiller.alpha == pytest.approx(0.9)
    # Every generation got its own optimizer, configured like the one given.
    optimizers = [g.distiller.optimizer for g in runs]
    assert len({id(o) for o in optimizers}) == 3 and optimizer not in optimizers
    assert all(float(o.learning_rate) == pytest.approx(0.1) for o in optimizers)
    assert all(isinstance(g, cb.Generation) for g in runs)
    with pytest.raises(ValueError, match="generations"):
        born_again_lib.born_again(lambda: _net(0), generations=-1)


# ------------------------------------------------------------------ monitor


@pytest.mark.gradients
def test_soft_target_monitor_matches_numpy_at_the_scheduled_temperature():
    teacher = _net(1)
    monitor = cb.SoftTargetMonitor(XV, YV, batch_size=50)
    distiller = recipes.kd(_net(0), teacher, alpha=0.5, temperature=4.0)
    distiller.compile(optimizer=_sgd())
    temps = [1.0, 10.0]
    history = _fit(
        distiller,
        2,
        callbacks=[cb.TemperatureScheduler(lambda e: temps[e]), monitor],
    )
    z_t = teacher.predict(XV, verbose=0).astype("float64")
    rows = np.arange(len(YV))
    for epoch, t in enumerate(temps):
        p = ref.softmax(z_t / t)
        entropy = -(p * np.log(p)).sum(-1).mean()
        assert history.history["soft_target_true_prob"][epoch] == pytest.approx(
            p[rows, YV].mean(), rel=1e-5
        )
        assert history.history["soft_target_entropy"][epoch] == pytest.approx(
            entropy, rel=1e-5
        )
    accuracy = (z_t.argmax(-1) == YV).mean()
    assert history.history["teacher_accuracy"] == pytest.approx([accuracy] * 2)
    # Higher temperature: closer to uniform (the paper's LSR argument).
    assert (
        history.history["soft_target_entropy"][1]
        > history.history["soft_target_entropy"][0]
    )
    assert (
        monitor.history["soft_target_entropy"] == history.history["soft_target_entropy"]
    )
    for key in ("hard_loss", "soft_loss"):
        assert len(history.history[key]) == 2


def test_soft_target_monitor_with_virtual_and_uniform_teachers():
    a, t = 0.99, 20.0
    virtual = recipes.tfkd_reg(_net(0), K, alpha=0.5, temperature=t)
    monitor = cb.SoftTargetMonitor(XV, keras.utils.to_categorical(YV, K))
    monitor.set_model(virtual)
    monitor.on_train_begin()
    values = monitor.compute()
    off = (1 - a) / (K - 1)
    on_prob = math.exp(a / t) / (math.exp(a / t) + (K - 1) * math.exp(off / t))
    assert values["soft_target_true_prob"] == pytest.approx(on_prob, rel=1e-6)
    assert on_prob == pytest.approx(0.1045, abs=1e-4)  # near uniform (docs/paper.md)
    assert "teacher_accuracy" not in values  # built from the labels

    uniform = Distiller(student=_net(0), teacher=teachers.UniformTeacher(K), alpha=0.1)
    monitor = cb.SoftTargetMonitor(XV, YV)
    monitor.set_model(uniform)
    monitor.on_train_begin()
    values = monitor.compute()
    assert values["soft_target_true_prob"] == pytest.approx(1 / K)
    assert values["soft_target_entropy"] == pytest.approx(math.log(K))


def test_soft_target_monitor_with_a_cached_teacher_and_bad_input():
    teacher = _net(1)
    cached = teachers.CachedTeacher.from_model(teacher, XV)
    distiller = Distiller(student=_net(0), teacher=cached, soft_loss=SoftTargetKL(3.0))
    monitor = cb.SoftTargetMonitor(cached.attach(XV), YV)
    monitor.set_model(distiller)
    monitor.on_train_begin()
    p = ref.softmax(teacher.predict(XV, verbose=0) / 3.0)
    assert monitor.compute()["soft_target_true_prob"] == pytest.approx(
        p[np.arange(len(YV)), YV].mean(), rel=1e-5
    )
    plain = cb.SoftTargetMonitor(XV, YV)
    plain.set_model(distiller)
    with pytest.raises(ValueError, match="attach"):
        plain.on_train_begin()
    with pytest.raises(ValueError, match="128 samples but `y` has 3"):
        cb.SoftTargetMonitor(XV, YV[:3])
    with pytest.raises(ValueError, match="integer labels"):
        cb.SoftTargetMonitor(XV, YV.astype("float32"))
    no_teacher = cb.SoftTargetMonitor(XV, YV)
    no_teacher.set_model(recipes.baseline(_net(0)))
    with pytest.raises(ValueError, match="with a teacher"):
        no_teacher.on_train_begin()


# ------------------------------------------------- Keras's own callbacks


@pytest.mark.gradients
def test_checkpoints_of_the_student_and_of_the_whole_distiller(tmp_path):
    record = _WeightsPerEpoch()
    paths = {
        "student_w": tmp_path / "student.weights.h5",
        "student_k": tmp_path / "student.keras",
        "distiller_w": tmp_path / "distiller.weights.h5",
        "distiller_k": tmp_path / "distiller.keras",
    }
    best = dict(monitor="val_accuracy", save_best_only=True)
    checkpoints = [
        cb.StudentCheckpoint(paths["student_w"], save_weights_only=True, **best),
        cb.StudentCheckpoint(paths["student_k"], **best),
        keras.callbacks.ModelCheckpoint(
            paths["distiller_w"], save_weights_only=True, **best
        ),
        keras.callbacks.ModelCheckpoint(paths["distiller_k"], **best),
    ]
    distiller = recipes.kd(_net(0), _net(1), alpha=0.7, temperature=3.0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.3), metrics=["accuracy"])
    history = _fit(
        distiller, 3, validation_data=(XV, YV), callbacks=[record, *checkpoints]
    )
    accuracy = history.history["val_accuracy"]
    best_epoch = int(np.argmax(accuracy))  # first maximum, as Keras keeps it
    expected = record.weights[best_epoch]

    student = _net(7)
    student.load_weights(paths["student_w"])
    _assert_weights_equal(student.get_weights(), expected, atol=0)
    loaded = keras.saving.load_model(paths["student_k"])
    assert not isinstance(loaded, Distiller)
    _assert_weights_equal(loaded.get_weights(), expected, atol=0)

    whole = keras.saving.load_model(paths["distiller_k"])
    assert isinstance(whole, Distiller)
    assert whole.alpha == pytest.approx(0.7) and whole.teacher_temperature == 3.0
    _assert_weights_equal(whole.student.get_weights(), expected, atol=0)
    _assert_weights_equal(whole.teacher.get_weights(), distiller.teacher.get_weights())
    evaluated = whole.evaluate(XV, YV, verbose=0, return_dict=True)
    assert evaluated["accuracy"] == pytest.approx(accuracy[best_epoch])

    again = recipes.kd(_net(8), _net(9), alpha=0.1, temperature=9.0)
    again.load_weights(paths["distiller_w"])
    _assert_weights_equal(again.student.get_weights(), expected, atol=0)
    assert again.alpha == pytest.approx(0.7) and again.teacher_temperature == 3.0


@pytest.mark.gradients
def test_student_checkpoint_mid_epoch_saves_the_current_weights(tmp_path):
    """save_freq in batches: on JAX the state must be synced before saving."""
    record = _WeightsPerStep()
    path = tmp_path / "mid.weights.h5"
    distiller = recipes.kd(_net(0), _net(1), alpha=0.5, temperature=4.0)
    distiller.compile(optimizer=_sgd())
    # 2 epochs x 4 steps, saving every 3 steps: last save after step 6.
    _fit(
        distiller,
        2,
        callbacks=[
            record,
            cb.StudentCheckpoint(path, save_freq=3, save_weights_only=True),
        ],
    )
    student = _net(7)
    student.load_weights(path)
    _assert_weights_equal(student.get_weights(), record.weights[5], atol=0)
    assert not np.allclose(record.weights[5][0], record.weights[-1][0])


@pytest.mark.gradients
def test_early_stopping_restores_the_best_student():
    record = _WeightsPerEpoch()
    distiller = recipes.kd(_net(0), _net(1), alpha=0.5, temperature=4.0)
    distiller.compile(optimizer=_sgd())
    teacher_before = distiller.teacher.get_weights()
    # "max" on a falling val_loss: epoch 0 stays best, patience 1 stops at 1.
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", mode="max", patience=1, restore_best_weights=True
    )
    history = _fit(distiller, 5, validation_data=(XV, YV), callbacks=[record, stop])
    assert history.epoch == [0, 1]
    assert history.history["val_loss"][1] < history.history["val_loss"][0]
    _assert_weights_equal(distiller.student.get_weights(), record.weights[0], atol=0)
    _assert_weights_equal(distiller.teacher.get_weights(), teacher_before, atol=0)
    evaluated = distiller.evaluate(XV, YV, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(history.history["val_loss"][0], rel=1e-5)


class _Preempt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise RuntimeError("preempted")


@pytest.mark.gradients
def test_backup_and_restore_resumes_without_losing_a_finished_epoch(tmp_path):
    def build():
        distiller = recipes.kd(_net(0), _net(1), alpha=0.5, temperature=4.0)
        # Momentum: the optimizer state must be restored too.
        distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        return distiller

    def schedule():
        return cb.AlphaScheduler(lambda epoch: [0.2, 0.4, 0.6][epoch])

    straight = build()
    _fit(straight, 3, callbacks=[schedule()])

    backup = str(tmp_path / "backup")
    first = build()
    with pytest.raises(RuntimeError, match="preempted"):
        _fit(
            first,
            3,
            callbacks=[
                schedule(),
                keras.callbacks.BackupAndRestore(backup),
                _Preempt(1, 2),
            ],
        )
    with open(os.path.join(backup, "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 1  # epoch 0 finished, epoch 1 was cut

    resumed = build()  # a new process would rebuild everything
    history = _fit(
        resumed, 3, callbacks=[schedule(), keras.callbacks.BackupAndRestore(backup)]
    )
    assert history.epoch == [1, 2]
    assert history.history["alpha"] == pytest.approx([0.4, 0.6])
    _assert_weights_equal(
        resumed.student.get_weights(), straight.student.get_weights(), atol=1e-6
    )
    assert not os.path.exists(backup)  # deleted after a finished run


def _event_tags(folder):
    import tensorflow as tf

    tags = set()
    for root, _, files in os.walk(folder):
        for name in files:
            if "tfevents" in name:
                for record in tf.data.TFRecordDataset(os.path.join(root, name)):
                    event = tf.compat.v1.Event.FromString(record.numpy())
                    tags.update(v.tag for v in event.summary.value)
    return tags


@pytest.mark.gradients
def test_loggers_and_learning_rate_callbacks(tmp_path):
    """CSVLogger, TensorBoard, ProgbarLogger and LearningRateScheduler together."""
    csv_path = tmp_path / "log.csv"
    loggers = [keras.callbacks.CSVLogger(str(csv_path))]
    tensorboard = True
    try:
        import tensorboard  # noqa: F401
    except ImportError:  # TensorBoard writing needs the `tensorboard` package
        tensorboard = False
    if tensorboard:
        loggers.append(keras.callbacks.TensorBoard(str(tmp_path / "tb")))
    distiller = recipes.kd(_net(0), _net(1), alpha=0.5, temperature=4.0)
    distiller.compile(optimizer=_sgd())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = _fit(
            distiller,
            2,
            verbose=1,
            callbacks=[
                cb.AlphaScheduler(lambda e: [0.25, 0.75][e]),
                cb.TemperatureScheduler(lambda e: [2.0, 6.0][e]),
                keras.callbacks.LearningRateScheduler(lambda e: 0.1 * 0.5**e),
                *loggers,
            ],
        )
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05])
    assert float(distiller.optimizer.learning_rate) == pytest.approx(0.05)

    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    for column in ("alpha", "temperature", "hard_loss", "soft_loss", "loss"):
        assert column in header
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [float(r["alpha"]) for r in rows] == pytest.approx([0.25, 0.75])
    assert [float(r["soft_loss"]) for r in rows] == pytest.approx(
        history.history["soft_loss"]
    )

    text = out.getvalue()
    assert text.count(f"{STEPS}/{STEPS}") >= 2
    for key in ("hard_loss", "soft_loss", "alpha: 0.7500", "temperature: 6.0000"):
        assert key in text

    if not tensorboard:
        pytest.skip("`tensorboard` is not installed: no event files to check")
    tags = _event_tags(tmp_path / "tb")
    for tag in ("epoch_loss", "epoch_soft_loss", "epoch_hard_loss", "epoch_alpha"):
        assert tag in tags


@pytest.mark.gradients
def test_reduce_lr_on_plateau_on_a_distiller_term():
    distiller = recipes.kd(_net(0), _net(1), alpha=0.5, temperature=4.0)
    distiller.compile(optimizer=_sgd())
    # No decrease of soft_loss counts as an improvement of 1e3: plateau each epoch.
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="soft_loss", mode="min", patience=0, min_delta=1e3, factor=0.5
    )
    history = _fit(distiller, 3, callbacks=[plateau])
    # Epoch 0 sets the reference; epochs 1 and 2 halve the rate at their end
    # (the log shows the rate each epoch trained with).
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05])
    assert float(distiller.optimizer.learning_rate) == pytest.approx(0.025)


@pytest.mark.gradients
def test_terminate_on_nan_stops_at_the_first_bad_batch():
    student = _net(0)
    weights = student.get_weights()
    weights[-1][:] = np.nan  # NaN logits on every backend
    student.set_weights(weights)
    distiller = recipes.kd(student, _net(1), alpha=0.5, temperature=4.0)
    distiller.compile(optimizer=_sgd())
    batches = []
    count = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: batches.append(b)
    )
    history = _fit(distiller, 3, callbacks=[count, keras.callbacks.TerminateOnNaN()])
    assert batches == [0] and history.epoch == [0]
    assert math.isnan(history.history["loss"][0])
    assert distiller.stop_training
