"""The Distiller in `fit`: numerics, frozen teachers, logging, saving, errors."""

import keras
import numpy as np
import pytest
import reference as ref
from keras import ops

from keras_tfkd import Distiller, losses, recipes, teachers

K, D, N = 5, 6, 32


def _linear(name, seed=0):
    inp = keras.Input((D,))
    out = keras.layers.Dense(K, name=f"{name}_dense")(inp)
    model = keras.Model(inp, out, name=name)
    r = np.random.default_rng(seed)
    model.set_weights([r.normal(size=(D, K)) * 0.5, r.normal(size=K) * 0.1])
    return model


def _data(seed=1):
    r = np.random.default_rng(seed)
    return r.normal(size=(N, D)).astype("float32"), r.integers(0, K, N).astype("int32")


def _numpy_sgd_losses(grad_fn, loss_fn, w, b, x, steps=3, lr=0.5):
    """Plain-NumPy gradient descent on a linear student; returns the losses."""
    w, b, out = w.astype("float64"), b.astype("float64"), []
    for _ in range(steps):
        z = x @ w + b
        out.append(loss_fn(z))
        g = grad_fn(z)  # d loss / d logits, shape (N, K)
        w, b = w - lr * x.T @ g, b - lr * g.sum(0)
    return out


def _run_keras(distiller, x, y, steps=3, lr=0.5):
    distiller.compile(optimizer=keras.optimizers.SGD(lr))
    return [
        distiller.train_on_batch(x, y, return_dict=True)["loss"] for _ in range(steps)
    ]


def test_three_sgd_steps_of_kd_match_numpy():
    x, y = _data()
    student, teacher = _linear("student", 0), _linear("teacher", 7)
    w0, b0 = [v.copy() for v in student.get_weights()]
    z_t = x @ teacher.get_weights()[0] + teacher.get_weights()[1]
    alpha, t = 0.9, 4.0
    p_t, onehot = ref.softmax(z_t / t), ref.one_hot(y, K)

    def grad(z):
        hard = ref.softmax(z) - onehot
        soft = (t**2 / K) * (ref.softmax(z / t) - p_t) / t
        return ((1 - alpha) * hard + alpha * soft) / N

    expected = _numpy_sgd_losses(
        grad, lambda z: ref.kd(z, z_t, y, alpha, t), w0, b0, x.astype("float64")
    )
    got = _run_keras(
        recipes.kd(student, teacher, alpha=alpha, temperature=t, kl="reference"), x, y
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_three_sgd_steps_of_tfkd_reg_match_numpy():
    x, y = _data()
    student = _linear("student", 0)
    w0, b0 = [v.copy() for v in student.get_weights()]
    alpha, t, m = 0.5, 20.0, 10.0
    p_t = ref.softmax(ref.virtual_teacher(y, K) / t)
    onehot = ref.one_hot(y, K)

    def grad(z):
        p = ref.softmax(z)
        return ((1 - alpha) * (p - onehot) + alpha * (m / K) * (p - p_t)) / N

    expected = _numpy_sgd_losses(
        grad, lambda z: ref.tfkd_reg(z, y, alpha, t, m), w0, b0, x.astype("float64")
    )
    got = _run_keras(
        recipes.tfkd_reg(
            student, K, alpha=alpha, temperature=t, multiplier=m, kl="reference"
        ),
        x,
        y,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def _bn_teacher():
    inp = keras.Input((D,))
    h = keras.layers.Dense(16)(inp)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(h)
    out = keras.layers.Dense(K)(keras.layers.ReLU()(h))
    return keras.Model(inp, out, name="bn_teacher")


def test_teacher_frozen_and_student_trained_by_fit():
    x, y = _data()
    teacher, student = _bn_teacher(), _linear("student")
    before_t = [w.copy() for w in teacher.get_weights()]
    before_s = [w.copy() for w in student.get_weights()]
    distiller = recipes.kd(student, teacher, alpha=0.5, temperature=4.0, kl="reference")
    distiller.compile(optimizer="adam")
    distiller.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(teacher.get_weights(), before_t):  # incl. BatchNorm statistics
        np.testing.assert_array_equal(a, b)
    assert any(
        np.abs(a - b).max() > 1e-4 for a, b in zip(student.get_weights(), before_s)
    )
    assert not teacher.trainable
    assert distiller.teacher is teacher and distiller.student is student
    assert len(distiller.trainable_weights) == len(student.trainable_weights)


def test_teacher_runs_in_inference_mode():
    """Dropout off in the teacher: its logits in compute_loss are deterministic."""
    x, y = _data()
    teacher = _bn_teacher()
    distiller = recipes.kd(
        _linear("s"), teacher, alpha=1.0, temperature=1.0, kl="reference"
    )
    distiller.compile(optimizer="sgd")
    losses_ = [
        float(ops.convert_to_numpy(distiller.compute_loss(x, y, distiller(x))))
        for _ in range(3)
    ]
    assert max(losses_) - min(losses_) < 1e-6


def test_fit_and_evaluate_log_both_terms_and_metrics():
    x, y = _data()
    distiller = recipes.tfkd_reg(
        _linear("s"), K, alpha=0.5, temperature=10.0, kl="reference"
    )
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    history = distiller.fit(
        x, y, epochs=1, batch_size=8, verbose=0, validation_data=(x, y)
    )
    for key in (
        "loss",
        "hard_loss",
        "soft_loss",
        "accuracy",
        "val_loss",
        "val_soft_loss",
    ):
        assert key in history.history, key
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) >= {"loss", "hard_loss", "soft_loss", "accuracy"}
    np.testing.assert_allclose(
        logs["loss"], 0.5 * logs["hard_loss"] + 0.5 * logs["soft_loss"], rtol=1e-5
    )
    expected = ref.tfkd_reg(
        ops.convert_to_numpy(distiller.predict(x, verbose=0)), y, 0.5, 10.0
    )
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)


def test_predict_runs_the_student_alone():
    x, _ = _data()
    student = _linear("s")
    distiller = recipes.kd(
        student, _bn_teacher(), alpha=0.5, temperature=2.0, kl="reference"
    )
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-6
    )


@pytest.mark.parametrize("form", ["flat", "column", "one_hot"])
def test_label_formats_give_the_same_loss(form):
    x, y = _data()
    labels = {"flat": y, "column": y[:, None], "one_hot": ref.one_hot(y, K)}[form]
    distiller = recipes.tfkd_reg(
        _linear("s"), K, alpha=0.3, temperature=5.0, kl="reference"
    )
    distiller.compile(optimizer="sgd")
    got = distiller.compute_loss(x, ops.convert_to_tensor(labels), distiller(x))
    z = ops.convert_to_numpy(distiller(x))
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(got)), ref.tfkd_reg(z, y, 0.3, 5.0), rtol=1e-5
    )


def test_zero_sample_weight_removes_a_sample_from_both_terms():
    x, y = _data()
    teacher = _linear("t", 3)
    distiller = recipes.kd(
        _linear("s"), teacher, alpha=0.5, temperature=3.0, kl="reference"
    )
    distiller.compile(optimizer="sgd")
    w = np.ones(N, "float32")
    w[::2] = 0.0
    z_s = ops.convert_to_numpy(distiller(x))
    z_t = ops.convert_to_numpy(teacher(x))
    got = float(
        ops.convert_to_numpy(
            distiller.compute_loss(x, y, distiller(x), sample_weight=w)
        )
    )
    keep = w > 0
    subset = ref.kd(z_s[keep], z_t[keep], y[keep], 0.5, 3.0) * keep.sum() / N
    np.testing.assert_allclose(got, subset, rtol=1e-5)
    # and fit honours it: a zero-weighted copy of the data changes nothing
    x2, y2 = np.concatenate([x, x[:8]]), np.concatenate([y, (y[:8] + 1) % K])
    w2 = np.concatenate([np.ones(N), np.zeros(8)]).astype("float32")
    a = recipes.kd(_linear("a"), teacher, alpha=0.5, temperature=3.0, kl="reference")
    b = recipes.kd(_linear("b"), teacher, alpha=0.5, temperature=3.0, kl="reference")
    for d in (a, b):
        d.compile(optimizer=keras.optimizers.SGD(0.1))
    a.train_on_batch(x, y)
    b.train_on_batch(x2, y2, sample_weight=w2)
    # same gradient direction; b's loss is divided by N + 8 instead of N
    wa, wb = a.student.get_weights()[0], b.student.get_weights()[0]
    w0 = _linear("c").get_weights()[0]
    np.testing.assert_allclose((wb - w0) * (N + 8) / N, wa - w0, rtol=1e-4, atol=1e-6)


def test_alpha_and_temperature_are_assignable_variables():
    x, y = _data()
    distiller = recipes.kd(
        _linear("s"), _linear("t", 2), alpha=0.5, temperature=2.0, kl="reference"
    )
    distiller.compile(optimizer="sgd")
    distiller.alpha = 0.25
    distiller.teacher_temperature = 8.0
    z_s = ops.convert_to_numpy(distiller(x))
    z_t = ops.convert_to_numpy(distiller.teacher(x))
    got = float(ops.convert_to_numpy(distiller.compute_loss(x, y, distiller(x))))
    np.testing.assert_allclose(got, ref.kd(z_s, z_t, y, 0.25, 8.0), rtol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        distiller.alpha = -0.1
    with pytest.raises(ValueError, match="temperature"):
        distiller.teacher_temperature = 0.0


def test_several_soft_losses_add_up():
    x, y = _data()
    teacher = _linear("t", 4)
    soft = [losses.SoftTargetKL(2.0, name="a"), losses.SoftTargetCrossEntropy(1.0)]
    distiller = Distiller(
        student=_linear("s"), teacher=teacher, soft_loss=soft, alpha=1.0
    )
    distiller.compile(optimizer="sgd")
    z_s, z_t = ops.convert_to_numpy(distiller(x)), ops.convert_to_numpy(teacher(x))
    expected = (
        4.0 * ref.kl_per_sample(ref.softmax(z_t / 2), ref.log_softmax(z_s / 2)).mean()
        - (ref.softmax(z_t) * ref.log_softmax(z_s)).sum(-1).mean()
    )
    got = float(ops.convert_to_numpy(distiller.compute_loss(x, y, distiller(x))))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_student_regularisation_is_added():
    x, y = _data()
    inp = keras.Input((D,))
    dense = keras.layers.Dense(K, kernel_regularizer=keras.regularizers.L2(0.1))
    student = keras.Model(inp, dense(inp))
    distiller = recipes.baseline(student)
    distiller.compile(optimizer="sgd")
    z = ops.convert_to_numpy(distiller(x))
    got = float(ops.convert_to_numpy(distiller.compute_loss(x, y, distiller(x))))
    l2 = 0.1 * float((ops.convert_to_numpy(dense.kernel) ** 2).sum())
    np.testing.assert_allclose(got, ref.ce(z, y) + l2, rtol=1e-5)


# ---------------------------------------------------------------- saving


def test_student_and_distiller_save_and_reload(tmp_path):
    x, y = _data()
    teacher = _bn_teacher()
    distiller = recipes.kd(
        _linear("s"), teacher, alpha=0.7, temperature=3.0, kl="reference"
    )
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    distiller.alpha = 0.3
    distiller.student.save(tmp_path / "s.keras")
    student = keras.saving.load_model(tmp_path / "s.keras", safe_mode=True)
    np.testing.assert_allclose(
        student.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6
    )
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras", safe_mode=True)
    assert isinstance(loaded, Distiller)
    assert loaded.alpha == pytest.approx(0.3) and loaded.teacher_temperature == 3.0
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6
    )
    for a, b in zip(loaded.teacher.get_weights(), teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    loaded.compile(optimizer="sgd")
    got = loaded.compute_loss(x, y, loaded(x))
    want = distiller.compute_loss(x, y, distiller(x))
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(got)), float(ops.convert_to_numpy(want)), rtol=1e-5
    )


def test_virtual_teacher_distiller_serialises_by_config(tmp_path):
    distiller = recipes.tfkd_reg(
        _linear("s"), K, alpha=0.1, temperature=40.0, multiplier=50.0, kl="reference"
    )
    distiller.save(tmp_path / "reg.keras")
    loaded = keras.saving.load_model(tmp_path / "reg.keras", safe_mode=True)
    assert isinstance(loaded.teacher, teachers.VirtualTeacher)
    assert loaded.teacher.get_config()["correct_prob"] == 0.99
    assert loaded.soft_losses[0].get_config() == distiller.soft_losses[0].get_config()


# ------------------------------------------------------------ bad input


def _softmax_teacher():
    inp = keras.Input((D,))
    return keras.Model(inp, keras.layers.Dense(K, activation="softmax")(inp))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="classes"):
        inp = keras.Input((D,))
        Distiller(
            student=_linear("s"),
            teacher=keras.Model(inp, keras.layers.Dense(K + 1)(inp)),
        )
    with pytest.raises(ValueError, match="alpha"):
        Distiller(student=_linear("s"), teacher=_linear("t"), alpha=2.0)
    with pytest.raises(ValueError, match="softmax"):
        Distiller(student=_linear("s"), teacher=_softmax_teacher())
    with pytest.raises(ValueError, match="classes"):
        Distiller(student=_linear("s"), teacher=teachers.VirtualTeacher(K + 2))
    with pytest.raises(ValueError, match="teacher"):
        Distiller(student=_linear("s"), teacher=None, soft_loss=losses.SoftTargetKL())
    with pytest.raises(TypeError, match="student"):
        Distiller(student="not a model")
    with pytest.raises(ValueError, match="correct_prob"):
        teachers.VirtualTeacher(K, correct_prob=0.1)


def test_teacher_outputting_probabilities_without_softmax_layer_is_caught():
    """A teacher whose softmax is hidden in a custom layer is caught on data."""
    x, y = _data()
    inp = keras.Input((D,))
    probs = keras.layers.Lambda(lambda t: ops.softmax(t))(keras.layers.Dense(K)(inp))
    teacher = keras.Model(inp, probs)
    distiller = recipes.kd(
        _linear("s"), teacher, alpha=0.5, temperature=4.0, kl="reference"
    )
    distiller.compile(optimizer="sgd")
    before = [w.copy() for w in distiller.student.get_weights()]
    with pytest.raises(ValueError, match="probabilities"):
        distiller.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(distiller.student.get_weights(), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "labels,match",
    [
        (np.full(N, K, "int32"), "outside"),
        (np.full(N, -1, "int32"), "outside"),
        (np.zeros(N, "float32"), "dtype"),
        (np.zeros((N, K + 1), "float32"), "width"),
    ],
)
def test_bad_labels_fail_before_any_weight_changes(labels, match):
    x, _ = _data()
    distiller = recipes.tfkd_reg(
        _linear("s"), K, alpha=0.5, temperature=10.0, kl="reference"
    )
    distiller.compile(optimizer="sgd")
    before = [w.copy() for w in distiller.student.get_weights()]
    with pytest.raises(ValueError, match=match):
        distiller.fit(x, labels, epochs=1, verbose=0)
    for a, b in zip(distiller.student.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_teacher_student_input_shape_mismatch():
    x, y = _data()
    inp = keras.Input((D + 1,))
    teacher = keras.Model(inp, keras.layers.Dense(K)(inp))
    distiller = recipes.kd(
        _linear("s"), teacher, alpha=0.5, temperature=4.0, kl="reference"
    )
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="shape"):
        distiller.fit(x, y, epochs=1, verbose=0)


def test_nan_inputs_are_refused():
    x, y = _data()
    x[3, 2] = np.nan
    distiller = recipes.baseline(_linear("s"))
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="NaN"):
        distiller.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_losses_stay_finite(policy):
    keras.config.set_dtype_policy(policy)
    x, y = _data()
    x = x * 1e3
    student = _linear("s")
    distiller = recipes.kd(
        student, _linear("t", 5), alpha=0.9, temperature=40.0, kl="reference"
    )
    distiller.compile(optimizer="sgd")
    z = distiller(x)
    assert keras.backend.standardize_dtype(z.dtype) == policy.split("_")[1]
    loss = distiller.compute_loss(x, y, z)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    assert np.isfinite(float(ops.convert_to_numpy(loss)))
    reg = recipes.tfkd_reg(
        _linear("r"), K, alpha=0.1, temperature=40.0, multiplier=100.0, kl="reference"
    )
    reg.compile(optimizer="sgd")
    history = reg.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


# ----------------------------------------------- keyword-only models (0.x API)


def test_positional_models_are_refused_with_the_fix():
    student, teacher = _linear("s"), _linear("t", 2)
    # keras.distillation.Distiller's (teacher, student) order, and ours: both
    # refused, so neither can silently train the teacher.
    for args in [(teacher, student), (student, teacher), (student,)]:
        with pytest.raises(TypeError) as info:
            Distiller(*args)
        message = str(info.value)
        assert "keyword only" in message and "keras.distillation" in message
        assert "Distiller(student=..., teacher=..." in message
        assert "opposite order (teacher, student)" in message
    with pytest.raises(TypeError, match="keyword only"):
        Distiller(student, teacher=teacher, alpha=0.5)
    assert teacher.trainable and student.trainable  # nothing was frozen
    with pytest.raises(TypeError, match="student="):
        Distiller(teacher=teacher)
    with pytest.raises(TypeError, match="distillation_losses.*soft_loss="):
        Distiller(student=student, teacher=teacher, distillation_losses=[])


def test_keyword_call_trains_the_student_in_any_keyword_order():
    x, y = _data()
    student, teacher = _linear("s"), _linear("t", 2)
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    student_weights = [w.copy() for w in student.get_weights()]
    # Written in keras.distillation's order, by keyword: same meaning.
    distiller = Distiller(teacher=teacher, student=student, alpha=0.5)
    assert distiller.student is student and distiller.teacher is teacher
    assert not teacher.trainable and student.trainable
    distiller.compile(optimizer=keras.optimizers.SGD(0.5))
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(teacher.get_weights(), teacher_weights):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.allclose(a, b) for a, b in zip(student.get_weights(), student_weights)
    )
    ours = Distiller(student=_linear("a"), teacher=teacher, alpha=0.5)
    keras_order = Distiller(teacher=teacher, student=_linear("b"), alpha=0.5)
    z, z_t = ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(teacher(x))
    kl = ref.kl_per_sample(ref.softmax(z_t), ref.log_softmax(z)).mean()
    for d in (ours, keras_order):
        d.compile(optimizer="sgd")
        got = float(ops.convert_to_numpy(d.compute_loss(x, y, d(x))))
        assert got == pytest.approx(0.5 * ref.ce(z, y) + 0.5 * kl, rel=1e-5)
    rebuilt = Distiller.from_config(distiller.get_config())
    assert rebuilt.student.name == "s" and rebuilt.teacher.name == "t"
    assert rebuilt.alpha == pytest.approx(0.5)


# ------------------------------------------------------- hard-loss strings


@pytest.mark.parametrize(
    "name, class_name",
    [
        ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy"),
        ("categorical_crossentropy", "CategoricalCrossentropy"),
        ("SparseCategoricalCrossentropy", "SparseCategoricalCrossentropy"),
        ("binary_crossentropy", "BinaryCrossentropy"),
    ],
)
def test_logits_loss_strings_are_refused_with_the_loss_to_pass(name, class_name):
    distiller = recipes.baseline(_linear("s"))
    fix = rf"keras\.losses\.{class_name}\(from_logits=True\)"
    with pytest.raises(ValueError, match=rf"from_logits=False.*logits.*{fix}"):
        distiller.compile(optimizer="sgd", loss=name)
    with pytest.raises(ValueError, match=fix):
        Distiller(student=_linear("s2"), hard_loss=name)
    function = keras.losses.get(name)
    if not isinstance(function, keras.losses.Loss):  # the same, as a function
        with pytest.raises(ValueError, match=fix):
            distiller.compile(optimizer="sgd", loss=function)


def test_other_loss_strings_keep_their_keras_meaning():
    x, y = _data()
    one_hot = ref.one_hot(y, K).astype("float32")
    distiller = Distiller(student=_linear("s"), alpha=0.0)
    distiller.compile(optimizer="sgd", loss="mse")
    z = distiller(x)
    want = keras.losses.MeanSquaredError()(one_hot, z)
    got = distiller.compute_loss(x, one_hot, z)
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(got)), float(ops.convert_to_numpy(want)), rtol=1e-6
    )
    explicit = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    distiller.compile(optimizer="sgd", loss=explicit)
    got = distiller.compute_loss(x, y, z)
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(got)),
        ref.ce(ops.convert_to_numpy(z), y),
        rtol=1e-5,
    )
    with pytest.raises(TypeError, match="keras.losses.Loss"):
        distiller.compile(optimizer="sgd", loss=lambda y_true, y_pred: y_pred)


# ----------------------------------------------------------- teacher_temperature


def test_teacher_temperature_is_the_teacher_side_and_saves(tmp_path):
    reg = recipes.tfkd_reg(_linear("r"), K, alpha=0.1, temperature=20.0, kl="reference")
    kl = reg.soft_losses[0]
    # Tf-KD_reg: the teacher side is at T, the student side at 1.
    assert reg.teacher_temperature == 20.0
    assert reg.teacher_temperature_variable is kl.teacher_temperature
    assert float(ops.convert_to_numpy(kl.temperature)) == 1.0
    reg.teacher_temperature = 7.0
    assert float(ops.convert_to_numpy(kl.teacher_temperature)) == 7.0
    for bad in (-1.0, 0, float("nan"), "5", True):
        with pytest.raises(ValueError, match="teacher_temperature"):
            reg.teacher_temperature = bad
    assert recipes.baseline(_linear("b")).teacher_temperature is None
    # The 0.1 names are gone (removed, not deprecated).
    assert not hasattr(type(reg), "temperature")
    assert not hasattr(type(reg), "temperature_variable")
    reg.save(tmp_path / "reg.keras")
    loaded = keras.saving.load_model(tmp_path / "reg.keras", safe_mode=True)
    assert loaded.teacher_temperature == 7.0


# ------------------------------------------------ one weighting model underneath


def test_every_form_is_the_same_weighted_sum_of_terms():
    """alpha, free weights and terms= build the same terms and weights."""
    from keras_tfkd import Term

    x, y = _data()
    teacher = _linear("teacher", 7)
    kl = losses.SoftTargetKL(temperature=2.0)
    forms = {
        "alpha": Distiller(
            student=_linear("s1"), teacher=teacher, soft_loss=kl, alpha=0.3
        ),
        "weights": Distiller(
            student=_linear("s2"),
            teacher=teacher,
            soft_loss=kl,
            hard_weight=0.7,
            soft_weight=0.3,
        ),
        "terms": Distiller(
            student=_linear("s3"),
            terms=[Term(teacher, kl, weight=0.3, name="kd")],
            hard_weight=0.7,
        ),
    }
    z_s = forms["alpha"].student(x)
    totals = {}
    for form, distiller in forms.items():
        assert distiller.weighting == form
        hard, term_weights = distiller.loss_weighting.tensors()
        np.testing.assert_allclose(
            [float(hard), *map(float, term_weights)], [0.7, 0.3], rtol=1e-6
        )
        totals[form] = float(
            distiller.compute_loss(x=x, y=y, y_pred=z_s, training=False)
        )
    assert totals["alpha"] == pytest.approx(totals["weights"], rel=1e-6)
    assert totals["alpha"] == pytest.approx(totals["terms"], rel=1e-6)
    assert forms["alpha"].weight_names == ("alpha",)
    assert forms["weights"].weight_names == ("hard_weight", "soft_weight")
    assert forms["terms"].weight_names == ("hard_weight", "kd_weight")
    # alpha is one variable read as alpha and 1 - alpha: assigning it (as
    # AlphaScheduler does, on the variable) moves both weights.
    forms["alpha"].alpha_variable.assign(0.9)
    hard, (soft,) = forms["alpha"].loss_weighting.tensors()
    np.testing.assert_allclose([float(hard), float(soft)], [0.1, 0.9], rtol=1e-6)
    assert forms["alpha"].hard_weight == pytest.approx(0.1)


def test_a_baseline_logs_a_zero_soft_term():
    x, y = _data()
    baseline = Distiller(student=_linear("b"))
    baseline.compile(optimizer="sgd")
    logs = baseline.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["soft_loss"] == 0.0
    assert logs["loss"] == pytest.approx(0.5 * logs["hard_loss"], rel=1e-5)
