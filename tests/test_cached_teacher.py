"""CachedTeacher: teacher logits computed once and fed with the batches.

On data without random augmentation, distilling from cached logits must be the
same computation as distilling from the live teacher model, on every backend.
"""

import inspect

import keras
import numpy as np
import pytest
import reference as ref
from keras import ops

from keras_tfkd import recipes, teachers

K, N, B = 5, 48, 16
SHAPE = (6, 6, 1)
ALPHA, T = 0.7, 3.0


def _data(seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(N, *SHAPE)).astype("float32")
    return x, r.integers(0, K, N).astype("int32")


def _conv_teacher():
    """Conv + BatchNorm + Dropout: its inference and training outputs differ."""
    keras.utils.set_random_seed(7)
    inp = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(keras.layers.ReLU()(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(K)(h), name="conv_teacher")
    bn = model.layers[2]
    r = np.random.default_rng(1)
    bn.moving_mean.assign(r.normal(size=4) * 0.3)
    bn.moving_variance.assign(r.uniform(0.5, 2.0, size=4))
    return model


def _dense(name, seed):
    inp = keras.Input(SHAPE)
    out = keras.layers.Dense(K, name=f"{name}_dense")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out, name=name)
    r = np.random.default_rng(seed)
    model.set_weights([r.normal(size=(np.prod(SHAPE), K)) * 0.3, r.normal(size=K)])
    return model


def _live_and_cached(teacher, x, student_seed=0):
    """The same KD set-up twice: a live model teacher, and its cached logits."""
    live = recipes.kd(
        _dense("live", student_seed),
        teacher,
        alpha=ALPHA,
        temperature=T,
        kl="reference",
    )
    cached_teacher = teachers.CachedTeacher.from_model(teacher, x, batch_size=B)
    cached = recipes.kd(
        _dense("cached", student_seed),
        cached_teacher,
        alpha=ALPHA,
        temperature=T,
        kl="reference",
    )
    for distiller in (live, cached):
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    return live, cached, cached_teacher


def _scalar(value):
    return float(ops.convert_to_numpy(value))


def test_cached_logits_are_the_teachers_inference_logits():
    x, _ = _data()
    teacher = _conv_teacher()
    cached = teachers.CachedTeacher.from_model(teacher, x, batch_size=B)
    assert cached.logits.shape == (N, K) and cached.logits.dtype == np.float32
    assert cached.num_classes == K
    expected = ops.convert_to_numpy(teacher(x, training=False))
    np.testing.assert_allclose(cached.logits, expected, rtol=1e-5, atol=1e-6)
    # training mode differs (BatchNorm, Dropout): the cache is inference mode
    train_mode = ops.convert_to_numpy(teacher(x, training=True))
    assert np.abs(train_mode - expected).max() > 1e-3


@pytest.mark.parametrize("weighted", [False, True])
def test_same_loss_as_the_live_teacher_on_every_batch(weighted):
    x, y = _data()
    teacher = _conv_teacher()
    live, cached, cached_teacher = _live_and_cached(teacher, x)
    packed = cached_teacher.attach(x)
    w = np.random.default_rng(3).uniform(0.0, 2.0, N).astype("float32")
    z_t = ops.convert_to_numpy(teacher(x, training=False))
    for start in range(0, N, B):
        part = slice(start, start + B)
        xb, yb = x[part], y[part]
        wb = w[part] if weighted else None
        batch = {key: value[part] for key, value in packed.items()}
        got_live = _scalar(live.compute_loss(xb, yb, live(xb), sample_weight=wb))
        got_cached = _scalar(
            cached.compute_loss(batch, yb, cached(batch), sample_weight=wb)
        )
        z_s = ops.convert_to_numpy(cached(batch))
        expected = ref.kd(z_s, z_t[part], yb, ALPHA, T, sample_weight=wb)
        np.testing.assert_allclose(got_cached, got_live, rtol=1e-5)
        np.testing.assert_allclose(got_cached, expected, rtol=1e-4)


@pytest.mark.gradients
def test_fit_follows_the_same_path_as_the_live_teacher():
    x, y = _data()
    live, cached, cached_teacher = _live_and_cached(_conv_teacher(), x)
    fit = {"batch_size": B, "epochs": 3, "shuffle": False, "verbose": 0}
    h_live = live.fit(x, y, **fit).history
    h_cached = cached.fit(cached_teacher.attach(x), y, **fit).history
    for key in ("loss", "hard_loss", "soft_loss"):
        np.testing.assert_allclose(h_cached[key], h_live[key], rtol=1e-4)
    assert min(h_cached["soft_loss"]) > 1e-3  # the soft term is really there
    assert h_cached["loss"][-1] < h_cached["loss"][0]
    for a, b in zip(cached.student.get_weights(), live.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gradients
def test_shuffled_fit_keeps_each_row_of_logits_with_its_input():
    """Teacher == student and no update: KL is 0 only if the rows line up."""
    x, y = _data()
    teacher = _dense("teacher", seed=5)
    cached_teacher = teachers.CachedTeacher.from_model(teacher, x)

    def soft_loss(logits):
        distiller = recipes.kd(
            _dense("student", seed=5),
            cached_teacher,
            alpha=1.0,
            temperature=1.0,
            kl="reference",
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.0))
        packed = cached_teacher.attach(x, logits=logits)
        history = distiller.fit(packed, y, batch_size=B, shuffle=True, verbose=0)
        return history.history["soft_loss"][-1]

    assert soft_loss(None) < 1e-6
    assert soft_loss(np.roll(cached_teacher.logits, 1, axis=0)) > 1e-2


def test_predict_and_evaluate_take_plain_inputs():
    x, y = _data()
    _, cached, cached_teacher = _live_and_cached(_conv_teacher(), x)
    student_out = cached.student.predict(x, verbose=0)
    np.testing.assert_allclose(cached.predict(x, verbose=0), student_out, rtol=1e-6)
    packed = cached_teacher.attach(x)
    np.testing.assert_allclose(
        cached.predict(packed, verbose=0), student_out, rtol=1e-6
    )
    # Plain x has no logits: the soft term is 0 and the loss the weighted CE.
    logs = cached.evaluate(x, y, batch_size=B, verbose=0, return_dict=True)
    assert logs["soft_loss"] == 0.0
    np.testing.assert_allclose(logs["hard_loss"], ref.ce(student_out, y), rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], (1 - ALPHA) * logs["hard_loss"], 1e-5)
    # With the logits attached, evaluate sees the soft term again.
    with_logits = cached.evaluate(packed, y, batch_size=B, verbose=0, return_dict=True)
    assert with_logits["soft_loss"] > 1e-3


def test_attach_rejects_logits_of_other_inputs():
    x, _ = _data()
    cached = teachers.CachedTeacher.from_model(_conv_teacher(), x)
    with pytest.raises(ValueError, match=rf"`logits` has {N} rows but `x` has {N - 1}"):
        cached.attach(x[:-1])
    with pytest.raises(ValueError, match=rf"has {N + 2} rows but `x` has {N}"):
        cached.attach(x, logits=np.zeros((N + 2, K), "float32"))


def test_attach_needs_logits():
    with pytest.raises(ValueError, match="No logits"):
        teachers.CachedTeacher(num_classes=K).attach(_data()[0])


def test_from_model_refuses_a_softmax_teacher():
    inp = keras.Input(SHAPE)
    out = keras.layers.Dense(K, activation="softmax")(keras.layers.Flatten()(inp))
    probabilities = keras.Model(inp, out, name="probs")
    with pytest.raises(ValueError, match="ends in a softmax"):
        teachers.CachedTeacher.from_model(probabilities, _data()[0])


# The refusal of random augmentation needs `CachedTeacher.from_model(model,
# dataset, split=..., augment=...)` (proposed in benchmarks/README.md); these
# tests run as soon as teachers.py has it.
_DATASET_API = (
    "augment" in inspect.signature(teachers.CachedTeacher.from_model).parameters
)
needs_dataset_api = pytest.mark.skipif(
    not _DATASET_API, reason="CachedTeacher.from_model(..., augment=) not merged yet"
)


def _digits_teacher(data_set):
    keras.utils.set_random_seed(0)
    inp = keras.Input(data_set.input_shape)
    out = keras.layers.Dense(data_set.num_classes)(keras.layers.Flatten()(inp))
    return keras.Model(inp, out, name="digits_teacher")


@needs_dataset_api
def test_from_model_refuses_randomly_augmented_data():
    from keras_tfkd import data

    digits = data.load("digits")
    model = _digits_teacher(digits)
    for augment in (None, True, "shift"):
        with pytest.raises(ValueError, match="augmentation is random"):
            teachers.CachedTeacher.from_model(
                model, digits, split="train", augment=augment
            )
    cached = teachers.CachedTeacher.from_model(
        model, digits, split="train", augment=False
    )
    ordered = data.pipeline(digits, "train", 64, augment=False, shuffle=False)
    expected = model.predict(ordered, verbose=0)
    np.testing.assert_allclose(cached.logits, expected, rtol=1e-5, atol=1e-6)


@needs_dataset_api
def test_from_model_refuses_a_tf_data_pipeline():
    tf = pytest.importorskip("tensorflow")
    x, y = _data()
    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(B)
    with pytest.raises(TypeError, match="arrays"):
        teachers.CachedTeacher.from_model(_conv_teacher(), stream)


_PIPELINE_API = (
    _DATASET_API
    and "teacher_logits"
    in inspect.signature(
        __import__("keras_tfkd.data", fromlist=["pipeline"]).pipeline
    ).parameters
)
needs_pipeline_api = pytest.mark.skipif(
    not _PIPELINE_API, reason="data.pipeline(..., teacher_logits=) not merged yet"
)


@needs_pipeline_api
def test_pipeline_carries_each_examples_logits_through_the_shuffle():
    from keras_tfkd import data

    digits = data.load("digits")
    model = _digits_teacher(digits)
    cached = teachers.CachedTeacher.from_model(
        model, digits, split="train", augment=False
    )
    stream = data.pipeline(
        digits, "train", 64, augment=False, seed=0, teacher_logits=cached
    )
    first_labels = None
    for inputs, labels in stream:
        assert set(inputs) == {"inputs", "teacher_logits"}
        expected = ops.convert_to_numpy(model(inputs["inputs"], training=False))
        np.testing.assert_allclose(
            inputs["teacher_logits"], expected, rtol=1e-5, atol=1e-5
        )
        first_labels = labels if first_labels is None else first_labels
    in_order = next(iter(data.pipeline(digits, "train", 64, augment=False)))[1]
    assert not np.array_equal(first_labels, in_order)  # it was shuffled
    with pytest.raises(ValueError, match="random 'shift' augmentation"):
        data.pipeline(digits, "train", 64, teacher_logits=cached)
    with pytest.raises(ValueError, match="shape"):
        data.pipeline(
            digits, "train", 64, augment=False, teacher_logits=cached.logits[:-1]
        )
