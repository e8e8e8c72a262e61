"""One test per private-Keras access in `keras_tfkd._keras_compat`.

Each test runs the access on the installed Keras and checks the behaviour
keras-tfkd relies on; a failure names the access, so that a Keras upgrade
that moves one shows at once what to update in `_keras_compat`. The last two
tests keep the fences closed: no private Keras outside `_keras_compat`, and
no backend branch or backend import outside the backend fences.
"""

import ast
import pathlib

import keras
import numpy as np
import pytest
from keras import ops

from keras_tfkd import _keras_compat, callbacks, schedules

BACKEND = keras.backend.backend()

MOVED = (
    f"Keras {keras.__version__} moved or changed a private API keras-tfkd uses "
    f"(checked on Keras {', '.join(_keras_compat.CHECKED_ON)}): update "
    "keras_tfkd/_keras_compat.py"
)


def _functional():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    outputs = keras.layers.Dense(2, name="out")(keras.layers.ReLU()(hidden))
    return keras.Model(inputs, outputs)


def _np(x):
    return ops.convert_to_numpy(x)


def _x():
    return np.linspace(-1.0, 1.0, 12, dtype="float32").reshape(4, 3)


# ------------------------------------------------------------------ losses
def test_unscale_loss_for_distribution(monkeypatch):
    assert _keras_compat._keras_unscale() is not None, (
        f"{MOVED}: keras.src.losses.loss.unscale_loss_for_distribution is gone"
    )
    value = ops.convert_to_tensor(2.5)
    one = _keras_compat.unscale_loss_for_distribution(value)
    assert float(one) == 2.5, f"{MOVED}: unscaling changed a 1-replica loss"
    if BACKEND == "tensorflow":
        import tensorflow as tf

        class FourReplicas:
            num_replicas_in_sync = 4

        monkeypatch.setattr(tf.distribute, "get_strategy", lambda: FourReplicas())
        four = _keras_compat.unscale_loss_for_distribution(value)
        assert float(four) == 10.0, (
            f"{MOVED}: unscale_loss_for_distribution no longer multiplies by "
            "tf.distribute's num_replicas_in_sync"
        )


# ------------------------------------------------------------------- model
def test_aggregate_additional_loss():
    assert hasattr(keras.Model, "_aggregate_additional_loss"), (
        f"{MOVED}: keras.Model._aggregate_additional_loss is gone"
    )
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                2, kernel_regularizer=keras.regularizers.L2(0.1), name="d"
            ),
        ]
    )
    model.compile(loss="mse")
    x, y = _x(), np.zeros((4, 2), "float32")
    y_pred = model(x)
    assert len(model.losses) == 1
    mse = keras.losses.MeanSquaredError()(y, y_pred)
    ours = mse + sum(
        _keras_compat.aggregate_additional_loss(model, loss) for loss in model.losses
    )
    theirs = model.compute_loss(x, y, y_pred)
    np.testing.assert_allclose(
        float(ours),
        float(theirs),
        rtol=1e-6,
        err_msg=f"{MOVED}: the regulariser "
        "is no longer added as keras.Model.compute_loss adds it",
    )
    whole = _keras_compat.aggregate_additional_loss(
        model, ops.convert_to_tensor([1, 2, 3])
    )
    assert "float" in str(whole.dtype) and float(whole) == 6.0, (
        f"{MOVED}: _aggregate_additional_loss no longer sums and casts to float"
    )


# ------------------------------------------------------------ functional graph
def test_is_functional():
    try:
        from keras.src.models.functional import Functional  # noqa: F401
    except ImportError as e:  # pragma: no cover - what this test is for
        pytest.fail(f"{MOVED}: keras.src.models.functional.Functional: {e}")
    assert _keras_compat.is_functional(_functional()), f"{MOVED}: Functional"

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not _keras_compat.is_functional(Subclassed())
    assert not _keras_compat.is_functional(keras.layers.Dense(2))
    assert not _keras_compat.is_functional(None)


def test_sequential_graph():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    graph = _keras_compat.sequential_graph(model)
    assert graph is not None and _keras_compat.is_functional(graph), (
        f"{MOVED}: a built keras.Sequential no longer keeps its Functional graph "
        "in `_functional`"
    )
    np.testing.assert_allclose(_np(graph(_x())), _np(model(_x())), err_msg=MOVED)
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    assert _keras_compat.sequential_graph(unbuilt) is None


def test_has_graph_runner():
    assert _keras_compat.has_graph_runner(_functional()), (
        f"{MOVED}: Functional._run_through_graph is gone"
    )


def test_run_through_graph():
    model, x = _functional(), _x()
    same = _keras_compat.run_through_graph(model, [x], lambda op: op)
    same = same[0] if isinstance(same, (list, tuple)) else same
    np.testing.assert_allclose(_np(same), _np(model(x)), rtol=1e-6, err_msg=MOVED)
    seen = []

    def double_output_layer(op):
        seen.append(op.name)
        if op.name == "out":
            return lambda *args, **kwargs: 2.0 * op(*args, **kwargs)
        return op

    doubled = _keras_compat.run_through_graph(model, [x], double_output_layer)
    doubled = doubled[0] if isinstance(doubled, (list, tuple)) else doubled
    np.testing.assert_allclose(
        _np(doubled),
        2.0 * _np(model(x)),
        rtol=1e-6,
        err_msg=f"{MOVED}: _run_through_graph no longer calls operation_fn(layer)",
    )
    assert {"hidden", "out"} <= set(seen), f"{MOVED}: layers not walked: {seen}"


def test_graph_operation_fn():
    try:
        from keras.src.models.functional import operation_fn  # noqa: F401
    except ImportError as e:  # pragma: no cover - what this test is for
        pytest.fail(f"{MOVED}: keras.src.models.functional.operation_fn: {e}")
    dropout = keras.layers.Dropout(0.5, seed=1)
    x = np.ones((8, 128), "float32")
    inference = _keras_compat.graph_operation_fn(dropout, training=False)(x)
    np.testing.assert_array_equal(
        _np(inference), x, err_msg=f"{MOVED}: training=False not passed on"
    )
    train = _np(_keras_compat.graph_operation_fn(dropout, training=True)(x))
    assert (train == 0).any(), f"{MOVED}: training=True not passed on"


# --------------------------------------------------------------- optimizer
def _variables():
    return [
        keras.Variable(np.ones((2, 2), "float32"), name="kernel"),
        keras.Variable(np.ones((3,), "float32"), name="bias"),
    ]


def test_nested_layers():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(2, name="inner_dense")

        def call(self, x):
            return self.inner(x)

    class Outer(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.block = Block(name="block")

        def call(self, x):
            return self.block(x)

    names = [layer.name for layer in _keras_compat.nested_layers(Outer())]
    assert {"block", "inner_dense"} <= set(names), f"{MOVED}: nested_layers"


def test_record_outputs():
    model = _functional()
    hidden = model.get_layer("hidden")
    seen = []
    with _keras_compat.record_outputs([hidden], lambda layer, out: seen.append(out)):
        model(_x())
    assert len(seen) == 1, f"{MOVED}: record_outputs (layer call not shadowed)"
    expected = hidden(_x())
    np.testing.assert_allclose(_np(seen[0]), _np(expected), rtol=1e-6)
    assert "call" not in vars(hidden), f"{MOVED}: record_outputs left a patch"
    model(_x())
    assert len(seen) == 1


def test_uses_weight_decay():
    assert hasattr(keras.optimizers.SGD, "_use_weight_decay"), (
        f"{MOVED}: BaseOptimizer._use_weight_decay is gone"
    )
    kernel, bias = _variables()
    opt = keras.optimizers.SGD(0.1, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_list=[bias])
    opt.build([kernel, bias])
    assert _keras_compat.uses_weight_decay(opt, kernel) is True, MOVED
    assert _keras_compat.uses_weight_decay(opt, bias) is False, (
        f"{MOVED}: exclude_from_weight_decay(var_list=...) is not honoured"
    )
    named = keras.optimizers.SGD(0.1, weight_decay=0.1)
    named.exclude_from_weight_decay(var_names=["bias"])
    named.build([kernel, bias])
    assert _keras_compat.uses_weight_decay(named, bias) is False, (
        f"{MOVED}: exclude_from_weight_decay(var_names=...) is not honoured"
    )


def test_variable_index():
    assert hasattr(keras.optimizers.SGD, "_get_variable_index"), (
        f"{MOVED}: BaseOptimizer._get_variable_index is gone"
    )
    kernel, bias = _variables()
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    opt.build([kernel, bias])
    indices = [_keras_compat.variable_index(opt, v) for v in (kernel, bias)]
    assert indices == [0, 1], f"{MOVED}: variable indices {indices}"
    for i, v in zip(indices, (kernel, bias)):
        assert tuple(opt.momentums[i].shape) == tuple(v.shape), (
            f"{MOVED}: optimizer.momentums[index] is not the variable's slot"
        )


def test_no_decoupled_weight_decay():
    assert hasattr(keras.optimizers.SGD, "_apply_weight_decay"), (
        f"{MOVED}: BaseOptimizer._apply_weight_decay is gone"
    )

    class Coupled(_keras_compat.NoDecoupledWeightDecay, keras.optimizers.SGD):
        pass

    def step(opt):
        (kernel, _) = variables = _variables()
        opt.apply([ops.zeros(v.shape, "float32") for v in variables], variables)
        return _np(kernel)

    decayed = step(keras.optimizers.SGD(1.0, weight_decay=0.5))
    assert np.all(decayed < 1.0), "Keras's SGD no longer applies weight_decay"
    kept = step(Coupled(1.0, weight_decay=0.5))
    np.testing.assert_array_equal(
        kept,
        np.ones((2, 2)),
        err_msg=f"{MOVED}: Keras applies decoupled weight decay through another "
        "hook than _apply_weight_decay; CoupledSGD would decay twice",
    )
    assert issubclass(schedules.CoupledSGD, _keras_compat.NoDecoupledWeightDecay)


# ------------------------------------------------------------ RunBackup
def test_run_backup_overrides_every_backup_and_restore_hook(tmp_path):
    """RunBackup keeps its own state: no BackupAndRestore hook may run."""
    parent = keras.callbacks.BackupAndRestore
    hooks = {
        name
        for klass in parent.__mro__
        if issubclass(klass, parent)
        for name in vars(klass)
        if name.startswith("on_")
    }
    left = {h for h in hooks if h not in vars(callbacks.RunBackup)}
    assert not left, (
        f"Keras {keras.__version__}'s BackupAndRestore has hooks RunBackup does "
        f"not override: {sorted(left)}; override them in keras_tfkd/callbacks/safety.py"
    )
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    backup = callbacks.RunBackup(tmp_path / "backup")
    model.fit(_x(), np.zeros((4, 2)), epochs=2, verbose=0, callbacks=[backup])
    files = sorted(p.name for p in (tmp_path / "backup").iterdir())
    assert files == ["backup.json", "epoch-2.weights.h5"], files
    assert callbacks.RunBackup.read_state(tmp_path / "backup")["epoch"] == 2


# ----------------------------------------------------------------- fences
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_tfkd"

# Private Keras attributes keras-tfkd has used (reach them via _keras_compat).
PRIVATE_KERAS_NAMES = {
    "_aggregate_additional_loss",
    "_run_through_graph",
    "_functional",
    "_use_weight_decay",
    "_get_variable_index",
    "_apply_weight_decay",
    "_current_epoch",
    "_save_model",
    "_load_model",
    "_initial_epoch",
    "_iterations",
    "_learning_rate",
    "_variables",
    "_trainable_variables",
    "_var_key",
}

# Modules allowed to branch on the backend or import a backend framework.
BACKEND_FENCES = {
    "_backend.py",  # training-path fast paths and per-backend settings
    "distribution.py",  # each backend's data-parallel engine
    "_sharded.py",  # per-example state split by rows over JAX devices
    "data/_tfdata.py",  # the tf.data pipeline, label checks of a user's tf.data
    "data/batching.py",  # pipeline_engine: tf.data on the TensorFlow backend
    "cli/backend.py",  # picks KERAS_BACKEND before running a command
    "_chunked.py",  # each backend's loop and custom gradient of a chunked loss
    "_fused.py",  # each backend's loop and custom gradient of the fused projection
}
FRAMEWORKS = ("tensorflow", "jax", "torch")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


# The two source scans below read keras_tfkd's files with `ast` and import
# nothing: the same on every backend, so they run in one session.
@pytest.mark.one_backend
def test_private_keras_only_in_keras_compat():
    found = []
    for name, tree in _modules():
        if name == "_keras_compat.py":
            continue
        for node in ast.walk(tree):
            module = None
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
            elif isinstance(node, ast.Import):
                module = " ".join(alias.name for alias in node.names)
            if module is not None and "keras.src" in module:
                found.append(f"{name}:{node.lineno} imports {module}")
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_KERAS_NAMES:
                found.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ClassDef):  # overrides of Keras internals
                for item in node.body:
                    if (
                        isinstance(item, ast.FunctionDef)
                        and item.name in PRIVATE_KERAS_NAMES
                    ):
                        found.append(f"{name}:{item.lineno} def {item.name}")
            if (
                isinstance(node, ast.Constant)
                and node.value in PRIVATE_KERAS_NAMES
                and isinstance(node.value, str)
            ):
                found.append(f"{name}:{node.lineno} {node.value!r}")
    assert not found, (
        "private Keras outside keras_tfkd/_keras_compat.py (add a function "
        f"there and a test here): {found}"
    )


def _is_backend_call(node):
    return isinstance(node, ast.Call) and ast.unparse(node.func) in (
        "keras.backend.backend",
        "backend.backend",
    )


@pytest.mark.one_backend
def test_backend_code_only_in_the_fences():
    found = []
    for name, tree in _modules():
        if name in BACKEND_FENCES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]]
            else:
                roots = []
            for root in roots:
                if root in FRAMEWORKS:
                    found.append(f"{name}:{node.lineno} imports {root}")
            if isinstance(node, (ast.Compare, ast.If, ast.IfExp, ast.Match)):
                test = getattr(node, "test", getattr(node, "subject", node))
                if any(_is_backend_call(n) for n in ast.walk(test)):
                    found.append(f"{name}:{node.lineno} branches on the backend")
    assert not found, (
        "backend-specific code outside the fences (move it to "
        f"keras_tfkd/_backend.py): {sorted(set(found))}"
    )
