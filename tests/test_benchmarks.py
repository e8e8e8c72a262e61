"""The benchmark script and the backend fast path it measures.

* `benchmarks/run.py --quick` runs on the current backend and prints every row
  (no timing is asserted: timings belong to the benchmark's ratios).
* `keras_tfkd._backend.frozen_forward` gives the logits of
  ``model(x, training=False)`` on every backend, for every layer kind its
  PyTorch fast path handles (and the ones it hands back to Keras).
"""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers, ops

from keras_tfkd import _backend, models

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location(
    "keras_tfkd_benchmarks_run", ROOT / "benchmarks" / "run.py"
)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

BACKEND = keras.backend.backend()


# --------------------------------------------------------------- run.py


def _table_rows(stdout):
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(bench.COLUMNS) and cells[0] in bench.BACKENDS:
            rows[(cells[1], cells[2])] = dict(zip(bench.COLUMNS, cells))
    return rows


@pytest.mark.slow
# The script's smoke run, in the torch session only: 3-3.5 min a session on
# TensorFlow and JAX (CI, 2026-12-07). What its rows time (fit, the losses, the
# pipeline) is tested on every backend elsewhere; `make bench` runs them all.
@pytest.mark.one_backend
def test_quick_run_prints_every_row():
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    script = str(ROOT / "benchmarks" / "run.py")
    done = subprocess.run(
        [sys.executable, script, "--quick", "--threads", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _table_rows(done.stdout)
    expected = bench.row_names(bench.QUICK["models"], BACKEND)
    assert list(rows) == expected
    for row in rows.values():
        assert row["backend"] == BACKEND
        assert math.isfinite(float(row["measured"]))
        if row["target"] == "reported":
            assert row["holds"] == "-"
        elif row["target"].startswith(">= "):  # a floor: the input pipeline
            target = float(row["target"].removeprefix(">= "))
            assert row["holds"] == ("yes" if float(row["measured"]) >= target else "no")
        else:
            target = float(row["target"].removeprefix("<= "))
            assert row["holds"] == ("yes" if float(row["measured"]) <= target else "no")
    assert "wall time" in done.stdout


def test_every_backend_has_the_rows_of_the_issue():
    for backend in bench.BACKENDS:
        labels = [label for _, label in bench.row_names(("cnn",), backend)]
        for needed in (
            "tfkd_reg / plain fit",
            "label_smoothing / plain fit",
            "kd (live 2x-wide teacher) / keras.distillation",
            "tfkd_self (cached logits) / plain fit",
            "kd (cached logits) / plain fit",
            bench.PIPELINE_ROW.format(engine="numpy"),
            bench.LINEAR_ROW,
        ):
            assert needed in labels, (backend, needed)
        assert sum("soft term at K=" in label for label in labels) == 4
    torch_only = "kd, teacher via _backend.frozen_forward / keras.distillation"
    assert torch_only in [r for _, r in bench.row_names(("cnn",), "torch")]
    assert torch_only not in [r for _, r in bench.row_names(("cnn",), "jax")]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "vgg"], "--models must name cnn and/or resnet18"),
        (["--repeats", "0"], "--repeats must be >= 1, got --repeats=0"),
        (["--threads", "-2"], "--threads must be >= 1, got --threads=-2"),
    ],
)
def test_bad_arguments_name_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_arguments_shape_the_configuration():
    _, config = bench.parse_args(["--quick", "--repeats", "3", "--clock", "cpu"])
    assert config["models"] == ("cnn",)
    assert config["cnn"]["repeats"] == config["soft"]["repeats"] == 3
    assert config["clock"] == "cpu"
    _, full = bench.parse_args(["--models", "resnet18"])
    assert full["models"] == ("resnet18",) and full["resnet18"]["batch"] == 128
    assert bench.FULL["cnn"]["repeats"] == 7  # parse_args copies, never mutates


def test_subprocesses_get_the_arguments_but_not_the_driver_flags():
    argv = ["--backend", "all", "--quick", "--output=r.md", "--threads", "1"]
    assert bench._child_argv(argv) == ["--quick", "--threads", "1"]


def test_table_is_markdown_with_one_line_per_row():
    row = dict.fromkeys(bench.COLUMNS, "x")
    lines = bench.format_table([row, row]).splitlines()
    assert len(lines) == 4
    assert lines[0] == "| " + " | ".join(bench.COLUMNS) + " |"
    assert lines[2] == "| x | x | x | x | x | x | x |"


# ---------------------------------------------------- _backend.frozen_forward


def _randomise_batch_norm(model, seed=0):
    """Non-trivial moving statistics, so inference-mode BN really does something."""
    r = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(r.normal(size=c) * 0.2)
            layer.moving_variance.assign(r.uniform(0.5, 2.0, size=c))
            if layer.scale:
                layer.gamma.assign(r.uniform(0.5, 1.5, size=c))
            if layer.center:
                layer.beta.assign(r.normal(size=c) * 0.1)
    return model


def _every_layer_kind(input_shape):
    """One functional model with every conv/BN/pool configuration of the fast path."""
    keras.utils.set_random_seed(3)
    inp = keras.Input(input_shape)
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu")(inp)
    x = layers.BatchNormalization()(x)
    x = layers.Conv2D(6, 3, padding="same", groups=2, use_bias=False)(x)
    x = layers.BatchNormalization(center=False, epsilon=1e-3)(x)
    x = layers.Conv2D(8, 3, padding="same", dilation_rate=2, activation="tanh")(x)
    a = layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)(x)
    b = layers.Conv2D(16, 1, strides=2, padding="valid")(x)
    x = layers.Add()([a, b])
    x = layers.BatchNormalization(scale=False)(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = layers.Concatenate()([x, layers.MaxPooling2D(1)(x)])
    block = keras.Sequential(
        [keras.Input(x.shape[1:]), layers.Conv2D(4, 2, padding="valid")],
        name="nested",
    )
    x = layers.GlobalAveragePooling2D()(block(x))
    x = layers.Dropout(0.5)(layers.BatchNormalization()(layers.Dense(12)(x)))
    model = keras.Model(inp, layers.Dense(5)(x), name="every_kind")
    return _randomise_batch_norm(model)


def _assert_frozen_forward_matches(model, x):
    expected = ops.convert_to_numpy(model(x, training=False))
    got = _backend.frozen_forward(model, x)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), expected, rtol=1e-5, atol=1e-5 * scale
    )
    return got


@pytest.mark.parametrize("size", [13, 16])  # odd and even: asymmetric 'same' pads
def test_frozen_forward_equals_inference_call(size):
    model = _every_layer_kind((size, size, 3))
    model.trainable = False
    x = np.random.default_rng(0).normal(size=(4, size, size, 3)).astype("float32")
    got = _assert_frozen_forward_matches(model, x)
    if BACKEND == "torch":
        assert not got.requires_grad


def test_fast_path_handles_convolutions_batch_norms_and_max_pools():
    model = _every_layer_kind((16, 16, 3))
    fast = (
        layers.Conv2D,
        layers.DepthwiseConv2D,
        layers.BatchNormalization,
        layers.MaxPooling2D,
    )
    handled = {"fast": 0, "keras": 0}
    for layer in model._flatten_layers(include_self=False):
        has_handler = _backend._torch_handler(layer) is not None
        expected = isinstance(layer, fast) or layer.name == "nested"
        assert has_handler == expected, layer.name
        handled["fast" if has_handler else "keras"] += 1
    assert handled["fast"] >= 12 and handled["keras"] >= 8


@pytest.mark.skipif(BACKEND != "torch", reason="elsewhere it is the Keras call")
@pytest.mark.parametrize("name", ["cnn_small", "resnet18", "mobilenet_v2"])
def test_frozen_forward_equals_inference_call_on_zoo_models(name):
    kwargs = {"width": 8} if name == "cnn_small" else {}
    model = _randomise_batch_norm(models.get_model(name, 10, (8, 8, 3), **kwargs))
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    _assert_frozen_forward_matches(model, x)


def test_frozen_forward_reads_the_current_weights():
    model = _every_layer_kind((16, 16, 3))
    x = np.random.default_rng(2).normal(size=(2, 16, 16, 3)).astype("float32")
    before = ops.convert_to_numpy(_backend.frozen_forward(model, x))
    r = np.random.default_rng(9)
    model.set_weights([w + r.normal(size=w.shape) * 0.1 for w in model.get_weights()])
    after = _assert_frozen_forward_matches(model, x)
    assert np.abs(ops.convert_to_numpy(after) - before).max() > 1e-3


def test_frozen_forward_of_models_it_does_not_walk():
    """Sequential models, subclassed models and other dtypes: plain Keras calls."""

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2D(3, 3)
            self.bn = layers.BatchNormalization()

        def call(self, x, training=None):
            return ops.mean(self.bn(self.conv(x), training=training), axis=(1, 2))

    x = np.random.default_rng(3).normal(size=(2, 6, 6, 2)).astype("float32")
    sequential = keras.Sequential(
        [keras.Input((6, 6, 2)), layers.Conv2D(3, 3), layers.BatchNormalization()]
    )
    subclassed = Subclassed()
    subclassed(x)
    for model in (_randomise_batch_norm(sequential), _randomise_batch_norm(subclassed)):
        _assert_frozen_forward_matches(model, x)
    inp = keras.Input((6, 6, 2))
    half = keras.Model(inp, layers.Conv2D(3, 3, dtype="mixed_bfloat16")(inp))
    out = _backend.frozen_forward(half, x)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.cast(out, "float32")),
        ops.convert_to_numpy(ops.cast(half(x, training=False), "float32")),
        rtol=1e-2,
        atol=1e-2,
    )
