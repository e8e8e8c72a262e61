"""Chunked per-row losses: value and gradient computed a chunk of rows at a time.

A soft loss over a vocabulary builds several ``(rows, V)`` float32
intermediates (two ``log_softmax``, the teacher's probabilities, the
cancellation-free value's terms) and autodiff keeps them for the backward
pass: 8-13 times the size of the student's logits. The losses of
`keras_tfkd.losses` and `keras_tfkd.divergences` are per-row functions
(every row of the last axis is independent), so `chunked_rows` computes them
``chunk_size`` rows at a time, in the *forward* pass, together with each
row's gradient with respect to the student's logits (the trick of
Liger-Kernel's chunked losses): only one chunk's intermediates exist at a
time, and the backward pass multiplies the stored gradient, one tensor of the
student logits' size, by the per-row cotangent that Keras's reduction (and
`sample_weight`) hands back. Peak extra memory: ``O(chunk_size x V)`` plus
the gradient.

Each backend runs its own loop and custom gradient:

* JAX: `jax.custom_vjp` around a `jax.lax.fori_loop` whose body slices a
  chunk (`dynamic_slice`), takes ``value_and_grad`` of the chunk's rows and
  writes both into buffers the size of the output (in place under XLA). The
  last chunk starts at ``rows - chunk_size`` (it overlaps the one before and
  recomputes its rows: the same values, written twice), so every chunk has
  one static shape.
* TensorFlow: `tf.custom_gradient` around a `tf.while_loop` over the
  chunks; each chunk's value and gradient (a `tf.GradientTape`) is one
  XLA-compiled function (its intermediates in one buffer XLA plans, its
  ops fused), the last chunk overlapping as on JAX. The results go into the
  output buffers in place: under XLA with `tf.tensor_scatter_nd_update`
  (XLA updates a loop variable in place), in TensorFlow's executor with
  ``InplaceUpdate`` on buffers from ``Empty`` (stateful: a fresh buffer per
  call, never folded or shared), since the executor's loop holds a second
  reference to a loop variable and `tensor_scatter_nd_update` would copy
  the whole gradient at every chunk. The backward pass's product with the
  cotangent reuses the gradient's buffer (it holds the only reference).
  Shapes stay static under XLA and may be unknown (``None`` rows) in a
  plain `tf.function`.
* PyTorch: a `torch.autograd.Function` whose forward loops over the chunks
  with `torch.autograd.grad` on each, writing into preallocated buffers; its
  backward scales the stored gradient in place (so it may run once per
  forward: a second backward through the same value raises an error).

The teacher's logits (and every other input but the student's logits) get
no gradient through this path: teachers are frozen, and every teacher of a
`keras_tfkd.Distiller` hands over gradient-stopped logits. Differentiating
with respect to the teacher needs ``chunk_size=None``.

This is a backend fence (tests/test_keras_compat.py, ``BACKEND_FENCES``):
the one module of the losses that imports a framework, inside functions.
"""

from __future__ import annotations

import math

import keras
from keras import ops

#: ``chunk_size="auto"`` chunks only at this many classes or more: below it
#: the per-row intermediates of a batch are small, and the unchunked form is
#: kept exactly (classifiers, K <= a few thousand).
AUTO_MIN_CLASSES = 8192

#: ``chunk_size="auto"`` takes ``max(1, AUTO_CHUNK_ELEMENTS // V)`` rows per
#: chunk: 2**21 float32 elements, 8 MB per ``(chunk, V)`` intermediate (64
#: rows at V = 32,768; 8 at V = 256,000).
AUTO_CHUNK_ELEMENTS = 2**21

#: The values of the ``chunk_size`` setting besides a positive int.
CHUNK_SIZE_WORDS = (None, "auto")


def check_chunk_size(chunk_size):
    """`chunk_size` if None, ``"auto"`` or an int >= 1; else an error naming it."""
    if chunk_size is None or (isinstance(chunk_size, str) and chunk_size == "auto"):
        return chunk_size
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(
            "`chunk_size` must be None, 'auto' or a positive int (rows per "
            f"chunk), got chunk_size={chunk_size!r}."
        )
    if chunk_size < 1:
        raise ValueError(
            "`chunk_size` must be None, 'auto' or a positive int (rows per "
            f"chunk), got chunk_size={chunk_size!r}."
        )
    return int(chunk_size)


def resolve_chunk_size(chunk_size, shape):
    """Rows per chunk for logits of `shape`, or None for the unchunked form.

    ``"auto"``: None below `AUTO_MIN_CLASSES` classes (or an unknown number
    of classes), else ``max(1, AUTO_CHUNK_ELEMENTS // V)``. An int is kept,
    except that None comes back when one chunk would hold every row (the
    unchunked form computes the same thing with less bookkeeping).
    """
    shape = tuple(shape)
    num_classes = shape[-1] if shape else None
    if chunk_size is None or num_classes is None or len(shape) < 2:
        return None
    if chunk_size == "auto":
        if num_classes < AUTO_MIN_CLASSES:
            return None
        chunk_size = max(1, AUTO_CHUNK_ELEMENTS // num_classes)
    leading = shape[:-1]
    if all(d is not None for d in leading) and math.prod(leading) <= chunk_size:
        return None
    return chunk_size


def chunked_rows(fn, z_t, z_s, chunk_size, row_args=(), constants=()):
    """``fn`` over the rows of the last axis, `chunk_size` rows at a time.

    ``fn(z_t_rows, z_s_rows, *row_args_rows, *constants)`` returns one value
    per row (shape ``(rows,)``) and must treat every row independently. `z_t`
    and `z_s` have the same shape ``(..., V)``; each of `row_args` has the
    leading shape ``z_s.shape[:-1]`` (labels); `constants` are scalars
    (temperatures). Returns ``fn``'s values, shape ``z_s.shape[:-1]``, whose
    gradient with respect to `z_s` is ``fn``'s, computed in the forward pass;
    nothing else gets a gradient.
    """
    z_t = ops.convert_to_tensor(z_t)
    z_s = ops.convert_to_tensor(z_s)
    t_shape, s_shape = tuple(z_t.shape), tuple(z_s.shape)
    if len(t_shape) != len(s_shape) or any(
        a is not None and b is not None and a != b for a, b in zip(t_shape, s_shape)
    ):
        raise ValueError(
            "A chunked loss needs teacher and student logits of the same shape "
            f"(classes on the last axis), got teacher logits (y_true) of shape "
            f"{t_shape} and student logits (y_pred) of shape {s_shape}."
        )
    num_classes = s_shape[-1]
    leading = ops.shape(z_s)[:-1]
    z_t = ops.reshape(z_t, (-1, num_classes))
    z_s = ops.reshape(z_s, (-1, num_classes))
    row_args = tuple(ops.reshape(ops.convert_to_tensor(a), (-1,)) for a in row_args)
    constants = tuple(ops.convert_to_tensor(c) for c in constants)
    run = _RUNNERS[keras.backend.backend()]
    values = run(fn, z_t, z_s, int(chunk_size), row_args, constants)
    return ops.reshape(values, leading)


# ------------------------------------------------------------------------ JAX
def _jax_rows(fn, z_t, z_s, chunk, row_args, constants):
    import jax
    import jax.numpy as jnp

    rows = z_s.shape[0]
    chunk = min(chunk, rows)
    count = -(-rows // chunk)

    def forward(z_s, z_t, row_args, constants):
        def one(z_t_c, z_s_c, args_c):
            def total(x):
                values = fn(z_t_c, x, *args_c, *constants)
                return jnp.sum(values), values

            (_, values), grad = jax.value_and_grad(total, has_aux=True)(z_s_c)
            return values, grad

        def body(i, carry):
            values, grads = carry
            start = jnp.minimum(i * chunk, rows - chunk)

            def cut(x):
                return jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=0)

            v, g = one(cut(z_t), cut(z_s), tuple(cut(a) for a in row_args))
            values = jax.lax.dynamic_update_slice_in_dim(
                values, v.astype(values.dtype), start, axis=0
            )
            grads = jax.lax.dynamic_update_slice_in_dim(
                grads, g.astype(grads.dtype), start, axis=0
            )
            return values, grads

        init = (jnp.zeros((rows,), "float32"), jnp.zeros_like(z_s))
        return jax.lax.fori_loop(0, count, body, init)

    @jax.custom_vjp
    def rows_fn(z_s, z_t, row_args, constants):
        return forward(z_s, z_t, row_args, constants)[0]

    def fwd(z_s, z_t, row_args, constants):
        values, grads = forward(z_s, z_t, row_args, constants)
        return values, grads

    def bwd(grads, cotangent):
        scaled = grads * cotangent.astype(grads.dtype)[:, None]
        return scaled, None, None, None

    rows_fn.defvjp(fwd, bwd)
    return rows_fn(z_s, jax.lax.stop_gradient(z_t), row_args, constants)


# ----------------------------------------------------------------- TensorFlow
def _tf_rows(fn, z_t, z_s, chunk, row_args, constants):
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util, gen_array_ops

    static_rows = z_s.shape[0]
    # Nothing outside may watch the loop (a watched tf.while_loop keeps its
    # intermediates for its own gradient, which XLA refuses here): the only
    # tape inside is each chunk's own.
    z_t = tf.stop_gradient(z_t)
    row_args = tuple(tf.stop_gradient(a) for a in row_args)
    constants = tuple(tf.stop_gradient(c) for c in constants)

    # One chunk's value and gradient, compiled by XLA: its intermediates live
    # in one buffer XLA plans and reuses, instead of a dozen separate
    # allocations per chunk (which the CPU allocator keeps around: resident
    # memory grows by several chunks' worth), and its elementwise ops fuse.
    @tf.function(jit_compile=True, autograph=False)
    def one(z_t_c, z_s_c, args_c, constants):
        with tf.GradientTape() as tape:
            tape.watch(z_s_c)
            values = fn(z_t_c, z_s_c, *args_c, *constants)
        grad = tape.gradient(values, z_s_c)
        if grad is None:
            grad = tf.zeros_like(z_s_c)
        return tf.cast(values, "float32"), tf.cast(grad, z_s_c.dtype)

    # The output buffers are written chunk by chunk, in place. Under XLA
    # (`jit_compile=True`) `tensor_scatter_nd_update` on a loop variable is
    # in place already. The TensorFlow executor copies it instead (the loop's
    # plumbing holds a second reference to the buffer): a full copy of the
    # gradient per chunk, two buffers alive. There the buffers are
    # `Empty` (a fresh allocation per call: stateful, never constant-folded
    # or shared) written by `InplaceUpdate`, which writes into its input's
    # buffer whatever the references; nothing else holds these buffers.
    xla = control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())

    def new(shape, dtype):
        if xla:
            return tf.zeros(shape, dtype)
        return gen_array_ops.empty(shape, dtype, init=False)

    def write(buffer, index, update):
        if xla:
            return tf.tensor_scatter_nd_update(buffer, index[:, None], update)
        return gen_array_ops.inplace_update(buffer, index, update)

    def forward(z_s):
        rows = tf.shape(z_s)[0]
        size = chunk if static_rows is None else min(chunk, static_rows)
        if static_rows is None:
            size = tf.minimum(size, rows)
        count = (rows + size - 1) // tf.maximum(size, 1)

        def body(i, values, grads):
            # The last chunk ends at the last row (it may overlap the one
            # before: those rows are recomputed, the same values).
            start = tf.minimum(i * size, rows - size)

            def cut(x):
                # A static size where the rows are known: XLA needs one.
                begin = tf.concat([[start], tf.zeros([x.shape.rank - 1], "int32")], 0)
                sizes = tf.concat(
                    [[size], tf.fill([x.shape.rank - 1], tf.constant(-1, "int32"))], 0
                )
                return tf.slice(x, begin, sizes)

            v, g = one(cut(z_t), cut(z_s), tuple(cut(a) for a in row_args), constants)
            index = start + tf.range(size)
            return i + 1, write(values, index, v), write(grads, index, g)

        init = (tf.constant(0), new([rows], "float32"), new(tf.shape(z_s), z_s.dtype))
        _, values, grads = tf.while_loop(
            lambda i, *_: i < count, body, init, parallel_iterations=1
        )
        return values, grads

    @tf.custom_gradient
    def rows_fn(z_s):
        values, grads = forward(tf.stop_gradient(z_s))

        def grad_fn(cotangent):
            return grads * tf.cast(cotangent, grads.dtype)[:, None]

        return values, grad_fn

    return rows_fn(z_s)


# -------------------------------------------------------------------- PyTorch
def _torch_rows(fn, z_t, z_s, chunk, row_args, constants):
    import torch

    class Rows(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z_s, z_t):
            rows = z_s.shape[0]
            values = torch.empty(rows, dtype=torch.float32, device=z_s.device)
            grads = torch.empty_like(z_s)
            for start in range(0, rows, chunk):
                stop = min(start + chunk, rows)
                with torch.enable_grad():
                    x = z_s[start:stop].detach().requires_grad_(True)
                    args = tuple(a[start:stop] for a in row_args)
                    v = fn(z_t[start:stop], x, *args, *constants)
                    (g,) = torch.autograd.grad(v.sum(), x, allow_unused=True)
                values[start:stop] = v.detach()
                if g is None:
                    grads[start:stop] = 0
                else:
                    grads[start:stop] = g
            ctx.grads = grads
            return values

        @staticmethod
        def backward(ctx, cotangent):
            grads, ctx.grads = ctx.grads, None
            if grads is None:
                raise RuntimeError(
                    "A chunked loss's gradient was already taken once: its "
                    "stored gradient is consumed by the first backward pass "
                    "(use chunk_size=None to differentiate a loss twice)."
                )
            return grads.mul_(cotangent.to(grads.dtype)[:, None]), None

    return Rows.apply(z_s, z_t.detach())


_RUNNERS = {"jax": _jax_rows, "tensorflow": _tf_rows, "torch": _torch_rows}
