"""The student's output projection applied chunk by chunk inside the loss.

`keras_tfkd.fused` (the public side) hands this module the student's final
hidden states ``h`` ``(rows, d)``, the projection's kernel (``(d, V)``, or a
tied embedding ``(V, d)``) and bias, the labels, the row weights and the
soft terms (a per-row loss and the teacher's logits ``(rows, V)`` each).
`fused_sums` returns the weighted sums over the rows, one per output::

    sums[0] = sum_r w[r] * CE(z[r], y[r])           the hard cross-entropy
    sums[k] = sum_r w[r] * fn_k(z_t_k[r], z[r], y[r])   each soft term, k >= 1
    z = h @ kernel + bias                            never built whole

computing, chunk by chunk in the forward pass, a chunk's logits ``z_c = h_c
@ kernel + bias``, each output's sum over the chunk and its gradient with
respect to ``h_c``, the kernel and the bias (the vector-Jacobian product of
the chunk's sums, once per output); the kernel's and bias's gradients are
accumulated over the chunks (Liger-Kernel's fused linear losses do the
same). Peak extra memory: one chunk's intermediates, plus the stored
gradients: ``(rows, n, d)`` for ``h`` and ``n`` copies of the kernel, ``n``
the number of outputs, none of the size ``rows x V``. The backward pass
contracts the stored gradients with the outputs' cotangents.

With `coefficients` (the `Distiller`'s loss weights, ``c``, one per output)
a chunk takes one gradient instead of ``n``: that of ``sum_k c_k sums_k``,
the only combination a training step differentiates. The backward pass then
reads the cotangent ``g`` by its coordinate along ``c``, ``(g . c) / (c .
c)``: exact for ``g`` parallel to ``c`` (the `Distiller`'s total, loss
scaling included), the projection onto ``c`` otherwise. The projection's
backward matmuls then run once per chunk, not once per output, and the
stored gradients are ``n`` times smaller.

Each backend runs its own loop and custom gradient, as `keras_tfkd._chunked`
does: JAX a `jax.custom_vjp` around a `jax.lax.fori_loop`, TensorFlow a
`tf.custom_gradient` around a `tf.while_loop` (a persistent
`tf.GradientTape` per chunk), PyTorch a `torch.autograd.Function` (its
stored gradients are consumed by the one backward pass). On JAX and
TensorFlow every chunk has one static shape: the last chunk starts at ``rows
- chunk`` and overlaps the one before, and the rows already counted get the
weight 0 there (so they are neither summed nor differentiated twice).

The teachers' logits, the labels and the weights get no gradient here.

This is a backend fence (tests/test_keras_compat.py, ``BACKEND_FENCES``):
frameworks are imported inside functions only.
"""

from __future__ import annotations

import keras
from keras import ops


def chunk_sums(z, labels, weights, soft):
    """The weighted sums of one chunk: ``[CE, soft_1, ...]`` (float32, ``(n,)``).

    `z` ``(c, V)`` float32 logits, `labels` ``(c,)`` integer ids, `weights`
    ``(c,)``, `soft` a sequence of ``(fn, z_t)`` (``z_t`` ``(c, V)``;
    ``fn(z_t, z, labels)`` the per-row loss, the labels for label-aware ones).
    """
    lse = ops.logsumexp(z, axis=-1)
    picked = ops.take_along_axis(z, ops.expand_dims(labels, -1), axis=-1)[:, 0]
    sums = [ops.sum(weights * (lse - picked))]
    for fn, z_t in soft:
        sums.append(ops.sum(weights * ops.cast(fn(z_t, z, labels), "float32")))
    return ops.stack(sums)


def project(h, kernel, bias, transposed):
    """``h @ kernel + bias`` as float32 logits (``kernel`` is ``(V, d)`` when
    `transposed`, a tied embedding)."""
    if transposed:
        z = ops.matmul(h, ops.transpose(kernel))
    else:
        z = ops.matmul(h, kernel)
    return ops.cast(z, "float32") + ops.cast(bias, "float32")


def fused_sums(
    h, kernel, bias, labels, weights, soft, chunk, transposed, coefficients=None
):
    """``(n,)`` float32: the hard CE's and each soft term's weighted sum.

    `h` ``(rows, d)``, `kernel` ``(d, V)`` (``(V, d)`` if `transposed`),
    `bias` ``(V,)``, `labels` ``(rows,)`` ints, `weights` ``(rows,)``,
    `soft` ``[(fn, z_t), ...]`` with ``z_t`` ``(rows, V)`` and ``fn(z_t_rows,
    z_rows) -> (rows,)``, `chunk` rows per chunk (>= 1), `coefficients`
    None (every output's own gradient) or ``(n,)``: the weights the caller
    sums the outputs with (one gradient per chunk; the module docstring).
    Gradients reach `h`, `kernel` and `bias` only.
    """
    fns = tuple(fn for fn, _ in soft)
    z_ts = tuple(ops.convert_to_tensor(z_t) for _, z_t in soft)
    labels = ops.cast(labels, "int32")
    weights = ops.cast(weights, "float32")
    n = 1 + len(fns)
    if coefficients is None:
        directions = ops.eye(n, dtype="float32")
    else:
        directions = ops.reshape(ops.cast(coefficients, "float32"), (1, n))
    run = _RUNNERS[keras.backend.backend()]
    return run(
        h, kernel, bias, labels, weights, fns, z_ts, int(chunk), transposed, directions
    )


def _coordinates(cotangent, directions):
    """The cotangent's coordinates ``(m,)`` along the stored directions: itself
    for the identity, else its projection onto the one row ``c``."""
    if directions.shape[0] != 1:  # the identity: every output's own gradient
        return cotangent
    c = directions[0]
    norm = ops.sum(c * c)
    safe = ops.where(norm > 0, norm, 1.0)
    return ops.reshape(ops.where(norm > 0, ops.sum(cotangent * c) / safe, 0.0), (1,))


def _contract(cotangent, gh, gk, gb, directions):
    """The input gradients from the stored per-direction ones and the cotangent."""
    cotangent = _coordinates(ops.cast(cotangent, "float32"), directions)
    c = ops.cast(cotangent, gh.dtype)
    dh = ops.einsum("rnd,n->rd", gh, c)
    dk = ops.tensordot(ops.cast(cotangent, gk.dtype), gk, axes=1)
    db = ops.tensordot(ops.cast(cotangent, gb.dtype), gb, axes=1)
    return dh, dk, db


# ------------------------------------------------------------------------ JAX
def _jax_sums(
    h, kernel, bias, labels, weights, fns, z_ts, chunk, transposed, directions
):
    import jax
    import jax.numpy as jnp

    rows = h.shape[0]
    chunk = min(chunk, rows)
    count = -(-rows // chunk)
    n = 1 + len(fns)
    m = directions.shape[0]

    def forward(h, kernel, bias, labels, weights, z_ts, directions):
        def body(i, carry):
            sums, gh, gk, gb = carry
            start = jnp.minimum(i * chunk, rows - chunk)

            def cut(x):
                return jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=0)

            # Rows of an overlapping last chunk that an earlier one counted.
            fresh = (start + jnp.arange(chunk)) >= i * chunk
            w_c = jnp.where(fresh, cut(weights), 0.0)
            y_c, t_c = cut(labels), tuple(cut(z) for z in z_ts)

            def sums_of(h_c, kernel, bias):
                z = project(h_c, kernel, bias, transposed)
                return chunk_sums(z, y_c, w_c, tuple(zip(fns, t_c)))

            s, pull = jax.vjp(sums_of, cut(h), kernel, bias)
            gh_c, gk_c, gb_c = jax.vmap(pull)(directions.astype(s.dtype))
            old = jax.lax.dynamic_slice_in_dim(gh, start, chunk, axis=0)
            gh = jax.lax.dynamic_update_slice_in_dim(
                gh, old + jnp.swapaxes(gh_c, 0, 1), start, axis=0
            )
            return sums + s, gh, gk + gk_c, gb + gb_c

        init = (
            jnp.zeros((n,), "float32"),
            jnp.zeros((rows, m) + h.shape[1:], h.dtype),
            jnp.zeros((m,) + kernel.shape, kernel.dtype),
            jnp.zeros((m,) + bias.shape, bias.dtype),
        )
        sums, gh, gk, gb = jax.lax.fori_loop(0, count, body, init)
        return sums, (gh, gk, gb, directions)

    @jax.custom_vjp
    def sums_fn(h, kernel, bias, labels, weights, z_ts, directions):
        return forward(h, kernel, bias, labels, weights, z_ts, directions)[0]

    def bwd(stored, cotangent):
        return (*_contract(cotangent, *stored), None, None, None, None)

    sums_fn.defvjp(forward, bwd)
    z_ts = tuple(jax.lax.stop_gradient(z) for z in z_ts)
    directions = jax.lax.stop_gradient(directions)
    return sums_fn(h, kernel, bias, labels, weights, z_ts, directions)


# ----------------------------------------------------------------- TensorFlow
def _tf_sums(
    h, kernel, bias, labels, weights, fns, z_ts, chunk, transposed, directions
):
    import tensorflow as tf

    n = 1 + len(fns)
    m = directions.shape[0]
    directions = tf.stop_gradient(directions)
    static_rows = h.shape[0]
    # Nothing outside watches the loop (see keras_tfkd._chunked): the only
    # tapes inside are each chunk's own.
    labels, weights = tf.stop_gradient(labels), tf.stop_gradient(weights)
    z_ts = tuple(tf.stop_gradient(z) for z in z_ts)

    def one(h_c, kernel, bias, y_c, w_c, t_c):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([h_c, kernel, bias])
            z = project(h_c, kernel, bias, transposed)
            s = chunk_sums(z, y_c, w_c, tuple(zip(fns, t_c)))
            parts = [tf.tensordot(directions[k], s, 1) for k in range(m)]
        grads = [tape.gradient(p, [h_c, kernel, bias]) for p in parts]
        del tape
        gh_c, gk_c, gb_c = (
            tf.stack([g[j] for g in grads], axis=1 if j == 0 else 0) for j in range(3)
        )
        return s, gh_c, gk_c, gb_c

    def forward(h, kernel, bias):
        rows = tf.shape(h)[0]
        size = chunk if static_rows is None else min(chunk, static_rows)
        if static_rows is None:
            size = tf.minimum(size, rows)
        count = (rows + size - 1) // size

        def body(i, sums, gh, gk, gb):
            start = tf.minimum(i * size, rows - size)

            def cut(x):
                begin = tf.concat([[start], tf.zeros([x.shape.rank - 1], "int32")], 0)
                sizes = tf.concat(
                    [[size], tf.fill([x.shape.rank - 1], tf.constant(-1, "int32"))], 0
                )
                return tf.slice(x, begin, sizes)

            fresh = (start + tf.range(size)) >= i * size
            w_c = tf.where(fresh, cut(weights), 0.0)
            s, gh_c, gk_c, gb_c = one(
                cut(h), kernel, bias, cut(labels), w_c, tuple(cut(z) for z in z_ts)
            )
            index = tf.expand_dims(start + tf.range(size), -1)
            gh = tf.tensor_scatter_nd_add(gh, index, gh_c)
            return i + 1, sums + s, gh, gk + gk_c, gb + gb_c

        init = (
            tf.constant(0),
            tf.zeros((n,), "float32"),
            tf.zeros(tf.concat([[rows, m], tf.shape(h)[1:]], 0), h.dtype),
            tf.zeros((m,) + tuple(kernel.shape), kernel.dtype),
            tf.zeros((m,) + tuple(bias.shape), bias.dtype),
        )
        _, sums, gh, gk, gb = tf.while_loop(
            lambda i, *_: i < count, body, init, parallel_iterations=1
        )
        return sums, (gh, gk, gb)

    @tf.custom_gradient
    def sums_fn(h, kernel, bias):
        sums, stored = forward(
            tf.stop_gradient(h), tf.stop_gradient(kernel), tf.stop_gradient(bias)
        )

        def grad_fn(cotangent):
            return _contract(cotangent, *stored, directions)

        return sums, grad_fn

    return sums_fn(h, kernel, bias)


# -------------------------------------------------------------------- PyTorch
def _torch_sums(
    h, kernel, bias, labels, weights, fns, z_ts, chunk, transposed, directions
):
    import torch

    n = 1 + len(fns)
    m = directions.shape[0]
    directions = directions.detach()
    z_ts = tuple(z.detach() for z in z_ts)
    labels, weights = labels.detach(), weights.detach()

    class Sums(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, kernel, bias):
            rows = h.shape[0]
            sums = torch.zeros(n, dtype=torch.float32, device=h.device)
            gh = torch.zeros(
                (rows, m) + tuple(h.shape[1:]), dtype=h.dtype, device=h.device
            )
            gk = torch.zeros(
                (m,) + tuple(kernel.shape), dtype=kernel.dtype, device=h.device
            )
            gb = torch.zeros(
                (m,) + tuple(bias.shape), dtype=bias.dtype, device=h.device
            )
            kernel_, bias_ = kernel.detach(), bias.detach()
            for start in range(0, rows, chunk):
                stop = min(start + chunk, rows)
                with torch.enable_grad():
                    inputs = [
                        h[start:stop].detach().requires_grad_(True),
                        kernel_.requires_grad_(True),
                        bias_.requires_grad_(True),
                    ]
                    z = project(*inputs, transposed)
                    t_c = tuple(z_t[start:stop] for z_t in z_ts)
                    s = chunk_sums(
                        z, labels[start:stop], weights[start:stop], tuple(zip(fns, t_c))
                    )
                    for k in range(m):
                        g_h, g_k, g_b = torch.autograd.grad(
                            (directions[k] * s).sum(), inputs, retain_graph=k < m - 1
                        )
                        gh[start:stop, k] = g_h
                        gk[k] += g_k
                        gb[k] += g_b
                sums += s.detach()
            ctx.stored = (gh, gk, gb)
            return sums

        @staticmethod
        def backward(ctx, cotangent):
            stored, ctx.stored = ctx.stored, None
            if stored is None:
                raise RuntimeError(
                    "A fused projection loss's gradient was already taken once: "
                    "its stored gradients are consumed by the first backward pass."
                )
            return _contract(cotangent, *stored, directions)

    return Sums.apply(h, kernel, bias)


_RUNNERS = {"jax": _jax_sums, "tensorflow": _tf_sums, "torch": _torch_sums}
