"""Online teachers: soft targets made from the student's own training predictions.

The teacher-free methods after the Tf-KD paper need no trained teacher: they
distil the student into itself while it trains. Each is a
`keras_tfkd.teachers.Teacher` that keeps its state in non-trainable
variables of the `Distiller` (so it is saved, restored on resume, and
updated inside the compiled step on TensorFlow, JAX and PyTorch):

* `PastPredictions` -- PS-KD: each example's softmax from its previous visit.
* `OnlineSoftLabels` -- Online Label Smoothing: one soft label per class, the
  mean softmax of its correctly classified examples in the previous epoch.
* `ClassPairTeacher` -- CS-KD: the student's logits on another example of the
  same class, drawn anew each epoch by `ClassPairBatches`.
"""

from keras_tfkd.online.cskd import ClassPairBatches, ClassPairTeacher
from keras_tfkd.online.ols import OLS_VARIANTS, OnlineSoftLabels
from keras_tfkd.online.pskd import STORE_DTYPES, PastPredictions, store_bytes

__all__ = [
    "PastPredictions",
    "STORE_DTYPES",
    "store_bytes",
    "OnlineSoftLabels",
    "OLS_VARIANTS",
    "ClassPairTeacher",
    "ClassPairBatches",
]
