"""The one place where keras-tfkd reaches into private Keras.

Everything else in the package uses public Keras 3 API only. Each function
(or the mixin) below is one access to a Keras internal: its docstring says
what it reaches, why keras-tfkd needs it and on which Keras releases it was
checked. ``tests/test_keras_compat.py`` has one test per access that runs it
on the installed Keras and fails with a message naming the access when a
Keras release moves or changes it; run that file first after upgrading Keras.

==============================  ===============================================
access                          used by
==============================  ===============================================
`unscale_loss_for_distribution` `Distiller.compute_loss` (logged loss terms)
`aggregate_additional_loss`     `Distiller.compute_loss` (regularisation)
`is_functional`                 `_backend.frozen_forward` (PyTorch fast path)
`sequential_graph`              `_backend.frozen_forward` (PyTorch fast path)
`has_graph_runner`              `_backend.frozen_forward` (PyTorch fast path)
`run_through_graph`             `_backend.frozen_forward` (PyTorch fast path)
`graph_operation_fn`            `_backend.frozen_forward` (PyTorch fast path)
`nested_layers`                 `features.find_layer` (feature distillation)
`record_outputs`                `features.FeatureCapture` (feature distillation)
`uses_weight_decay`             `schedules.CoupledSGD.update_step`
`variable_index`                `schedules.CoupledSGD.update_step`
`NoDecoupledWeightDecay`        `schedules.CoupledSGD` (a base class)
==============================  ===============================================

Checked on Keras 3.15.1 with the TensorFlow, JAX and PyTorch backends
(`CHECKED_ON`). The ``keras.src`` modules are imported lazily, inside the
functions, so a moved module breaks only the feature that needs it (and its
test here), never ``import keras_tfkd``.
"""

from __future__ import annotations

import contextlib

__all__ = [
    "CHECKED_ON",
    "NoDecoupledWeightDecay",
    "aggregate_additional_loss",
    "graph_operation_fn",
    "has_graph_runner",
    "is_functional",
    "nested_layers",
    "record_outputs",
    "run_through_graph",
    "sequential_graph",
    "unscale_loss_for_distribution",
    "uses_weight_decay",
    "variable_index",
]

#: The Keras releases every access here was checked on.
CHECKED_ON = ("3.15.1",)


# --------------------------------------------------------------------- losses
def _keras_unscale():
    """Keras's ``unscale_loss_for_distribution``, or None if it moved."""
    try:
        from keras.src.losses.loss import unscale_loss_for_distribution
    except ImportError:  # pragma: no cover - older or newer Keras layout
        return None
    return unscale_loss_for_distribution


def unscale_loss_for_distribution(value):
    """`value` times the number of replicas in sync (1 outside a strategy).

    Reaches ``keras.src.losses.loss.unscale_loss_for_distribution``. Under
    `tf.distribute` each replica's loss is scaled by ``1 / replicas``; Keras
    undoes that with this helper before it logs ``loss``, and the `Distiller`
    does the same for the ``hard_loss`` and ``soft_loss`` it logs, so they
    read like single-device values. On JAX and PyTorch it returns `value`.
    If a Keras release moves the helper, `value` is returned unchanged (the
    logged terms are then scaled under a multi-replica TensorFlow strategy)
    and ``test_unscale_loss_for_distribution`` fails.

    Checked on Keras 3.15.1.
    """
    unscale = _keras_unscale()
    return value if unscale is None else unscale(value)


# ---------------------------------------------------------------------- model
def aggregate_additional_loss(model, loss):
    """One entry of ``model.losses`` reduced as `keras.Model.compute_loss` does.

    Reaches ``Trainer._aggregate_additional_loss`` (a sum, cast to
    ``floatx()`` if the loss is not a float). `Distiller.compute_loss`
    replaces `keras.Model.compute_loss` and adds the student's regularisation
    and ``add_loss`` terms exactly as Keras would.

    Checked on Keras 3.15.1.
    """
    return model._aggregate_additional_loss(loss)


# ------------------------------------------------------ functional graph walk
def is_functional(model):
    """Whether `model` is a Keras ``Functional`` model (graph of layers).

    Reaches ``keras.src.models.functional.Functional``, the class of
    functional models (public API has no such class: `keras.Model` built from
    inputs and outputs becomes one). The PyTorch fast path of
    `_backend.frozen_forward` walks such graphs.

    Checked on Keras 3.15.1.
    """
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def sequential_graph(model):
    """The ``Functional`` graph a built `keras.Sequential` runs, or None.

    Reaches ``Sequential._functional``: a built Sequential model with an
    ``Input`` keeps its layers as a functional graph there (None before it is
    built). The PyTorch fast path walks that graph.

    Checked on Keras 3.15.1.
    """
    return getattr(model, "_functional", None)


def has_graph_runner(model):
    """Whether `model` has the graph runner `run_through_graph` calls.

    Checked on Keras 3.15.1.
    """
    return hasattr(model, "_run_through_graph")


def run_through_graph(model, inputs, operation_fn):
    """Run a functional `model` on `inputs`, each layer through `operation_fn`.

    Reaches ``Function._run_through_graph(inputs, operation_fn=...)``: at each
    node Keras calls ``operation_fn(layer)(*args, **kwargs)``. The PyTorch
    fast path of `_backend.frozen_forward` swaps in torch functions for some
    layers this way, and Keras still does the graph bookkeeping.

    Checked on Keras 3.15.1.
    """
    return model._run_through_graph(inputs, operation_fn=operation_fn)


def graph_operation_fn(operation, training):
    """Keras's own per-layer call inside a graph walk, with `training` set.

    Reaches ``keras.src.models.functional.operation_fn``, which calls
    `operation` with the call-context arguments (``training``) it accepts, as
    ``Functional.call`` does. The PyTorch fast path uses it for every layer it
    does not replace.

    Checked on Keras 3.15.1.
    """
    from keras.src.models.functional import operation_fn

    return operation_fn(operation, training=training)


# ------------------------------------------------- intermediate layer outputs
def nested_layers(model):
    """Every layer inside `model`, at any depth (each once), `model` excluded.

    Reaches ``Layer._flatten_layers(include_self=False, recursive=True)``:
    `keras.Model.layers` lists only the direct children, so the blocks of a
    subclassed model and the layers inside them would be out of reach of a
    feature-distillation term that names them.

    Checked on Keras 3.15.1.
    """
    return model._flatten_layers(include_self=False, recursive=True)


@contextlib.contextmanager
def record_outputs(layers, record):
    """While active, every call of a layer in `layers` hands its output to `record`.

    ``record(layer, outputs)`` runs after the layer's own ``call``. This is
    done by shadowing the layer's bound ``call`` with an instance attribute
    (Keras's ``Layer.__call__`` and ``Operation.__call__`` look ``self.call``
    up at every call, after their own bookkeeping), removed on exit, so a
    Functional, Sequential or subclassed model is recorded in the same
    forward pass that computes its output: no second pass, and nothing is
    left on the user's model. Inside a traced step (``tf.function``,
    ``jax.jit``) the recording happens once, at trace time, which is all a
    traced step needs.

    Checked on Keras 3.15.1.
    """
    patched = []
    try:
        for layer in layers:
            original = layer.call

            def call(*args, _original=original, _layer=layer, **kwargs):
                outputs = _original(*args, **kwargs)
                record(_layer, outputs)
                return outputs

            shadowed = "call" in vars(layer)
            patched.append((layer, shadowed, original))
            object.__setattr__(layer, "call", call)
        yield
    finally:
        for layer, shadowed, original in reversed(patched):
            if shadowed:
                object.__setattr__(layer, "call", original)
            else:
                object.__delattr__(layer, "call")


# ------------------------------------------------------------------ optimizer
def uses_weight_decay(optimizer, variable):
    """Whether `optimizer` decays `variable` (not excluded from weight decay).

    Reaches ``BaseOptimizer._use_weight_decay``, which applies what
    ``exclude_from_weight_decay(var_list=..., var_names=...)`` recorded.
    `schedules.CoupledSGD` applies its coupled L2 term only where Keras would
    apply its own decay.

    Checked on Keras 3.15.1.
    """
    return optimizer._use_weight_decay(variable)


def variable_index(optimizer, variable):
    """The index of `variable` among the variables `optimizer` was built for.

    Reaches ``BaseOptimizer._get_variable_index`` (what Keras's own SGD uses
    to find the momentum slot of a variable in ``optimizer.momentums``).

    Checked on Keras 3.15.1.
    """
    return optimizer._get_variable_index(variable)


class NoDecoupledWeightDecay:
    """Mixin (before the Keras optimizer in the bases): no decoupled decay.

    Overrides ``BaseOptimizer._apply_weight_decay``, the hook through which
    Keras applies its decoupled weight decay (``v -= v * wd * lr`` after
    each step, on every backend). `schedules.CoupledSGD` keeps
    ``weight_decay`` as its coupled L2 factor and applies it in
    ``update_step``; without this Keras would decay the weights a second
    time. If a Keras release renames the hook this override is dead and
    ``test_no_decoupled_weight_decay`` fails.

    Checked on Keras 3.15.1.
    """

    def _apply_weight_decay(self, variables):
        return
