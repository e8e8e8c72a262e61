"""Online Label Smoothing's teacher: per-class soft labels learnt each epoch."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_tfkd import _backend
from keras_tfkd.losses import integer_labels
from keras_tfkd.online._checks import check_choice, gigabytes, refuse_sequences
from keras_tfkd.teachers import Teacher

__all__ = ["OnlineSoftLabels", "OLS_VARIANTS"]

#: The reference implementations `OnlineSoftLabels` reproduces.
OLS_VARIANTS = ("official", "port")


def _check_epsilon(epsilon):
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, (int, float, np.floating))
        or not math.isfinite(epsilon)
        or not 0.0 <= epsilon < 1.0
    ):
        raise ValueError(
            f"`epsilon` must be a number in [0, 1), got epsilon={epsilon!r}."
        )
    return float(epsilon)


@keras.saving.register_keras_serializable(package="keras_tfkd")
class OnlineSoftLabels(Teacher):
    """Online Label Smoothing's targets: one soft label per class, from the student.

    Zhang et al., *Delving Deep into Label Smoothing* (IEEE TIP 2021). A
    matrix ``S`` of shape ``(K, K)`` holds one distribution per class: row
    ``S[y]`` is the soft label of every example of class ``y``. The OLS loss
    is::

        loss = alpha_ce * CE(y, z) + (1 - alpha_ce) * CE(S[y], softmax(z))

    with ``alpha_ce = 0.5`` (hard-coded in the official code, whose
    ``--olsalpha`` flag is parsed but unused).

    During every training epoch, each example the student classifies
    correctly (``argmax softmax(z) == y``, the same forward pass as the loss,
    before the weight update, gradient-stopped, ``T = 1``) adds its
    ``softmax(z)`` to a running sum of its class and counts once. At the end
    of the epoch every row becomes the mean of its class::

        S[c] = sum of softmax(z_i) over the correct examples i of class c
               / their number

    and the sums and counts start again from zero. Epoch ``e`` is therefore
    trained on the soft labels of epoch ``e - 1``.

    In keras-tfkd the `Distiller`'s ``alpha`` weighs the *soft* term
    (``(1 - alpha) * hard + alpha * soft``), so the paper's CE weight
    ``alpha_ce`` is ``alpha = 1 - alpha_ce``: 0.5 either way. A `Distiller`
    with this teacher, ``soft_loss=SoftTargetCrossEntropy(targets=
    "probabilities")`` and ``alpha=0.5`` is OLS exactly.

    Two reference codes disagree on the start and on the classes without a
    single correct example in an epoch; `variant` picks one:

    * ``"official"`` -- the authors' code (zhangchbin/OnlineLabelSmoothing,
      ``cifar/scripts/train_cifar_all_methods.py``): ``S`` starts at zeros,
      so the soft term is exactly 0 throughout the first epoch (a zero row
      gives a cross-entropy of 0), and a class with no correct example gets
      the uniform row ``1 / K``.
    * ``"port"`` -- the popular PyTorch port (ankandrew/
      online-label-smoothing-pt): ``S`` starts from label smoothing,
      ``1 - epsilon`` on the diagonal and ``epsilon / (K - 1)`` elsewhere,
      and a class with no correct example gets an all-zero row (no soft
      term for that class in the next epoch). The port stores ``S``
      column-wise; that is the same matrix transposed.

    Ties in the argmax go to the first largest probability (`ops.argmax`;
    the official code's ``argsort(descending)[0]`` leaves ties to torch's
    unstable sort). The update ignores ``sample_weight``, as the reference
    codes have none.

    Under `MirroredStrategy` every replica adds the probabilities and labels
    of the whole global batch (gathered with `_backend.all_replicas`), so
    all copies of the state stay identical; under JAX's `DataParallel` the
    compiled step sees the whole batch anyway. The matrix (`matrix`), the
    running sums (`class_sums`, ``(K, K)``) and the counts (`class_counts`,
    ``(K,)``) are float32 non-trainable variables of the Distiller: saved
    with it and restored by `BackupAndRestore` and ``keras-tfkd run``
    resume. `Distiller.fit` runs the epoch hooks itself (`has_epoch_hooks`);
    outside `fit`, call `on_epoch_end` yourself. The sums and counts also
    start from zero at every epoch begin: Keras's `BackupAndRestore` with a
    per-batch ``save_freq`` restarts an interrupted epoch at its first batch,
    and sums saved mid-epoch would count those batches twice.

    Args:
        num_classes: K (>= 2).
        variant: one of `OLS_VARIANTS`, ``"official"`` (default) or ``"port"``.
        epsilon: the label smoothing of the ``"port"`` start, in [0, 1)
            (0.1 there); unused by ``"official"``.

    Example:

    ```python
    from keras_tfkd import Distiller
    from keras_tfkd.losses import SoftTargetCrossEntropy
    from keras_tfkd.online import OnlineSoftLabels

    distiller = Distiller(
        student=student,
        teacher=OnlineSoftLabels(10),
        soft_loss=SoftTargetCrossEntropy(targets="probabilities"),
        alpha=0.5,
    )
    distiller.compile(optimizer="sgd")
    distiller.fit(x_train, y_train, epochs=5)
    distiller.teacher.soft_labels  # the (10, 10) matrix S, a NumPy array
    ```

    >>> teacher = OnlineSoftLabels(3, variant="port", epsilon=0.1)
    >>> print(teacher.soft_labels)
    [[0.9  0.05 0.05]
     [0.05 0.9  0.05]
     [0.05 0.05 0.9 ]]
    """

    learns_from_student = True

    requires_inputs = False
    has_epoch_hooks = True
    targets = "probabilities"

    def __init__(self, num_classes, variant="official", epsilon=0.1, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.variant = check_choice("variant", variant, OLS_VARIANTS)
        self.epsilon = _check_epsilon(epsilon)
        k = self.num_classes
        self.matrix = self._state("soft_label_matrix", (k, k), self._initial_matrix)
        self.class_sums = self._state("class_sums", (k, k), "zeros")
        self.class_counts = self._state("class_counts", (k,), "zeros")

    def check_logits_shape(self, shape):
        """Refused for sequence logits: its state is two ``V x V`` matrices."""
        k = self.num_classes
        refuse_sequences(
            "Online Label Smoothing (OnlineSoftLabels)",
            shape,
            f"its soft labels are one row per class, two {k:,} x {k:,} float32 "
            f"matrices over the vocabulary ({gigabytes(2 * 4 * k * k)}), learnt "
            "from the tokens predicted correctly.",
        )

    def _state(self, name, shape, initializer):
        return self.add_weight(
            shape=shape,
            initializer=initializer,
            dtype="float32",
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
            name=name,
        )

    def initial_soft_labels(self):
        """The matrix ``S`` before the first epoch end, a NumPy array ``(K, K)``."""
        k = self.num_classes
        if self.variant == "official":
            return np.zeros((k, k), dtype="float32")
        off = self.epsilon / (k - 1)
        return (np.full((k, k), off) + np.eye(k) * (1.0 - self.epsilon - off)).astype(
            "float32"
        )

    def _initial_matrix(self, shape, dtype=None):
        return ops.convert_to_tensor(self.initial_soft_labels(), dtype=dtype)

    @property
    def soft_labels(self):
        """The current matrix ``S`` (NumPy, ``(K, K)``; row ``y``: class ``y``)."""
        return np.array(ops.convert_to_numpy(self.matrix.value))

    def call(self, inputs, labels=None):
        if labels is None:
            raise ValueError("OnlineSoftLabels needs the labels of the batch.")
        labels = integer_labels(labels, self.num_classes)
        return ops.take(self.matrix.value, labels, axis=0)

    def update(self, inputs, labels, student_logits):
        probabilities = ops.softmax(ops.cast(student_logits, "float32"), axis=-1)
        labels = ops.cast(integer_labels(labels, self.num_classes), "int32")
        probabilities, labels = _backend.all_replicas(probabilities, labels)
        correct = ops.equal(
            ops.cast(ops.argmax(probabilities, axis=-1), "int32"), labels
        )
        # (N, K) mask of the correct examples' classes: row i is onehot(y_i)
        # if example i is correct, zeros otherwise.
        mask = (
            ops.one_hot(labels, self.num_classes, dtype="float32")
            * ops.cast(correct, "float32")[:, None]
        )
        self.class_sums.assign_add(ops.matmul(ops.transpose(mask), probabilities))
        self.class_counts.assign_add(ops.sum(mask, axis=0))

    def _reset_sums(self):
        self.class_sums.assign(ops.zeros(self.class_sums.shape, "float32"))
        self.class_counts.assign(ops.zeros(self.class_counts.shape, "float32"))

    def on_epoch_begin(self, epoch, epochs):
        """The running sums and counts start from zero (the matrix is kept)."""
        self._reset_sums()

    def on_epoch_end(self, epoch):
        """``S[c] = class_sums[c] / class_counts[c]``, then the sums start again."""
        counts = ops.convert_to_tensor(self.class_counts)
        seen = (counts > 0.5)[:, None]
        means = ops.convert_to_tensor(self.class_sums) / ops.where(
            seen, counts[:, None], 1.0
        )
        empty = 1.0 / self.num_classes if self.variant == "official" else 0.0
        self.matrix.assign(ops.where(seen, means, empty))
        self._reset_sums()

    def get_config(self):
        config = super().get_config()
        config.update(variant=self.variant, epsilon=self.epsilon)
        return config
