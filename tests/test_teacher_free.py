"""The framework of the teacher-free family: free loss weights, weight schedules,
label-aware losses, online teachers with per-example state, and PS-KD end to end.

PS-KD is checked against a NumPy simulation of the official algorithm (a
linear student, plain SGD, no shuffling): the trained weights and the
prediction store must agree to 1e-5 on every backend, and a run resumed by
`BackupAndRestore` must equal an uninterrupted one.
"""

import keras
import numpy as np
import pytest

from keras_tfkd import Distiller, data, losses, recipes, weight_schedules
from keras_tfkd.callbacks import AlphaScheduler
from keras_tfkd.online import PastPredictions, store_bytes

N, D, K, BATCH, LR = 12, 5, 3, 4, 0.5


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    y = rng.integers(0, K, n).astype("int32")
    return x, y


def _kernel(seed=1):
    return (np.random.default_rng(seed).normal(size=(D, K)) * 0.3).astype("float32")


def _linear_student(kernel):
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K, use_bias=False)])
    model.layers[0].kernel.assign(kernel)
    return model


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _simulate_pskd(x, y, kernel, epochs, alpha_t):
    """The official PS-KD loop in float64: returns (kernel, store)."""
    w = kernel.astype("float64")
    store = np.zeros((len(x), K))
    one_hot = np.eye(K)[y]
    for epoch in range(epochs):
        a = alpha_t * (epoch + 1) / epochs
        for start in range(0, len(x), BATCH):
            i = np.arange(start, min(start + BATCH, len(x)))
            if epoch == 0:
                store[i] = one_hot[i]
            target = (1 - a) * one_hot[i] + a * store[i]
            p = _softmax(x[i] @ w)
            grad = x[i].T @ (p - target) / len(i)
            store[i] = p  # the same forward pass, before the update
            w = w - LR * grad
    return w, store


def _pskd(kernel, **kwargs):
    distiller = recipes.ps_kd(_linear_student(kernel), alpha=0.8, **kwargs)
    distiller.compile(optimizer=keras.optimizers.SGD(LR))
    return distiller


# ------------------------------------------------------------------ weights
def test_free_weights_give_the_weighted_sum_not_a_convex_mix():
    x, y = _data()
    z_t = np.random.default_rng(3).normal(size=(N, K)).astype("float32")
    teacher = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    distiller = Distiller(
        student=_linear_student(_kernel()),
        teacher=teacher,
        soft_loss=losses.SoftTargetKL(2.0),
        hard_weight=1.0,
        soft_weight=2.5,
    )
    z_s = distiller.student(x)
    z_t = teacher(x)
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, z_s)
    soft = losses.SoftTargetKL(2.0)(z_t, z_s)
    total = distiller.compute_loss(x=x, y=y, y_pred=z_s, training=False)
    np.testing.assert_allclose(float(total), float(hard) + 2.5 * float(soft), rtol=1e-5)
    assert distiller.weighting == "weights"
    assert (distiller.hard_weight, distiller.soft_weight) == (1.0, 2.5)
    distiller.soft_weight = 4.0  # a variable: no retracing
    total = distiller.compute_loss(x=x, y=y, y_pred=z_s, training=False)
    np.testing.assert_allclose(float(total), float(hard) + 4 * float(soft), rtol=1e-5)


def test_alpha_weighting_still_reads_as_hard_and_soft_weights():
    distiller = Distiller(student=_linear_student(_kernel()), alpha=0.3)
    assert distiller.weighting == "alpha"
    assert distiller.soft_weight == pytest.approx(0.3)
    assert distiller.hard_weight == pytest.approx(0.7)
    with pytest.raises(AttributeError, match="assign `alpha`"):
        distiller.soft_weight = 2.0


def test_bad_weights_name_the_argument_and_value():
    student = _linear_student(_kernel())
    with pytest.raises(ValueError, match="not both.*alpha=0.5"):
        Distiller(student=student, alpha=0.5, soft_weight=2.0)
    with pytest.raises(ValueError, match="soft_weight=-1"):
        Distiller(student=student, soft_weight=-1)
    with pytest.raises(TypeError, match="hard_weight='1'"):
        Distiller(student=student, hard_weight="1")
    free = Distiller(student=student, hard_weight=1.0, soft_weight=1.0)
    with pytest.raises(AttributeError, match="no `alpha`"):
        free.alpha = 0.5
    assert free.alpha_variable is None


def test_alpha_scheduler_on_free_weights_says_what_to_do():
    x, y = _data()
    free = Distiller(
        student=_linear_student(_kernel()), hard_weight=1.0, soft_weight=1.0
    )
    free.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="AlphaScheduler"):
        free.fit(x, y, epochs=1, verbose=0, callbacks=[AlphaScheduler(lambda e: 0.5)])


# ---------------------------------------------------------------- schedules
def test_weight_schedules_values_and_errors():
    ramp = weight_schedules.LinearRamp(0.8)
    assert [round(ramp.value(e, 4), 6) for e in range(4)] == [0.2, 0.4, 0.6, 0.8]
    warm = weight_schedules.LinearWarmup(20)
    assert warm.value(0, 240) == pytest.approx(1 / 20)  # mdistiller's epoch 1
    assert warm.value(19, 240) == 1.0 and warm.value(100, 240) == 1.0
    assert weight_schedules.LinearWarmup(0).value(0, 5) == 1.0
    assert weight_schedules.LinearWarmup(4, first_epoch=0).value(0, 5) == 0.0
    with pytest.raises(ValueError, match="final=1.5"):
        weight_schedules.LinearRamp(1.5)
    with pytest.raises(ValueError, match="warmup_epochs=-1"):
        weight_schedules.LinearWarmup(-1)


def test_a_scheduled_weight_is_set_every_epoch_and_logged():
    x, y = _data()
    distiller = _pskd(_kernel())
    history = distiller.fit(x, y, epochs=4, batch_size=BATCH, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["alpha"], [0.2, 0.4, 0.6, 0.8], 1e-6)
    # One run trained by one-epoch fits (as keras_tfkd.runs does) keeps its ramp.
    split = _pskd(_kernel())
    split.schedule_epochs = 4
    logged = []
    for epoch in range(4):
        h = split.fit(
            x,
            y,
            initial_epoch=epoch,
            epochs=epoch + 1,
            batch_size=BATCH,
            shuffle=False,
            verbose=0,
        )
        logged += h.history["alpha"]
    np.testing.assert_allclose(logged, [0.2, 0.4, 0.6, 0.8], 1e-6)
    np.testing.assert_allclose(
        split.student.get_weights()[0], distiller.student.get_weights()[0], atol=1e-6
    )


# ------------------------------------------------------- label-aware losses
class _LabelProbe(losses.LabelAwareLoss):
    """Soft term = mean of (label + 1) * 0 + the teacher logit at the label."""

    def compute(self, targets, labels, y_pred):
        picked = keras.ops.take_along_axis(targets, labels[:, None], axis=-1)
        return keras.ops.squeeze(picked, -1) + 0.0 * keras.ops.sum(y_pred, -1)


def test_a_label_aware_loss_receives_the_labels_through_the_distiller():
    x, y = _data()
    teacher = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    distiller = Distiller(
        student=_linear_student(_kernel()),
        teacher=teacher,
        soft_loss=_LabelProbe(),
        hard_weight=0.0,
        soft_weight=1.0,
    )
    z_s = distiller.student(x)
    z_t = np.asarray(teacher(x))
    total = distiller.compute_loss(x=x, y=y, y_pred=z_s, training=False)
    np.testing.assert_allclose(float(total), z_t[np.arange(N), y].mean(), rtol=1e-5)
    with pytest.raises(TypeError, match="targets_with_labels"):
        _LabelProbe()(z_t, z_s)


def test_a_probability_teacher_refuses_a_logits_loss():
    with pytest.raises(ValueError, match='targets="probabilities"'):
        Distiller(
            student=_linear_student(_kernel()),
            teacher=PastPredictions(N, K),
            soft_loss=losses.SoftTargetKL(),
        )
    with pytest.raises(ValueError, match="teacher_temperature"):
        losses.SoftTargetCrossEntropy(targets="probabilities", teacher_temperature=2.0)
    with pytest.raises(ValueError, match="targets='logit'"):
        losses.SoftTargetCrossEntropy(targets="logit")


def test_soft_cross_entropy_on_probabilities_matches_numpy():
    rng = np.random.default_rng(5)
    for k in (2, 10, 100):
        p = _softmax(rng.normal(size=(6, k)))
        p[0] = 0.0  # no target yet: no loss
        z = rng.normal(size=(6, k)).astype("float32")
        w = rng.uniform(0, 2, 6)
        w[1] = 0.0
        log_q = np.log(_softmax(z.astype("float64")))
        expected = (-(p * log_q).sum(-1) * w).sum() / 6
        got = losses.SoftTargetCrossEntropy(targets="probabilities")(
            p.astype("float32"), z, sample_weight=w
        )
        np.testing.assert_allclose(float(got), expected, rtol=1e-5)


# -------------------------------------------------------------------- PS-KD
def test_pskd_matches_a_numpy_simulation_of_the_official_loop():
    x, y = _data()
    kernel = _kernel()
    distiller = _pskd(kernel)
    distiller.fit(x, y, epochs=3, batch_size=BATCH, shuffle=False, verbose=0)
    w, store = _simulate_pskd(x, y, kernel, 3, 0.8)
    np.testing.assert_allclose(distiller.student.get_weights()[0], w, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(distiller.teacher.predictions), store, atol=1e-5
    )
    assert distiller.teacher.num_examples == N  # sized by fit from the arrays


def test_pskd_resumed_by_backup_and_restore_equals_an_uninterrupted_run(tmp_path):
    x, y = _data()
    kernel = _kernel()
    whole = _pskd(kernel)
    whole.fit(x, y, epochs=4, batch_size=BATCH, shuffle=False, verbose=0)

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    backup = str(tmp_path / "backup")
    first = _pskd(kernel)
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(
            x,
            y,
            epochs=4,
            batch_size=BATCH,
            shuffle=False,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(backup), Crash()],
        )
    resumed = _pskd(kernel)
    history = resumed.fit(
        x,
        y,
        epochs=4,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup)],
    )
    assert len(history.history["loss"]) == 2  # epochs 2 and 3 only
    np.testing.assert_allclose(history.history["alpha"], [0.6, 0.8], 1e-6)
    np.testing.assert_allclose(
        resumed.student.get_weights()[0], whole.student.get_weights()[0], atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(resumed.teacher.predictions),
        np.asarray(whole.teacher.predictions),
        atol=1e-6,
    )


def test_pskd_saves_and_loads_with_its_store_and_ramp(tmp_path):
    x, y = _data()
    distiller = _pskd(_kernel())
    distiller.fit(x, y, epochs=2, batch_size=BATCH, shuffle=False, verbose=0)
    path = str(tmp_path / "pskd.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.weight_schedules == {"alpha": weight_schedules.LinearRamp(0.8)}
    np.testing.assert_allclose(
        np.asarray(loaded.teacher.predictions),
        np.asarray(distiller.teacher.predictions),
    )


#: The unit roundoff of the compact store dtypes: a probability ``p`` is
#: stored as ``p * (1 + d)`` with ``|d| <= u`` (float16 below 2**-14, its
#: subnormals, within 2**-25 absolute).
ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


@pytest.mark.parametrize("store_dtype", ["float16", "bfloat16"])
def test_a_compact_store_changes_the_loss_little(store_dtype):
    """Rows stored in half precision drift from sum 1; read back, they are
    renormalised in float32: the targets sum to 1 within float32 rounding and
    equal the float32 store's within the rounding of one element (``2u``
    relative: the element's and its row sum's), and the epochs trained on
    them follow the float32 run to ``u``."""
    x, y = _data(64)
    kernel = np.random.default_rng(2).normal(size=(D, K)).astype("float32")
    packed = {"inputs": x, "example_index": np.arange(64, dtype="int32")}
    fit = dict(batch_size=16, shuffle=False, verbose=0)
    runs = {}
    for dtype in ("float32", store_dtype):
        distiller = _pskd(kernel, store_dtype=dtype)
        first = distiller.fit(x, y, epochs=1, **fit)  # one-hot targets: the same
        assert distiller.teacher.predictions.dtype == dtype
        store = distiller.teacher.predictions.value
        stored = _np64(keras.ops.cast(store, "float32"))
        targets = _np64(distiller.teacher(packed, labels=y))
        rest = distiller.fit(x, y, epochs=3, initial_epoch=1, **fit)
        runs[dtype] = stored, targets, first.history["loss"] + rest.history["loss"]
    stored, targets, loss = runs[store_dtype]
    _, reference, reference_loss = runs["float32"]
    u = ROUNDOFF[store_dtype]
    assert np.abs(stored.sum(-1) - 1.0).max() > 1e-5  # the store drifts ...
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=0, atol=1e-6)  # ... reads not
    excess = np.abs(targets - reference) - (2 * u * reference + 2.0**-24)
    assert excess.max() <= 0, f"a target is off by {excess.max():.3g} more than 2u"
    assert loss[0] == reference_loss[0]
    np.testing.assert_allclose(loss[1:], reference_loss[1:], rtol=u)
    assert store_bytes(64, K, store_dtype) * 2 == store_bytes(64, K)


def _np64(x):
    return np.asarray(keras.ops.convert_to_numpy(x), "float64")


def test_pskd_trains_from_the_pipeline_with_example_indices():
    dataset = data.load("digits")
    n = dataset.num_examples("train")
    student = keras.Sequential(
        [
            keras.Input(dataset.input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(dataset.num_classes),
        ]
    )
    distiller = recipes.ps_kd(student, alpha=0.8, num_examples=n)
    distiller.compile(optimizer="adam")
    distiller.fit(
        data.pipeline(dataset, "train", 128, seed=0, example_index=True),
        epochs=1,
        verbose=0,
    )
    store = np.asarray(distiller.teacher.predictions)
    np.testing.assert_allclose(store.sum(-1), 1.0, atol=1e-5)  # every row written


def test_pskd_errors_name_the_fix():
    x, y = _data()
    distiller = _pskd(_kernel())
    distiller.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    with pytest.raises(ValueError, match=f"holds {N} examples.*has {N + 4}"):
        distiller.fit(*_data(N + 4), epochs=1, verbose=0)

    def batches():
        yield x, y

    fresh = _pskd(_kernel())
    with pytest.raises(ValueError, match="num_examples="):
        fresh.fit(batches(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="store_dtype='int8'"):
        PastPredictions(N, K, store_dtype="int8")
    with pytest.raises(ValueError, match="num_examples=0"):
        PastPredictions(0, K)


def test_evaluate_without_indices_has_no_soft_term():
    x, y = _data()
    distiller = _pskd(_kernel())
    distiller.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["soft_loss"] == 0.0


# ----------------------------------------------------------- the four recipes
def _teacher(seed=4):
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    model.layers[0].kernel.assign(_kernel(seed) * 3)
    return model


def test_dkd_recipe_is_ce_plus_the_warmed_up_dkd_term():
    x, y = _data()
    teacher = _teacher()
    distiller = recipes.dkd(_linear_student(_kernel()), teacher, warmup_epochs=4)
    distiller.compile(optimizer=keras.optimizers.SGD(LR))
    history = distiller.fit(x, y, epochs=2, batch_size=BATCH, verbose=0)
    np.testing.assert_allclose(history.history["soft_weight"], [0.25, 0.5], 1e-6)
    z_s = distiller.student(x)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, z_s)
    dkd = losses.DecoupledKD()(losses.targets_with_labels(teacher(x), y), z_s)
    total = distiller.compute_loss(x=x, y=y, y_pred=z_s, training=False)
    np.testing.assert_allclose(float(total), float(ce) + 0.5 * float(dkd), rtol=1e-5)
    no_warmup = recipes.dkd(_linear_student(_kernel()), teacher, warmup_epochs=0)
    assert no_warmup.soft_weight == 1.0 and no_warmup.hard_weight == 1.0


@pytest.mark.parametrize("name", ["ps_kd", "cs_kd", "online_label_smoothing", "dkd"])
def test_each_new_recipe_trains_from_arrays_with_fit_alone(name):
    x, y = _data(32)
    student = _linear_student(_kernel())
    if name == "dkd":
        distiller = recipes.dkd(student, _teacher(), warmup_epochs=0)
    else:
        distiller = getattr(recipes, name)(student)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=2, batch_size=8, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert len(history["soft_loss"]) == 2
    if name == "online_label_smoothing":  # official start: no soft labels yet
        assert history["soft_loss"][0] == 0.0
    assert history["soft_loss"][-1] > 0.0
    assert distiller.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] >= 0


def test_the_soft_target_monitor_refuses_an_online_teacher():
    from keras_tfkd.callbacks import SoftTargetMonitor

    x, y = _data()
    distiller = _pskd(_kernel())
    with pytest.raises(ValueError, match="PastPredictions.predictions"):
        distiller.fit(x, y, epochs=1, verbose=0, callbacks=[SoftTargetMonitor(x, y)])
