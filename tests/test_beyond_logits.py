"""Beyond logits: feature distillation, several teachers, multi-output students.

Every value is checked against NumPy or against `keras.distillation` on the
same models and inputs, on the backend under test.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfkd import Distiller, Term, losses, teachers
from keras_tfkd.callbacks import WeightScheduler
from keras_tfkd.features import FeatureDistillation, attention_map
from keras_tfkd.weight_schedules import LinearWarmup

K = 5


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype="float64")


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(z_t, z_s, t):
    lp_t, lp_s = _log_softmax(z_t / t), _log_softmax(z_s / t)
    return (np.exp(lp_t) * (lp_t - lp_s)).sum(-1) * t * t


def _ce(y, z):
    return -_log_softmax(z)[np.arange(len(y)), y]


def _cnn(name, channels, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(channels, 3, padding="same", name=f"{name}_conv1")(inputs)
    h = keras.layers.Activation("relu", name=f"{name}_relu")(h)
    h = keras.layers.Conv2D(channels, 3, padding="same", name=f"{name}_conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(h)
    outputs = keras.layers.Dense(K, name=f"{name}_logits")(h)
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="test_beyond_logits")
class SubclassedStudent(keras.Model):
    """A subclassed model: no symbolic graph, layers inside a block."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = keras.Sequential(
            [
                keras.layers.Conv2D(4, 3, padding="same", name="sub_conv"),
                keras.layers.Activation("relu", name="sub_relu"),
            ],
            name="sub_block",
        )
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(K)

    def call(self, x, training=False):
        return self.head(self.pool(self.block(x, training=training)))


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 3)).astype("float32")
    y = rng.integers(0, K, n)
    return x, y


def _features(model, layer_name, x):
    """A layer's output, from a Functional sub-model (independent of the capture)."""
    sub = keras.Model(model.inputs, model.get_layer(layer_name).output)
    return _np(sub(x, training=False))


# --------------------------------------------------------------- the losses
@pytest.mark.parametrize("loss", ["mse", "attention", "mae"])
def test_feature_losses_match_numpy_with_sample_weights(loss):
    rng = np.random.default_rng(1)
    f_t = rng.normal(size=(6, 4, 4, 3)).astype("float32")
    f_s = rng.normal(size=(6, 4, 4, 3 if loss != "attention" else 5)).astype("float32")
    w = rng.uniform(0, 2, 6).astype("float32")
    value = _np(FeatureDistillation("a", "b", loss=loss)(f_t, f_s, sample_weight=w))
    if loss == "mse":
        per = ((f_t - f_s) ** 2).reshape(6, -1).mean(-1)
    elif loss == "mae":
        per = np.abs(f_t - f_s).reshape(6, -1).mean(-1)
    else:

        def q(f):
            e = (f.astype("float64") ** 2).mean(-1).reshape(6, -1)
            return e / np.linalg.norm(e, axis=-1, keepdims=True)

        per = ((q(f_s) - q(f_t)) ** 2).mean(-1)
        np.testing.assert_allclose(_np(attention_map(f_t)), q(f_t), rtol=1e-5)
    np.testing.assert_allclose(value, (per * w).sum() / 6, rtol=1e-5)


def test_feature_shape_mismatch_without_adapter_names_both_layers():
    loss = FeatureDistillation("s_layer", "t_layer")
    with pytest.raises(ValueError, match="s_layer.*t_layer.*adapter"):
        loss(np.zeros((2, 4, 4, 3), "float32"), np.zeros((2, 4, 4, 5), "float32"))


def test_bad_feature_arguments_are_named():
    with pytest.raises(TypeError, match="student_layer"):
        FeatureDistillation(teacher_layer="x")
    with pytest.raises(ValueError, match="adapter"):
        FeatureDistillation("a", "b", adapter="linear")
    with pytest.raises(ValueError, match="loss"):
        FeatureDistillation("a", "b", loss="no_such_loss")
    student, teacher = _cnn("s", 4, 0), _cnn("t", 8, 1)
    with pytest.raises(ValueError, match="student_layer.*no layer.*s_conv1"):
        Distiller(
            student=student,
            teacher=teacher,
            soft_loss=FeatureDistillation("missing", "t_conv1"),
        )


# ----------------------------------------------- parity with keras.distillation
def test_compute_loss_equals_keras_distillation():
    """Logits KD + feature MSE, weighted, on the same models and inputs."""
    student, teacher = _cnn("s", 8, 0), _cnn("t", 8, 1)
    x, y = _data()
    s, w_kd, w_feat, temperature = 0.3, 0.7, 2.5, 3.0
    builtin = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=[
            keras.distillation.LogitsDistillation(
                temperature=temperature, loss=keras.losses.KLDivergence()
            ),
            keras.distillation.FeatureDistillation(
                loss="mse", teacher_layer_name="t_conv2", student_layer_name="s_conv2"
            ),
        ],
        distillation_loss_weights=[w_kd, w_feat],
        student_loss_weight=s,
    )
    builtin.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True)
    )
    theirs = _np(builtin.compute_loss(x, y, student(x), training=False))
    ours_model = Distiller(
        student=student,
        terms=[
            Term(teacher, losses.SoftTargetKL(temperature=temperature), (1 - s) * w_kd),
            Term(
                teacher,
                losses.FeatureDistillation("s_conv2", "t_conv2"),
                (1 - s) * w_feat,
            ),
        ],
        hard_weight=s,
    )
    ours_model.compile(optimizer="sgd")
    # The Distiller's own forward pass (features recorded on the way) and
    # outputs computed elsewhere (the student is run once more to record).
    y_pred = ours_model(x, training=False)
    ours = _np(ours_model.compute_loss(x, y, y_pred, training=False))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    ours_again = _np(ours_model.compute_loss(x, y, student(x), training=False))
    np.testing.assert_allclose(ours_again, theirs, rtol=1e-5)
    # and the formula itself
    z_s, z_t = _np(student(x)), _np(teacher(x))
    f_s, f_t = _features(student, "s_conv2", x), _features(teacher, "t_conv2", x)
    expected = s * _ce(y, z_s).mean() + (1 - s) * (
        w_kd * _kl(z_t, z_s, temperature).mean() + w_feat * ((f_t - f_s) ** 2).mean()
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


# ------------------------------------------------------------ several teachers
def test_two_teachers_with_free_weights_and_per_term_logs():
    student = _cnn("s", 4, 0)
    t1, t2 = _cnn("t1", 8, 1), _cnn("t2", 6, 2)
    x, y = _data()
    d = Distiller(
        student=student,
        terms=[
            Term(t1, losses.SoftTargetKL(temperature=2.0), weight=0.7, name="kd_a"),
            Term(t2, losses.SoftTargetKL(temperature=4.0), weight=1.9, name="kd_b"),
        ],
        hard_weight=0.4,
    )
    d.compile(optimizer="sgd")
    value = _np(d.compute_loss(x, y, d(x), training=False))
    z_s = _np(student(x))
    expected = (
        0.4 * _ce(y, z_s).mean()
        + 0.7 * _kl(_np(t1(x)), z_s, 2.0).mean()
        + 1.9 * _kl(_np(t2(x)), z_s, 4.0).mean()
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    history = d.fit(x, y, epochs=1, batch_size=8, verbose=0).history
    assert {"loss", "hard_loss", "kd_a_loss", "kd_b_loss"} <= set(history)
    assert d.weight_names == ("hard_weight", "kd_a_weight", "kd_b_weight")
    assert d.get_weight("kd_b_weight") == pytest.approx(1.9)


@pytest.mark.parametrize("combine", ["logits", "probabilities"])
def test_ensemble_teacher_matches_numpy(combine):
    t1, t2 = _cnn("t1", 8, 1), _cnn("t2", 6, 2)
    x, _ = _data()
    z = _np(teachers.EnsembleTeacher([t1, t2], combine=combine)(x))
    z1, z2 = _np(t1(x)), _np(t2(x))
    if combine == "logits":
        np.testing.assert_allclose(z, (z1 + z2) / 2, rtol=1e-5, atol=1e-6)
    else:
        p = (np.exp(_log_softmax(z1)) + np.exp(_log_softmax(z2))) / 2
        np.testing.assert_allclose(np.exp(_log_softmax(z)), p, rtol=1e-5)
    with pytest.raises(ValueError, match="combine"):
        teachers.EnsembleTeacher([t1], combine="max")


def test_term_errors_name_the_argument():
    student, teacher = _cnn("s", 4, 0), _cnn("t", 8, 1)
    kl = losses.SoftTargetKL()
    with pytest.raises(ValueError, match="not both"):
        Distiller(student=student, terms=[Term(teacher, kl)], alpha=0.5)
    with pytest.raises(ValueError, match="named 'kd'"):
        Distiller(
            student=student,
            terms=[Term(teacher, kl, name="kd"), Term(teacher, kl, name="kd")],
        )
    with pytest.raises(ValueError, match="hard"):
        Term(teacher, kl, name="hard")
    with pytest.raises(ValueError, match="weight"):
        Term(teacher, kl, weight=-1.0)
    d = Distiller(student=student, terms=[Term(teacher, kl), Term(teacher, kl)])
    assert d.weight_names == (
        "hard_weight",
        "soft_target_kl_weight",
        "soft_target_kl_2_weight",
    )
    with pytest.raises(AttributeError, match="no `alpha`"):
        d.get_weight("alpha")
    with pytest.raises(AttributeError, match="no weight 'kd_weight'"):
        d.set_weight("kd_weight", 1.0)


# ------------------------------------------------------ one forward per model
class _Counting(keras.layers.Layer):
    """Identity that counts its calls (run eagerly, so once per step)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, x):
        self.calls += 1
        return x


def test_feature_terms_run_each_model_once_per_step():
    def model(name, channels, seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((6, 6, 3))
        counter = _Counting(name=f"{name}_count")
        h = keras.layers.Conv2D(channels, 3, padding="same", name=f"{name}_conv")(
            counter(inputs)
        )
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(K)(h), name=name), counter

    student, s_count = model("s", 4, 0)
    teacher, t_count = model("t", 8, 1)
    d = Distiller(
        student=student,
        terms=[
            Term(teacher, losses.SoftTargetKL(temperature=4.0), name="kd"),
            Term(
                teacher,
                losses.FeatureDistillation("s_conv", "t_conv", adapter="conv"),
                name="fitnet",
            ),
        ],
    )
    d.compile(optimizer="sgd", run_eagerly=True)
    x, y = _data(24)
    d.fit(x, y, epochs=1, batch_size=8, verbose=0)  # builds (adapter included)

    class Reset(keras.callbacks.Callback):
        # fit's input checks run the teacher on a few examples first; count
        # the training steps only.
        def on_train_begin(self, logs=None):
            s_count.calls = t_count.calls = 0

    d.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False, callbacks=[Reset()])
    assert (s_count.calls, t_count.calls) == (3, 3)


# -------------------------------------------- adapters, subclassed, saving
def test_adapter_is_trained_and_absent_from_the_saved_student(tmp_path):
    student, teacher = _cnn("s", 4, 0), _cnn("t", 8, 1)
    d = Distiller(
        student=student,
        teacher=teacher,
        soft_loss=[
            losses.SoftTargetKL(temperature=4.0),
            losses.FeatureDistillation("s_conv2", "t_conv2", adapter="conv"),
        ],
        hard_weight=1.0,
        soft_weight=1.0,
    )
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = _data()
    d.fit(x, y, epochs=1, batch_size=8, verbose=0)
    (adapter,) = d.feature_adapters
    assert tuple(adapter.kernel.shape) == (4, 8)
    before = _np(adapter.kernel).copy()
    d.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.abs(_np(adapter.kernel) - before).max() > 1e-6
    assert any(v is adapter.kernel for v in d.trainable_variables)
    path = os.path.join(tmp_path, "student.keras")
    student.save(path)
    loaded = keras.models.load_model(path)
    assert len(loaded.weights) == len(student.weights)
    assert not any("adapter" in v.path for v in loaded.weights)
    # The whole Distiller reloads with its adapter (safe_mode), same loss.
    whole = os.path.join(tmp_path, "distiller.keras")
    d.save(whole)
    again = keras.models.load_model(whole, safe_mode=True)
    np.testing.assert_allclose(
        _np(again.feature_adapters[0].kernel), _np(adapter.kernel)
    )
    np.testing.assert_allclose(
        again.evaluate(x, y, verbose=0, return_dict=True)["soft_loss"],
        d.evaluate(x, y, verbose=0, return_dict=True)["soft_loss"],
        rtol=1e-5,
    )


def test_subclassed_student_features_by_nested_layer_name(tmp_path):
    student = SubclassedStudent()
    x, y = _data()
    student(x[:1])
    teacher = _cnn("t", 4, 1)
    d = Distiller(
        student=student,
        terms=[
            Term(teacher, losses.FeatureDistillation("sub_relu", "t_relu"), 2.0, "fit")
        ],
        hard_weight=0.5,
    )
    d.compile(optimizer="sgd")
    value = _np(d.compute_loss(x, y, d(x), training=False))
    f_s = _np(student.block(x))
    f_t = _features(teacher, "t_relu", x)
    z_s = _np(student(x))
    expected = 0.5 * _ce(y, z_s).mean() + 2.0 * ((f_t - f_s) ** 2).mean()
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    history = d.fit(x, y, epochs=2, batch_size=8, verbose=0).history
    assert np.all(np.isfinite(history["fit_loss"]))
    path = os.path.join(tmp_path, "d.keras")
    d.save(path)
    again = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        again.evaluate(x, y, verbose=0, return_dict=True)["fit_loss"],
        d.evaluate(x, y, verbose=0, return_dict=True)["fit_loss"],
        rtol=1e-5,
    )


# --------------------------------------------------------- weights by name
def test_term_weights_schedule_and_callback_without_retracing():
    student, teacher = _cnn("s", 4, 0), _cnn("t", 8, 1)
    d = Distiller(
        student=student,
        terms=[
            Term(teacher, losses.SoftTargetKL(), weight=LinearWarmup(2), name="kd"),
            Term(
                teacher,
                losses.FeatureDistillation("s_conv2", "t_conv2", adapter="conv"),
                name="fitnet",
            ),
        ],
    )
    d.compile(optimizer="sgd")
    x, y = _data()
    feature = WeightScheduler("fitnet_weight", lambda epoch: 0.0 if epoch < 2 else 0.5)
    history = d.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[feature])
    np.testing.assert_allclose(history.history["kd_weight"], [0.5, 1.0, 1.0])
    np.testing.assert_allclose(history.history["fitnet_weight"], [0.0, 0.0, 0.5])
    # The logged total is hard + weighted terms, with the weights of the step.
    h = history.history
    np.testing.assert_allclose(
        h["loss"][2],
        h["hard_loss"][2] + h["kd_loss"][2] + 0.5 * h["fitnet_loss"][2],
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="no weight 'fit_weight'"):
        d.fit(x, y, epochs=1, verbose=0, callbacks=[WeightScheduler("fit_weight", abs)])


# --------------------------------------------------------- multi-output
def test_multi_output_student_distils_one_head(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3, padding="same", name="m_conv")(inputs)
    )
    student = keras.Model(
        inputs,
        {
            "cls": keras.layers.Dense(K, name="cls")(h),
            "aux": keras.layers.Dense(2, name="aux")(h),
        },
    )
    teacher = _cnn("t", 8, 1)
    with pytest.raises(ValueError, match="output_name"):
        Distiller(student=student, teacher=teacher)
    d = Distiller(
        student=student,
        teacher=teacher,
        soft_loss=losses.SoftTargetKL(temperature=2.0),
        alpha=0.25,
        output_name="cls",
    )
    d.compile(
        optimizer="sgd",
        loss={"aux": "mse"},
        loss_weights={"aux": 3.0},
        metrics={"cls": ["accuracy"]},
    )
    x, y = _data()
    rng = np.random.default_rng(5)
    aux = rng.normal(size=(len(x), 2)).astype("float32")
    labels = {"cls": y, "aux": aux}
    out = d(x)
    value = _np(d.compute_loss(x, labels, out, training=False))
    z_s, z_t, a = _np(out["cls"]), _np(teacher(x)), _np(out["aux"])
    expected = (
        0.75 * _ce(y, z_s).mean()
        + 0.25 * _kl(z_t, z_s, 2.0).mean()
        + 3.0 * ((a - aux) ** 2).mean()
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    history = d.fit(x, labels, epochs=1, batch_size=8, verbose=0).history
    assert {"hard_loss", "soft_loss", "aux_loss"} <= set(history)
    assert any("accuracy" in key for key in history)
    # Saved and loaded, the other output keeps its loss and weight.
    path = os.path.join(tmp_path, "multi.keras")
    d.save(path)
    again = keras.models.load_model(path, safe_mode=True)
    ours = d.evaluate(x, labels, verbose=0, return_dict=True)
    theirs = again.evaluate(x, labels, verbose=0, return_dict=True)
    for key in ("loss", "aux_loss", "hard_loss", "soft_loss"):
        np.testing.assert_allclose(theirs[key], ours[key], rtol=1e-5, err_msg=key)


# ------------------------------------------------------------------- docs
def test_docs_beyond_logits_block_runs(tmp_path, monkeypatch, capsys):
    # The example of docs/building-blocks.md, "Beyond logits", as written.
    page = os.path.join(
        os.path.dirname(__file__), os.pardir, "docs", "building-blocks.md"
    )
    with open(page, encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## Beyond logits", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "building-blocks.md (Beyond logits)", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "fitnet_loss" in printed and "fitnet_weight" in printed
    np.testing.assert_allclose(
        namespace["history"].history["fitnet_weight"], [0.1, 0.05], rtol=1e-6
    )
    assert namespace["two"].weight_names == (
        "hard_weight",
        "kd_a_weight",
        "kd_b_weight",
    )


# ---------------------------------------------------------------- resume
def _feature_distiller():
    student, teacher = _cnn("s", 4, 0), _cnn("t", 8, 1)
    d = Distiller(
        student=student,
        terms=[
            Term(teacher, losses.SoftTargetKL(temperature=4.0), LinearWarmup(2), "kd"),
            Term(
                teacher,
                losses.FeatureDistillation("s_conv2", "t_conv2", adapter="conv"),
                0.5,
                "fitnet",
            ),
        ],
    )
    d.compile(optimizer=keras.optimizers.SGD(0.05))
    keras.utils.set_random_seed(3)  # the adapter's initial weights
    return d


def test_terms_resumed_by_backup_and_restore_equal_an_uninterrupted_run(tmp_path):
    x, y = _data()
    fit = dict(epochs=4, batch_size=8, shuffle=False, verbose=0)
    whole = _feature_distiller()
    whole.fit(x, y, **fit)

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    backup = str(tmp_path / "backup")
    first = _feature_distiller()
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(
            x, y, callbacks=[keras.callbacks.BackupAndRestore(backup), Crash()], **fit
        )
    resumed = _feature_distiller()
    history = resumed.fit(
        x, y, callbacks=[keras.callbacks.BackupAndRestore(backup)], **fit
    )
    assert len(history.history["loss"]) == 2  # epochs 2 and 3 only
    np.testing.assert_allclose(history.history["kd_weight"], [1.0, 1.0])
    for a, b in zip(resumed.student.get_weights(), whole.student.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(
        _np(resumed.feature_adapters[0].kernel),
        _np(whole.feature_adapters[0].kernel),
        atol=1e-5,
    )
