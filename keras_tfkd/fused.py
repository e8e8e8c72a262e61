"""The fused projection: the student's logits are never built whole in training.

A language model's largest tensor in distillation is the student's logits,
``(N x L, V)`` (and autodiff keeps them, and their gradient, for the backward
pass). With the *fused projection* the student stops at its final hidden
states ``h`` ``(N x L, d)`` and the loss applies the output projection itself,
a chunk of rows at a time, together with the hard cross-entropy and every
soft term (`keras_tfkd._fused`, Liger-Kernel's fused linear losses)::

    z_c = h_c @ W + b                                     one chunk of logits
    hard = sum_r w[r] * (logsumexp(z[r]) - z[r, y[r]]) / R
    soft_i = sum_r w[r] * loss_i.call(z_t[r], z[r]) / R   each soft loss
    d hard / d h, d hard / d W, d soft_i / d h, ...       chunk by chunk

with ``w`` the token weights of `keras_tfkd.tokens` (the padding mask made a
token mean) and ``R`` the number of rows: the same values as the logits-then-
loss path, `keras_tfkd.Distiller`'s default. ``W`` is a `keras.layers.Dense`
kernel ``(d, V)`` (and its bias), or a (tied or untied)
`keras.layers.ReversibleEmbedding`, KerasHub's CausalLM head. The gradients
reach ``h`` (so the backbone) and ``W``; peak memory of the loss is one
chunk's intermediates plus ``h``'s gradient and ``W``'s, not ``R x V``.

Two ways in:

* ``Distiller(..., fused_projection=True)`` (a KerasHub ``CausalLM``: its
  ``backbone.token_embedding``) or ``fused_projection="layer name"`` (the
  last layer of a functional student, a linear ``Dense`` or a
  ``ReversibleEmbedding``); in training the Distiller's forward pass returns
  the hidden states and `compute_loss` fuses (`FusedPlan`), handing the
  fused loss its loss weights so that each chunk takes one gradient, of the
  weighted sum; `evaluate`, `predict` and ``__call__`` compute the logits
  as usual.
* `projection_losses` (hidden states and a layer) and `linear_losses`
  (hidden states and the weights), the same computation for a training loop
  of one's own.

Rows per chunk: the smallest int ``chunk_size`` of the soft losses, else
``max(1, 2**21 // V)`` (``"auto"``, as `keras_tfkd.losses`). Refused, with
the argument named: a student without a recognisable final projection, a
soft-capped or quantised head, soft losses that are not per-token functions
of the logits and labels (feature losses, Keras's own losses; DKD and the
other label-aware losses are fused, each chunk with its labels), teachers
that learn from the student's logits (PS-KD, OLS, CS-KD) or hand over
another form than rows of the batch (a `keras.Model`, `CachedTeacher`,
`VirtualTeacher`, `UniformTeacher`, `EnsembleTeacher`,
`TruncatedVocabulary` and the top-k cache's `keras_tfkd.topk.TopKTeacher`
with its `keras_tfkd.topk.TopKLoss` are fused: each chunk of rows meets its
own rows of the targets, ``V`` wide or, top-k, ``2k + 2``), compiled metrics (they
would see the hidden states), a hard loss other than the sparse
cross-entropy on logits, and a student with several outputs.
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from keras_tfkd import _fused, tokens
from keras_tfkd._chunked import AUTO_CHUNK_ELEMENTS, check_chunk_size
from keras_tfkd.features import find_layer
from keras_tfkd.losses import targets_with_labels
from keras_tfkd.term_plan import select_output

__all__ = [
    "linear_losses",
    "projection_losses",
    "projection_of",
    "FusedPlan",
    "plan",
    "check_compile",
    "config",
]


def _describe(value):
    return f"fused_projection={value!r}"


def _head_weights(layer, argument):
    """``(kernel, bias, transposed)`` of a projection layer, or an error."""
    if getattr(layer, "quantization_mode", None) is not None:
        raise ValueError(
            f"{argument}: the layer {layer.name!r} is quantised "
            f"({layer.quantization_mode}); the fused projection needs float weights."
        )
    if isinstance(layer, keras.layers.ReversibleEmbedding):
        if layer.logit_soft_cap is not None:
            raise ValueError(
                f"{argument}: the layer {layer.name!r} soft-caps its logits "
                f"(logit_soft_cap={layer.logit_soft_cap}), which the fused "
                "projection does not compute; train without fused_projection."
            )
        if layer.tie_weights:
            return layer.embeddings, None, True
        return layer.reverse_embeddings, None, False
    if isinstance(layer, keras.layers.Dense):
        if layer.activation not in (None, keras.activations.linear):
            raise ValueError(
                f"{argument}: the layer {layer.name!r} has the activation "
                f"{getattr(layer.activation, '__name__', layer.activation)!r}; "
                "the fused projection needs a linear one (logits)."
            )
        return layer.kernel, layer.bias, False
    raise ValueError(
        f"{argument}: the layer {layer.name!r} is a {type(layer).__name__}; the "
        "fused projection needs a keras.layers.Dense or a "
        "keras.layers.ReversibleEmbedding."
    )


def _causal_lm_head(student):
    """``(backbone, token_embedding)`` of a KerasHub CausalLM, else None.

    The structure KerasHub's CausalLMs share: logits are
    ``backbone.token_embedding(backbone(x), reverse=True)``.
    """
    backbone = getattr(student, "backbone", None)
    head = getattr(backbone, "token_embedding", None)
    layers = getattr(student, "layers", [])
    if (
        isinstance(backbone, keras.Model)
        and isinstance(head, keras.layers.ReversibleEmbedding)
        and len(layers) >= 2
        and layers[-1] is head
        and layers[-2] is backbone
    ):
        return backbone, head
    return None


def projection_of(student, fused_projection):
    """``(layer, hidden)``: the final projection and ``hidden(inputs, training)``.

    `fused_projection` is True (a KerasHub CausalLM's head) or the name of the
    projection layer. Raises a `ValueError` naming the argument when the
    student has no such projection.
    """
    argument = _describe(fused_projection)
    causal = _causal_lm_head(student)
    if fused_projection is True:
        if causal is None:
            raise ValueError(
                f"{argument} needs a KerasHub CausalLM student (logits = "
                "backbone.token_embedding(backbone(x), reverse=True)), got a "
                f"{type(student).__name__}: name its final Dense layer instead, "
                "fused_projection='<layer name>'."
            )
        backbone, layer = causal
        _head_weights(layer, argument)
        return layer, lambda x, training: backbone(x, training=training)
    if not isinstance(fused_projection, str) or isinstance(fused_projection, bool):
        raise TypeError(
            "`fused_projection` must be None, True (a KerasHub CausalLM) or the "
            f"name of the student's final projection layer, got {argument}."
        )
    if causal is not None and fused_projection == causal[1].name:
        return projection_of(student, True)
    layer = find_layer(student, fused_projection, "fused_projection")
    _head_weights(layer, argument)
    try:
        last = student.output is layer.output
        hidden_model = keras.Model(student.inputs, layer.input) if last else None
    except (AttributeError, ValueError, TypeError):
        last = False
    if not last:
        raise ValueError(
            f"{argument}: the layer {layer.name!r} must be the final layer of a "
            "functional student, called once, whose output is the student's "
            "logits."
        )
    return layer, lambda x, training: hidden_model(x, training=training)


def _is_topk(loss):
    """Whether `loss` takes a `TopKTeacher`'s packed rows (a `TopKLoss`)."""
    return getattr(loss, "targets", None) == "topk" and hasattr(loss, "compress")


def _per_token(loss):
    """The per-token loss whose chunking applies: a `TopKLoss`'s wrapped one."""
    return loss.loss if _is_topk(loss) else loss


def loss_rows(loss, argument):
    """``fn(z_t, z_s, labels) -> (rows,)``: a soft loss's per-row value (a
    label-aware loss, such as DKD, reads the chunk's labels; a `TopKLoss`
    the chunk's packed top-k rows), or an error."""
    why = None
    if getattr(loss, "uses_features", False):
        why = "compares layers, not logits"
    elif not hasattr(_per_token(loss), "chunk_size"):
        why = "is not a per-token loss of keras_tfkd.losses or .divergences"
    elif loss.reduction != "sum_over_batch_size":
        why = f"has reduction={loss.reduction!r} (the fused path sums over tokens)"
    if why is not None:
        raise ValueError(
            f"{argument}: the soft loss {type(loss).__name__} ({loss.name!r}) "
            f"cannot be fused: it {why}. Remove it or train without fused_projection."
        )
    if getattr(loss, "uses_labels", False):
        return lambda z_t, z_s, labels: loss.call(targets_with_labels(z_t, labels), z_s)
    return lambda z_t, z_s, labels: loss.call(z_t, z_s)


@contextlib.contextmanager
def _unchunked(losses):
    """The losses' own chunking off: the fused path calls them on one chunk."""
    losses = [_per_token(loss) for loss in losses]
    saved = [loss.chunk_size for loss in losses]
    try:
        for loss in losses:
            loss.chunk_size = None
        yield
    finally:
        for loss, size in zip(losses, saved):
            loss.chunk_size = size


def _rows_per_chunk(chunk_size, losses, vocabulary):
    sizes = [check_chunk_size(chunk_size)]
    sizes += [_per_token(loss).chunk_size for loss in losses]
    ints = [s for s in sizes if isinstance(s, int)]
    return min(ints) if ints else max(1, AUTO_CHUNK_ELEMENTS // vocabulary)


def projection_losses(
    hidden,
    layer,
    labels,
    soft=(),
    sample_weight=None,
    chunk_size="auto",
    coefficients=None,
):
    """`linear_losses` of ``layer(hidden)``: the layer's weights read for it.

    `layer` is a linear `keras.layers.Dense` (kernel and bias) or a
    `keras.layers.ReversibleEmbedding` (tied: the embeddings ``(V, d)``;
    untied: its ``reverse_embeddings``), e.g. a KerasHub CausalLM's
    ``backbone.token_embedding``. Gradients reach `hidden` and those weights.

    Example (a KerasHub CausalLM ``lm`` and its teacher ``big``, inside a
    training step of one's own):

    ```python
    hidden = lm.backbone(x)                      # (N, L, d): no logits
    hard, (kl,) = fused.projection_losses(
        hidden, lm.backbone.token_embedding, y,
        soft=[(losses.SoftTargetKL(temperature=2.0), big(x))],
        sample_weight=x["padding_mask"],
    )
    loss = 0.5 * hard + 0.5 * kl
    ```
    """
    argument = f"projection_losses(layer={getattr(layer, 'name', layer)!r})"
    kernel, bias, tied = _head_weights(layer, argument)
    dtype = getattr(layer, "reverse_dtype", None)
    if dtype is not None:
        hidden, kernel = ops.cast(hidden, dtype), ops.cast(kernel, dtype)
    return linear_losses(
        hidden,
        kernel,
        labels,
        bias=bias,
        soft=soft,
        sample_weight=sample_weight,
        chunk_size=chunk_size,
        tied=tied,
        coefficients=coefficients,
    )


def linear_losses(
    hidden,
    kernel,
    labels,
    bias=None,
    soft=(),
    sample_weight=None,
    chunk_size="auto",
    tied=False,
    coefficients=None,
):
    """The hard cross-entropy and soft losses of ``hidden @ kernel + bias``, fused.

    ``hidden`` ``(N, L, d)`` (or ``(N, d)``), the final hidden states;
    `kernel` ``(d, V)`` (``(V, d)`` with ``tied=True``, a tied embedding
    matrix, used transposed); `bias` ``(V,)`` or None; `labels` integer ids
    ``(N, L)``; `soft` a list of ``(loss, teacher_logits)`` pairs
    (``teacher_logits`` ``(N, L, V)``, ``loss`` a per-token loss of
    `keras_tfkd.losses`/`keras_tfkd.divergences`); `sample_weight` the
    padding mask ``(N, L)``. Returns ``(hard, [soft_1, ...])``::

        z      = hidden @ kernel + bias            (R, V), a chunk at a time
        hard   = sum_r w[r] * (logsumexp(z[r]) - z[r, y[r]]) / R
        soft_i = sum_r w[r] * loss_i.call(z_t[r], z[r]) / R

    over the ``R`` rows (tokens), ``w`` from `keras_tfkd.tokens.token_weights`
    (the mean over the unmasked tokens for sequences, Keras's
    ``"sum_over_batch_size"`` for ``(N, d)``): ``hard`` equals
    ``SparseCategoricalCrossentropy(from_logits=True)(y, z, w)`` and
    ``soft_i`` equals ``loss_i(z_t, z, w)`` on the whole logits. The logits
    are computed `chunk_size` rows at a time (``"auto"``: the smallest int
    ``chunk_size`` of the losses, else ``2**21 // V``) together with the
    gradient with respect to `hidden`, `kernel` and `bias`; the teachers'
    logits get none. `coefficients` (``[c_hard, c_1, ...]``, None by
    default) are the weights a training step sums the outputs with, as
    ``c_hard * hard + sum_i c_i * soft_i``: each chunk then takes one
    gradient, of that sum, instead of one per output (faster, less memory),
    and only that weighted sum's gradient is exact (the `Distiller` passes
    its loss weights).

    Example:

    >>> import numpy as np
    >>> from keras_tfkd import losses
    >>> r = np.random.default_rng(0)
    >>> h = r.normal(size=(2, 3, 4)).astype("float32")
    >>> w = r.normal(size=(4, 5)).astype("float32")
    >>> z_t = r.normal(size=(2, 3, 5)).astype("float32")
    >>> y = np.array([[0, 1, 2], [3, 4, 0]])
    >>> kl = losses.SoftTargetKL(temperature=2.0)
    >>> hard, (soft,) = linear_losses(h, w, y, soft=[(kl, z_t)], chunk_size=4)
    >>> whole = kl(z_t, h @ w)
    >>> bool(abs(float(soft) - float(whole)) < 1e-5)
    True
    """
    argument = "linear_losses"
    hidden = ops.convert_to_tensor(hidden)
    kernel = ops.cast(kernel, hidden.dtype)
    vocabulary = kernel.shape[0] if tied else kernel.shape[-1]
    if bias is None:
        bias = ops.zeros((vocabulary,), hidden.dtype)
    bias = ops.cast(bias, hidden.dtype)
    losses = [loss for loss, _ in soft]
    fns = [loss_rows(loss, argument) for loss in losses]
    h = ops.reshape(hidden, (-1, hidden.shape[-1]))
    rows = ops.shape(h)[0]
    teachers = []
    for loss, z_t in soft:
        z_t = ops.convert_to_tensor(z_t)
        # A top-k loss's rows are packed (2k + 2 wide); its own check reads them.
        width = z_t.shape[-1] if _is_topk(loss) else vocabulary
        want = tuple(hidden.shape[:-1]) + (width,)
        if tuple(z_t.shape) != want:
            raise ValueError(
                f"{argument}: the teacher targets of {loss.name!r} have the shape "
                f"{tuple(z_t.shape)}; the student's logits would be "
                f"{tuple(hidden.shape[:-1]) + (vocabulary,)}."
            )
        teachers.append(ops.reshape(ops.cast(z_t, "float32"), (-1, width)))
    weights = tokens.token_weights(sample_weight, hidden)
    ones = ops.ones(ops.shape(hidden)[:-1], "float32")
    weights = ones if weights is None else ops.cast(weights, "float32") * ones
    weights = ops.reshape(weights, (-1,))
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    chunk = _rows_per_chunk(chunk_size, losses, vocabulary)
    with _unchunked(losses):
        sums = _fused.fused_sums(
            h,
            kernel,
            bias,
            labels,
            weights,
            list(zip(fns, teachers)),
            chunk,
            tied,
            coefficients=None
            if coefficients is None
            else ops.stop_gradient(ops.stack(list(coefficients))),
        )
    sums = sums / ops.cast(rows, "float32")
    return sums[0], [sums[i + 1] for i in range(len(losses))]


def plan(student, fused_projection, term_plan, output_name):
    """A `Distiller`'s `FusedPlan`, or None for ``fused_projection=None``/False."""
    if fused_projection is None or fused_projection is False:
        return None
    return FusedPlan(student, fused_projection, term_plan, output_name)


def check_compile(plan, metrics):
    """Refuse compiled metrics with a fused projection (they would see the
    student's hidden states in training, not its logits)."""
    if plan is not None and metrics:
        raise ValueError(
            f"{plan.argument}: compiled metrics would see the student's hidden "
            "states in training, not its logits; compile without metrics "
            "(`evaluate` logs the losses)."
        )


def config(plan):
    """The Distiller's config entry: ``{"fused_projection": ...}``, or {} without."""
    return {} if plan is None else {"fused_projection": plan.option}


def _unfusable_teacher(teacher):
    """Why a term's teacher cannot feed the fused losses, or None.

    A `keras.Model`, or a `keras_tfkd.teachers.Teacher` whose targets are
    rows made from the inputs and labels alone: dense ``(N x L, V)`` rows
    (`CachedTeacher`, `VirtualTeacher`, `UniformTeacher`, `EnsembleTeacher`,
    `TruncatedVocabulary`) or a `keras_tfkd.topk.TopKTeacher`'s packed
    ``(N x L, 2k + 2)`` rows: each chunk of them meets the same chunk of
    the student's logits.
    """
    if teacher is None or isinstance(teacher, keras.Model):
        return None
    if getattr(teacher, "learns_from_student", False):
        return "learns from the student's logits, which are never built in training"
    if getattr(teacher, "targets", "logits") not in FUSABLE_TARGETS:
        return (
            f"hands the loss {teacher.targets!r} targets, not rows of the batch "
            f"(fused: {', '.join(FUSABLE_TARGETS)})"
        )
    return None


#: The forms of teacher targets the fused losses take, a chunk of rows at a time.
FUSABLE_TARGETS = ("logits", "probabilities", "topk")


class FusedPlan:
    """A `Distiller`'s fused projection (``fused_projection=``), kept out of
    Keras's tracking: the checks at construction, the hidden states of the
    training forward pass, and the fused hard and soft values."""

    def __init__(self, student, fused_projection, term_plan, output_name):
        argument = _describe(fused_projection)
        if output_name is not None:
            raise ValueError(
                f"{argument} distils a student with one output, got "
                f"output_name={output_name!r}."
            )
        self.layer, self._hidden = projection_of(student, fused_projection)
        for term in term_plan.terms:
            why = _unfusable_teacher(term.teacher)
            if why is not None:
                raise ValueError(
                    f"{argument} cannot fuse the term {term.name!r}: its "
                    f"{type(term.teacher).__name__} {why}. Train it without "
                    "fused_projection."
                )
            for loss in term.losses:
                loss_rows(loss, argument)
        self.argument = argument
        self.option = fused_projection
        self.stash = None

    def check_hard_loss(self, hard_loss):
        """Refuse a hard loss other than the sparse cross-entropy on logits."""
        if hard_loss is None:
            return
        config = hard_loss.get_config() if hasattr(hard_loss, "get_config") else {}
        if not (
            isinstance(hard_loss, keras.losses.SparseCategoricalCrossentropy)
            and config.get("from_logits")
            and config.get("ignore_class") is None
            and hard_loss.reduction == "sum_over_batch_size"
        ):
            raise ValueError(
                f"{self.argument} computes the hard term as the sparse "
                f"cross-entropy on logits; got the hard loss {hard_loss!r}."
            )

    def forward(self, inputs, training):
        """The student's final hidden states (kept for `take`)."""
        self.stash = self._hidden(inputs, training)
        return self.stash

    def take(self, y_pred):
        """The hidden states if `y_pred` is the training forward pass's, else None."""
        stash, self.stash = self.stash, None
        return stash if stash is not None and y_pred is stash else None

    def values(
        self, term_plan, hard_loss, x, y, hidden, weights, training, loss_weights
    ):
        """``(hard, [term values])`` of a training step, fused; `loss_weights`
        ``(hard weight, [term weights])`` are the weights the step sums them
        with (each chunk takes the gradient of that sum only)."""
        self.check_hard_loss(hard_loss)
        passes = {
            id(t): term_plan.teacher_pass(t, x, y, training)[0]
            for t in term_plan.teachers()
        }
        soft, owners = [], []
        for index, term in enumerate(term_plan.terms):
            if term.teacher is None:
                continue
            z_t = select_output(passes[id(term.teacher)], term.output_name, "teacher")
            soft += [(loss, z_t) for loss in term.losses]
            owners += [index] * len(term.losses)
        hard_weight, term_weights = loss_weights
        coefficients = [ops.cast(hard_weight, "float32")]
        coefficients += [ops.cast(term_weights[i], "float32") for i in owners]
        labels = select_output(y, None, "labels")
        if len(labels.shape) == len(hidden.shape):  # (N, L, 1) or one-hot
            labels = (
                ops.squeeze(labels, -1)
                if labels.shape[-1] == 1
                else ops.argmax(labels, axis=-1)
            )
        hard, parts = projection_losses(
            hidden,
            self.layer,
            labels,
            soft,
            sample_weight=weights,
            coefficients=coefficients,
        )
        values = [ops.zeros((), "float32") for _ in term_plan.terms]
        for index, part in zip(owners, parts):
            values[index] = values[index] + part
        return hard, values
