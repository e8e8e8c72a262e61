"""Backend-specific code of the training path, fenced in one module.

The package is written with `keras.ops` and runs unchanged on TensorFlow,
JAX and PyTorch. What must differ by backend lives in a few fences, each the
only module allowed to branch on ``keras.backend.backend()`` or import a
backend framework for its job:

* this module: the frozen-teacher forward pass (`frozen_forward`, a PyTorch
  fast path), the per-example state of the online teachers (`assign_rows`,
  in place; `all_replicas`, the rows of every `MirroredStrategy` replica),
  the fused loops of a long elementwise formula (`fused`: XLA on TensorFlow
  and JAX, for the cancellation-free KL value; on PyTorch its eager form in
  fewer passes, `kl_sums_eager`), two row sums in one loop (`row_sums`),
  ``log_softmax`` with its ``logsumexp`` (`log_softmax`),
  JAX's persistent compilation cache (`jax_compilation_cache`, behind
  `runs.compilation_cache`) and TensorFlow's deterministic kernels
  (`enable_op_determinism`, behind `runs.deterministic`);
* `keras_tfkd.distribution`: each backend's data-parallel engine;
* `keras_tfkd.data._tfdata`: the tf.data input pipeline, the only data module
  that imports TensorFlow (`keras_tfkd.data.pipeline_engine` picks it on the
  TensorFlow backend);
* one tf.data function outside these: `keras_tfkd.validation`'s label checks
  mapped over a user's `tf.data.Dataset`. It runs only when such a dataset is
  given (TensorFlow is then loaded already, on any backend) and branches on
  the input's type, not on the backend.

Private Keras (``keras.src``, underscored attributes) is fenced apart from
these, in `keras_tfkd._keras_compat`; the PyTorch path below reaches the
functional graph only through it. Recording or printing the backend's name
(result records, the CLI's checks) is not a branch and happens anywhere.

A fast path lives here only where ``benchmarks/run.py`` measured that it
matters; ``benchmarks/README.md`` has the numbers.

`frozen_forward(model, x)` is the forward pass of a frozen teacher. On
TensorFlow and JAX it is exactly ``model(x, training=False)``: it is traced
into the compiled train step, where Grappler or XLA already fuse the
inference-mode BatchNormalization into its neighbours. The PyTorch backend runs
Keras layers eagerly, and there Keras 3's convolution copies its input twice
per call (``NHWC -> NCHW`` contiguous, then back to PyTorch's channels-last
memory format) and computes an inference BatchNormalization in four passes:
for the CIFAR CNNs that is over half of a teacher's forward time, and
``torch.no_grad`` or ``torch.inference_mode`` change nothing measurable
(the frozen weights and the inputs need no gradient anyway). So on PyTorch
the convolutions, batch normalisations and max-poolings of a functional
teacher run as `torch.nn.functional` calls on channels-last tensors (the same
memory, viewed as NCHW: no copies), under `torch.no_grad`; every other layer
runs as Keras layer in inference mode. The values are those of
``model(x, training=False)`` to float rounding, and the weights are read at
every call, so a teacher whose weights change (a self-teacher snapshot) is
never stale.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras

from keras_tfkd import _keras_compat

__all__ = [
    "all_replicas",
    "assign_rows",
    "enable_op_determinism",
    "frozen_forward",
    "fused",
    "jax_compilation_cache",
    "kl_sums_eager",
    "log_softmax",
    "row_sums",
]


#: ``(backend, fn) -> compiled fn`` of `fused`.
_FUSED = {}


def fused(fn, eager=None):
    """`fn` (elementwise `keras.ops` and reductions, no gradient) as fused loops.

    TensorFlow's graph executor runs every op of a formula as one pass over
    memory with its own output buffer, so a long elementwise formula costs
    its number of ops, where XLA fuses it into a few loops. On TensorFlow
    this is ``tf.function(fn, jit_compile=True)`` (nested in a compiled step,
    in a `tf.while_loop` body or run eagerly, compiled once per input shape;
    inside an XLA step it is simply part of it); on JAX ``jax.jit(fn)`` (a
    no-op inside a jitted step, fused when called eagerly). On PyTorch `fn`
    itself: ``torch.compile`` fuses it 2x faster on a CPU but compiles for
    over a minute per shape (measured 2026-12-07, PyTorch 2.13), too long for
    a loss's first call; `eager`, when given, is `fn` written for
    PyTorch's eager mode (fewer passes), and runs instead. Used for the
    cancellation-free KL value (`keras_tfkd._soft_targets._kl_value`); its
    inputs must carry no gradient (the callers stop it).
    """
    backend = keras.backend.backend()
    key = (backend, fn)
    if key not in _FUSED:
        if backend == "tensorflow":
            import tensorflow as tf

            _FUSED[key] = tf.function(fn, jit_compile=True, autograph=False)
        elif backend == "jax":
            import jax

            _FUSED[key] = jax.jit(fn)
        else:
            _FUSED[key] = eager or fn
    return _FUSED[key]


def log_softmax(a):
    """``(log_softmax(a), logsumexp(a))`` over the last axis, or ``(.., None)``.

    On TensorFlow and JAX both come from one shared computation: ``a - max``
    (exact near the maximum, so ``log p`` is accurate to its own size, not
    the logits'), the log of its exponentials' sum, and ``max`` plus that
    log. The cancellation-free KL value (its one use) then takes the centre
    the ``logsumexp`` gives and one pass instead of two: measured in a
    training step at K = 10,000 (``benchmarks/exact_kl.py``), 1.28-1.38x the
    textbook value's cost on TensorFlow against 1.46-1.58x with TensorFlow's
    own ``log_softmax`` kernel and the two-pass value. PyTorch, which runs
    every operation as a pass of its own, runs its fused ``log_softmax``
    kernel, a third of that formula's passes, and returns no ``logsumexp``:
    the KL value there centres itself in one pass (`kl_sums_eager`), for
    less than a ``logsumexp`` costs.
    """
    ops = keras.ops
    if keras.backend.backend() == "torch":
        return ops.log_softmax(a, axis=-1), None
    m = ops.stop_gradient(ops.max(a, axis=-1, keepdims=True))
    shifted = a - m
    log_sum = ops.log(ops.sum(ops.exp(shifted), axis=-1, keepdims=True))
    return shifted - log_sum, m + log_sum


def kl_sums_eager(z_t, z_s, t_t, t_s, log_p_t, p_t, bound, direct_only=False):
    """PyTorch's form of the cancellation-free KL value's two passes.

    Returns ``(x, S, r)`` of `keras_tfkd._soft_targets._kl_value_kernel`
    (``x = d - E_pt[d]``, ``S = sum p_t (exp(x) - 1 - x)`` with the series
    below `bound`, the residue ``r = E_pt[x]``), written for an eager backend
    that runs every operation as a pass over memory: in-place updates,
    Horner's rule in place for the series, the choice between the two forms
    as a 0/1 weight from ``sign`` and a ``lerp`` (a boolean mask and
    ``where`` cost 2 ms of a (128, 10000) batch on one CPU thread, these
    0.7), and a branch per batch that skips the form no element needs
    (every ``|x|`` small: the series alone; every ``|x|`` large, or
    `direct_only`: the direct difference alone). About 12 passes where the
    generic form takes 25; tests/test_exact_kl.py holds the two equal.
    """
    import torch

    t_t = torch.as_tensor(t_t, dtype=z_s.dtype, device=z_s.device)
    t_s = torch.as_tensor(t_s, dtype=z_s.dtype, device=z_s.device)
    x = (z_t * (t_s / t_t)).sub_(z_s).neg_().div_(t_s)  # d
    x.sub_((p_t * x).sum(-1, keepdim=True))
    series_only = False
    if not direct_only:
        magnitude = x.abs()
        lowest, highest = torch.aminmax(magnitude)
        direct_only = bool(lowest >= bound)
        series_only = not direct_only and bool(highest < bound)
    if not series_only:
        terms = torch.add(log_p_t, x).exp_()
        terms.sub_(torch.addcmul(p_t, p_t, x)).clamp_(min=0.0)
    if not direct_only:
        # Where the direct difference is also taken, the series is evaluated
        # at |x| <= 2 bound: finite, and exact wherever it is kept.
        at = x if series_only else x.clamp(-2.0 * bound, 2.0 * bound)
        # p_t x^2 (1/2 + x/6 + x^2/24 + x^3/120), Horner's rule in place.
        series = at * (1.0 / 120.0)
        series.add_(1.0 / 24.0).mul_(at).add_(1.0 / 6.0).mul_(at).add_(0.5)
        series.mul_(at).mul_(at).mul_(p_t)
        if series_only:
            terms = series
        else:
            # 0 where |x| < bound (or is the bound), else 1.
            weight = magnitude.sub_(bound).sign_().clamp_(min=0.0)
            terms = series.lerp_(terms, weight)
    return x, terms.sum(-1), (p_t * x).sum(-1)


def row_sums(a, b):
    """``(sum(a, -1), sum(b, -1))`` of two float32 tensors of one shape.

    XLA's CPU code runs two sums over the same fused elementwise producer as
    two loops (the producer computed twice), where one complex64 sum does
    both in one loop at the cost of one (measured on JAX: 1.9 ms for two
    sums of ``(128, 10000)`` this way, 2.8 ms as two sums, 9 ms as a
    variadic ``lax.reduce``). The real and imaginary parts are summed
    independently in float32, so the two sums are those of ``ops.sum`` up to
    the order of the additions. Used by the cancellation-free KL value's
    single pass (its sum and its residue). On PyTorch, which runs each
    operation as its own pass anyway, two plain sums.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        total = jax.numpy.sum(jax.lax.complex(a, b), axis=-1)
        return jax.numpy.real(total), jax.numpy.imag(total)
    if backend == "tensorflow":
        import tensorflow as tf

        total = tf.reduce_sum(tf.complex(a, b), axis=-1)
        return tf.math.real(total), tf.math.imag(total)
    return keras.ops.sum(a, axis=-1), keras.ops.sum(b, axis=-1)


def frozen_forward(model, inputs, capture=None):
    """``model(inputs, training=False)`` for a frozen model, without gradient.

    `capture` is an active `keras_tfkd.features.FeatureCapture` that records
    some layers' outputs on the way (feature distillation): layers Keras runs
    record themselves, and the PyTorch path below records the layers it runs
    as torch functions.

    The result equals ``model(inputs, training=False)`` (to float rounding on
    PyTorch, where a faster path runs the model's convolutions, batch
    normalisations and max-poolings directly: see the module docstring). Any
    model or layer that path does not know runs through Keras unchanged.

    Example:

    >>> import numpy as np
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> logits = frozen_forward(teacher, np.ones((2, 4), "float32"))
    >>> tuple(logits.shape)
    (2, 3)
    """
    if keras.backend.backend() == "torch":
        return _torch_frozen_forward(model, inputs, capture)
    return model(inputs, training=False)


# --------------------------------------------------------------------------
# Per-example state of the online teachers (PS-KD, OLS)
# --------------------------------------------------------------------------


def all_replicas(*tensors):
    """The rows of `tensors` from every replica, concatenated, inside a replica step.

    Under TensorFlow's `MirroredStrategy` each replica runs the train step on
    its share of the batch: state updated from a batch (PS-KD's stored
    predictions, OLS's class sums) must see every replica's rows, so that
    each replica writes the same, complete update. Everywhere else -- one
    device, JAX (whose compiled step sees the global batch under
    `keras.distribution.DataParallel`), PyTorch -- the tensors are returned
    as they are. Returns a tuple, one entry per tensor.

    (TensorFlow keys its collective operations by a counter that restarts
    with each new strategy, so one process that trains under two
    `MirroredStrategy` scopes whose steps run different collectives fails
    with a collective-instance mismatch; create one strategy per process
    and train every model under it, as tests/test_distribution.py does, or
    run them in separate processes.)
    """
    if keras.backend.backend() != "tensorflow":
        return tensors
    import tensorflow as tf

    if tf.distribute.in_cross_replica_context():
        return tensors
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensors
    return tuple(context.all_gather(tensor, axis=0) for tensor in tensors)


def assign_rows(variable, indices, values):
    """``variable[indices] = values`` for a 2-D non-trainable state variable.

    `indices` are int32 row numbers ``(M,)``, `values` rows ``(M, ...)`` in any
    float dtype (cast to the variable's). The generic form is
    ``variable.assign(ops.scatter_update(variable, indices[:, None], values))``,
    which XLA (JAX, whose train step donates its state) does in place; on
    PyTorch and on a single-device TensorFlow that would copy the whole
    ``N x K`` store at every step, so there the rows are written in place.
    """
    ops = keras.ops
    values = ops.cast(values, variable.dtype)
    name = keras.backend.backend()
    if name == "torch":
        import torch

        with torch.no_grad():
            variable.value.index_copy_(0, ops.cast(indices, "int64"), values)
        return
    if name == "tensorflow":
        import tensorflow as tf

        target = variable.value
        if isinstance(target, tf.Variable) and not tf.distribute.has_strategy():
            target.scatter_nd_update(ops.expand_dims(indices, -1), values)
            return
    variable.assign(ops.scatter_update(variable, ops.expand_dims(indices, -1), values))


# --------------------------------------------------------------------------
# JAX: the persistent compilation cache
# --------------------------------------------------------------------------

_JAX_CACHE_OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@contextlib.contextmanager
def jax_compilation_cache(directory):
    """On JAX, keep XLA compilations in `directory`; elsewhere do nothing.

    The implementation of `keras_tfkd.runs.compilation_cache` (see
    there). Yields True if the cache is in use (JAX), else False. The previous
    JAX settings are restored on exit.
    """
    if keras.backend.backend() != "jax":
        yield False
        return
    import jax

    def reset():
        try:  # a cache initialised before the directory was set ignores it
            from jax.experimental.compilation_cache import compilation_cache as cc

            cc.reset_cache()
        except (ImportError, AttributeError):  # pragma: no cover - other versions
            pass

    previous = {name: getattr(jax.config, name) for name in _JAX_CACHE_OPTIONS}
    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    reset()
    try:
        yield True
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        reset()


# --------------------------------------------------------------------------
# TensorFlow: deterministic kernels
# --------------------------------------------------------------------------


def enable_op_determinism():
    """On TensorFlow, deterministic kernels for the rest of the process.

    ``tf.config.experimental.enable_op_determinism()``: without it some TF
    kernels (e.g. multi-threaded reductions) may sum in a different order
    from run to run. JAX and PyTorch on CPU are deterministic once seeded:
    there this does nothing. Used by `keras_tfkd.runs.deterministic`.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------


def _torch_frozen_forward(model, inputs, capture=None):
    import torch

    with torch.no_grad():
        graph = _functional_graph(model)
        if graph is None:
            return model(inputs, training=False)
        x = keras.ops.convert_to_tensor(inputs)
        return _run_graph(graph, x, capture)


def _functional_graph(model):
    """The functional graph of `model` that the torch path can run, or None."""
    if isinstance(model, keras.Sequential):
        model = _keras_compat.sequential_graph(model)
    if not _keras_compat.is_functional(model):
        return None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    if not _keras_compat.has_graph_runner(model):  # pragma: no cover - Keras layout
        return None
    return model


def _run_graph(model, x, capture=None):
    def fast(operation):
        handler = _torch_handler(operation, capture)
        if handler is None:
            return _keras_compat.graph_operation_fn(operation, training=False)
        if capture is not None and capture.wants(operation):
            return lambda *args, **kwargs: capture.record(
                operation, handler(*args, **kwargs)
            )
        return handler

    outputs = _keras_compat.run_through_graph(model, [x], fast)
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def _torch_handler(layer, capture=None):
    """A torch function computing `layer` in inference mode, or None."""
    if getattr(layer, "quantization_mode", None) or getattr(
        layer, "lora_enabled", False
    ):
        return None
    if getattr(layer, "compute_dtype", None) != "float32":
        return None
    sub = _functional_graph(layer) if isinstance(layer, keras.Model) else None
    if sub is not None:
        return lambda x, **kwargs: _run_graph(sub, x, capture)
    if type(layer) is keras.layers.Conv2D and layer.data_format == "channels_last":
        return lambda x, **kwargs: _conv2d(layer, x)
    if type(layer) is keras.layers.DepthwiseConv2D and (
        layer.data_format == "channels_last"
    ):
        return lambda x, **kwargs: _depthwise_conv2d(layer, x)
    if type(layer) is keras.layers.BatchNormalization:
        return lambda x, **kwargs: _batch_norm(layer, x)
    if type(layer) is keras.layers.MaxPooling2D and (
        layer.data_format == "channels_last"
    ):
        return lambda x, **kwargs: _max_pool(layer, x)
    return None


def _is_float32_image(x):
    return x.ndim == 4 and str(x.dtype) == "torch.float32"


def _same_padding(size, kernel, stride, dilation):
    """(left, right) 'same' padding of one axis, as Keras's torch backend pads."""
    effective = (kernel - 1) * dilation + 1
    if stride == 1:
        total = effective - 1
    else:
        out = (size + stride - 1) // stride
        total = max(0, (out - 1) * stride + effective - size)
    return total // 2, total - total // 2


def _pad_nchw(x, padding, kernel, strides, dilation, mode):
    """`x` (NCHW) and the `padding` argument for a torch conv/pool call."""
    import torch.nn.functional as F

    if padding == "valid":
        return x, 0
    pads = [
        _same_padding(x.shape[2 + i], kernel[i], strides[i], dilation[i])
        for i in range(2)
    ]
    if all(left == right for left, right in pads):
        return x, tuple(left for left, _ in pads)
    flat = (pads[1][0], pads[1][1], pads[0][0], pads[0][1])
    return F.pad(x, flat, mode=mode), 0


def _finish(layer, y_nchw):
    """Back to the NHWC layout Keras expects (a view), then the activation."""
    y = y_nchw.permute(0, 2, 3, 1)
    activation = getattr(layer, "activation", None)
    if activation is not None and activation is not keras.activations.linear:
        y = activation(y)
    return y


def _conv_nchw(layer, x, kernel, groups):
    """``F.conv2d`` of a channels-last `x` with a Keras conv layer's settings."""
    import torch.nn.functional as F

    bias = layer.bias.value if layer.use_bias else None
    h, padding = _pad_nchw(
        x.permute(0, 3, 1, 2),
        layer.padding,
        layer.kernel_size,
        layer.strides,
        layer.dilation_rate,
        "constant",
    )
    y = F.conv2d(
        h,
        kernel,
        bias,
        stride=layer.strides,
        padding=padding,
        dilation=layer.dilation_rate,
        groups=groups,
    )
    return _finish(layer, y)


def _conv2d(layer, x):
    if not _is_float32_image(x):
        return layer(x, training=False)
    kernel = layer.kernel.value.permute(3, 2, 0, 1)  # (out, in / groups, kh, kw)
    return _conv_nchw(layer, x, kernel, layer.groups)


def _depthwise_conv2d(layer, x):
    if not _is_float32_image(x):
        return layer(x, training=False)
    channels = x.shape[-1]
    kh, kw, _, multiplier = layer.kernel.shape
    kernel = layer.kernel.value.permute(2, 3, 0, 1).reshape(
        channels * multiplier, 1, kh, kw
    )
    return _conv_nchw(layer, x, kernel, channels)


def _batch_norm(layer, x):
    import torch.nn.functional as F

    channels_last = x.ndim in (2, 4) and layer.axis % x.ndim == x.ndim - 1
    if str(x.dtype) != "torch.float32" or not channels_last:
        return layer(x, training=False)
    h = x.permute(0, 3, 1, 2) if x.ndim == 4 else x
    y = F.batch_norm(
        h,
        layer.moving_mean.value,
        layer.moving_variance.value,
        weight=layer.gamma.value if layer.scale else None,
        bias=layer.beta.value if layer.center else None,
        training=False,
        eps=layer.epsilon,
    )
    return y.permute(0, 2, 3, 1) if x.ndim == 4 else y


def _max_pool(layer, x):
    import torch.nn.functional as F

    if not _is_float32_image(x):
        return layer(x, training=False)
    h, padding = _pad_nchw(
        x.permute(0, 3, 1, 2),
        layer.padding,
        layer.pool_size,
        layer.strides,
        (1, 1),
        "replicate",
    )
    y = F.max_pool2d(h, layer.pool_size, layer.strides, padding)
    return y.permute(0, 2, 3, 1)
