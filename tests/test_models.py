"""Tests for the model zoo ``keras_tfkd.models`` (run once per Keras backend).

Building and running the big CIFAR models is slow on a small CPU machine, above all on
JAX, where every new weight shape compiles its initializer (half a minute for
GoogLeNet or DenseNet121 on 2 CPU cores) and an eager forward pass compiles each
operation for its shape (so on JAX the forward pass is one jitted ``predict`` call).
Every paper model's parameter count (the same Keras layers, so the same count on
every backend), 32x32 forward pass and small-input forward passes are therefore
checked on TensorFlow and PyTorch; on JAX, ResNet18 and the small models, plus
ShuffleNetV2's small inputs (its channel split and shuffle are the most
shape-sensitive code) and save/load round trip.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_tfkd import models

BACKEND = keras.backend.backend()
SMALL_MODELS = ("cnn5", "cnn_small", "cnn_tiny", "mlp")
# Teachers of a paper row with no published parameter count.
EXTRA_MODELS = ("resnet101",)
PAPER_MODELS = tuple(sorted(models.PAPER_PARAMETER_COUNTS))
# Paper models whose small-input forward runs by default: the plain ResNet, and
# ShuffleNetV2, whose channel split/shuffle is the most shape-sensitive code.
FAST_SMALL_INPUT = ("resnet18", "shufflenet_v2")
# The image models (the language models, token ids -> (N, L, V) logits, are
# checked in tests/test_lm_study.py).
IMAGE_MODELS = sorted(set(models.REGISTRY) - set(models.LANGUAGE_MODELS))
SMALL_INPUT_SHAPES = ((8, 8, 1), (28, 28, 1))


def _is_fast(name: str) -> bool:
    if name in SMALL_MODELS:
        return True
    return BACKEND != "jax" or name == "resnet18"


def _param(name: str, fast: bool, *values):
    marks = ()
    if not fast:  # a big paper model: slow everywhere, skipped on JAX
        marks = (
            pytest.mark.slow,
            pytest.mark.skipif(
                BACKEND == "jax",
                reason="a big paper model: checked on TensorFlow and PyTorch (on "
                "JAX each build compiles every weight initializer)",
            ),
        )
    return pytest.param(
        name, *values, marks=marks, id="-".join(map(str, (name,) + values))
    )


def _images(shape, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *shape)).astype("float32")


def _logits(model, x):
    if BACKEND == "jax":  # one compilation, not one per operation and shape
        return model.predict(x, batch_size=len(x), verbose=0)
    return keras.ops.convert_to_numpy(model(x, training=False))


# --------------------------------------------------------------------------- registry


def test_available_lists_all_models():
    names = models.available()
    assert names == sorted(names)
    assert set(names) == set(SMALL_MODELS) | set(PAPER_MODELS) | set(
        EXTRA_MODELS
    ) | set(models.LANGUAGE_MODELS)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="nope") as info:
        models.get_model("nope", 10)
    for name in models.available():
        assert name in str(info.value)


def test_register_rejects_duplicate_names():
    with pytest.raises(ValueError, match="already registered"):
        models.register("mlp")(lambda num_classes, input_shape: None)


def test_builders_have_docstrings():
    for name, builder in models.REGISTRY.items():
        doc = builder.__doc__ or ""
        assert "Example" in doc, name
        if name in models.PAPER_PARAMETER_COUNTS:
            assert "M trainable parameters" in doc, name


# ------------------------------------------------------------- build, count, forward


@pytest.mark.parametrize(
    "name", [_param(name, _is_fast(name)) for name in IMAGE_MODELS]
)
def test_build_count_and_forward(name):
    model = models.get_model(name, 100)
    assert isinstance(model, keras.Model)
    assert model.name == name
    assert tuple(model.input_shape) == (None, 32, 32, 3)
    assert tuple(model.output_shape) == (None, 100)
    if name in models.PAPER_PARAMETER_COUNTS:
        counted = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        assert counted == models.count_parameters(model)
        reference = models.PAPER_PARAMETER_COUNTS[name]
        assert abs(counted - reference) <= 0.01 * reference, (counted, reference)
    logits = _logits(model, _images((32, 32, 3)))
    assert logits.shape == (2, 100)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize(
    "name, shape",
    [
        _param(name, name in SMALL_MODELS or name in FAST_SMALL_INPUT, shape)
        for name in IMAGE_MODELS
        for shape in SMALL_INPUT_SHAPES
    ],
)
def test_small_inputs(name, shape):
    model = models.get_model(name, 10, input_shape=shape)
    logits = _logits(model, _images(shape))
    assert logits.shape == (2, 10)
    assert np.all(np.isfinite(logits))


def test_logits_are_not_normalised():
    model = models.get_model("cnn_tiny", 5, input_shape=(8, 8, 1))
    logits = _logits(model, _images((8, 8, 1), batch=4))
    assert not np.allclose(logits.sum(axis=-1), 1.0)


# Parameter counts only, no forward pass: the same Keras layers, so the same
# count on every backend; run in one session (tests/conftest.py). On JAX each
# build compiles every weight initializer (9 s of CPU for these two tests).
@pytest.mark.one_backend
@pytest.mark.parametrize(
    "name, kwargs, lo, hi",
    [
        ("cnn_tiny", {}, 1_000, 40_000),
        ("cnn_small", {}, 100_000, 300_000),
        ("mlp", {}, 5_000, 100_000),
    ],
)
def test_small_model_sizes(name, kwargs, lo, hi):
    model = models.get_model(name, 10, input_shape=(8, 8, 1), **kwargs)
    assert lo <= models.count_parameters(model) <= hi


@pytest.mark.one_backend  # parameter counts: see test_small_model_sizes
@pytest.mark.parametrize("name", ["cnn_tiny", "cnn_small", "mlp"])
def test_width_kwarg_changes_size(name):
    narrow = models.get_model(name, 10, input_shape=(8, 8, 1), width=4)
    wide = models.get_model(name, 10, input_shape=(8, 8, 1), width=16)
    assert models.count_parameters(narrow) < models.count_parameters(wide)


def test_unknown_kwarg_is_rejected():
    with pytest.raises(TypeError):
        models.get_model("cnn_tiny", 10, input_shape=(8, 8, 1), no_such_option=1)


# --------------------------------------------------------------------- serialisation


@pytest.mark.parametrize(
    "name, shape",
    [_param(name, True, (8, 8, 1)) for name in SMALL_MODELS]
    + [_param("shufflenet_v2", True, (8, 8, 1))],
)
def test_save_load_round_trip(name, shape, tmp_path):
    model = models.get_model(name, 10, input_shape=shape)
    x = _images(shape, batch=3, seed=1)
    before = _logits(model, x)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.name == name
    assert models.count_parameters(restored) == models.count_parameters(model)
    after = _logits(restored, x)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------- training


def _compile(model, learning_rate=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


@pytest.mark.gradients
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_models_fit_random_batches(name):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=64)
    model = models.get_model(name, 10, input_shape=(8, 8, 1))
    _compile(model, 3e-3)
    history = model.fit(x, y, batch_size=16, epochs=6, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.gradients
@pytest.mark.parametrize(
    # cnn_small passes 0.99 after 3 epochs on every backend; cnn_tiny needs 5.
    "name, min_accuracy, epochs",
    [("cnn_tiny", 0.85, 5), ("cnn_small", 0.95, 3)],
)
def test_small_models_learn_digits(name, min_accuracy, epochs):
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    keras.utils.set_random_seed(0)
    model = models.get_model(name, 10, input_shape=(8, 8, 1))
    _compile(model)
    model.fit(x[:1400], y[:1400], batch_size=32, epochs=epochs, verbose=0)
    _, accuracy = model.evaluate(x[1400:], y[1400:], verbose=0)
    assert accuracy >= min_accuracy
