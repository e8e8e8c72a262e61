"""The format of a training batch, shared by the input pipelines and the teachers.

`keras_tfkd.data` builds the batches and `keras_tfkd.teachers` (and
`keras_tfkd.online`) read them: both import this module, which imports
nothing of the package, so the data code never imports the teachers. The
public names are re-exported where they have always been
(`keras_tfkd.teachers.TEACHER_LOGITS_KEY`, `keras_tfkd.data.num_batches`).
"""

from __future__ import annotations

import math

__all__ = [
    "EXAMPLE_INDEX_KEY",
    "INPUTS_KEY",
    "PACKED_KEYS",
    "PAIR_INPUTS_KEY",
    "TEACHER_LOGITS_KEY",
    "is_packed",
    "num_batches",
]

#: The key of the cached teacher logits of a packed batch:
#: ``{"inputs": x, "teacher_logits": z}``.
TEACHER_LOGITS_KEY = "teacher_logits"
#: The key of the student's inputs in a packed batch.
INPUTS_KEY = "inputs"
#: The key of each example's position in the training set, for teachers that
#: keep per-example state (PS-KD): ``{"inputs": x, "example_index": i}``.
EXAMPLE_INDEX_KEY = "example_index"
#: The key of the class partners of a CS-KD batch: ``{"inputs": x, "pair_inputs": x'}``.
PAIR_INPUTS_KEY = "pair_inputs"
#: The keys a packed batch may hold besides the student's inputs.
PACKED_KEYS = frozenset(
    {INPUTS_KEY, TEACHER_LOGITS_KEY, EXAMPLE_INDEX_KEY, PAIR_INPUTS_KEY}
)


def is_packed(inputs):
    """True for ``{"inputs": x, ...}`` batches that carry more than the student's x."""
    return (
        isinstance(inputs, dict)
        and INPUTS_KEY in inputs
        and len(inputs) > 1
        and set(inputs) <= PACKED_KEYS
    )


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches in one pass of `keras_tfkd.data.pipeline` (so train steps per epoch).

    ``drop_remainder`` drops a last, smaller batch, unless that would leave
    none (a batch larger than the data still trains one partial batch).

    Example:
        >>> num_batches(1347, 64, True), num_batches(1347, 64, False)
        (21, 22)
        >>> num_batches(10, 64, True)
        1
    """
    if drop_remainder and num_examples >= batch_size:
        return num_examples // batch_size
    return max(1, math.ceil(num_examples / batch_size))
