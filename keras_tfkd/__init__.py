"""keras-tfkd: teacher-free knowledge distillation for Keras 3.

Implements *Revisiting Knowledge Distillation via Label Smoothing
Regularization* (Yuan et al., CVPR 2020) on TensorFlow, JAX and PyTorch.

Public API:

* `keras_tfkd.compare` - which methods help *your* model on *your* data (the
  study's protocol: paired seeds, validation-selected epochs, the claims).
* `keras_tfkd.Distiller` - a `keras.Model` mixing hard CE with soft targets;
  `keras_tfkd.Term` - one weighted term (a teacher and its losses) of it.
* `keras_tfkd.losses` - `SoftTargetKL`, `SoftTargetCrossEntropy`,
  `LabelSmoothingCrossEntropy`.
* `keras_tfkd.teachers` - `VirtualTeacher`, `UniformTeacher`, `CachedTeacher`,
  `EnsembleTeacher`.
* `keras_tfkd.features` - `FeatureDistillation` (also in `keras_tfkd.losses`).
* `keras_tfkd.recipes` - `baseline`, `label_smoothing`, `kd`, `tfkd_self`,
  `tfkd_reg`.
* `keras_tfkd.data` - data sets (`load`) and `pipeline` (NumPy `PyDataset` or
  ``tf.data``); `keras_tfkd.data.augment` - the reference augmentations in
  NumPy.
* `keras_tfkd.callbacks` - schedulers, self-teacher snapshots, monitors,
  `StudentCheckpoint`, `NaNGuard`, `RunBackup`; `keras_tfkd.born_again` -
  born-again (multi-generation Tf-KD_self) training.
* `keras_tfkd.experiments` - the paper's experiments as data; `keras_tfkd.runs` -
  a run planned once (`plan_run`) and executed (`execute`, `train`);
  `keras_tfkd.study` - the whole comparison, its table and plot.
* `keras_tfkd.tokens` - sequence outputs ``(N, L, V)``: every term a mean over
  the unmasked tokens (language models, KerasHub CausalLMs).
* `keras_tfkd.topk` - offline top-k (or sampled) teacher logits of a language
  model: `write_topk_cache`, `TopKTeacher`, `TopKLoss`.
* `keras_tfkd.models`, `keras_tfkd.schedules`, `keras_tfkd.metrics`.

Every name is imported on first use, so `import keras_tfkd` does not import
Keras: the `keras-tfkd` command can still choose the backend.
"""

import importlib

__version__ = "0.1.0"

_MODULES = {
    "losses",
    "recipes",
    "teachers",
    "models",
    "data",
    "schedules",
    "callbacks",
    "born_again",
    "experiments",
    "runs",
    "metrics",
    "study",
    "presets",
    "cli",
    "distribution",
    "features",
    "terms",
    "tokens",
    "topk",
}

__all__ = ["Distiller", "Term", "compare", *sorted(_MODULES)]


def __getattr__(name):
    if name == "Distiller":
        from keras_tfkd.distiller import Distiller

        globals()[name] = Distiller
        return Distiller
    if name == "compare":
        from keras_tfkd.study.compare import compare

        globals()[name] = compare
        return compare
    if name == "Term":
        from keras_tfkd.terms import Term

        globals()[name] = Term
        return Term
    if name in _MODULES:
        module = importlib.import_module(f"keras_tfkd.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_tfkd' has no attribute {name!r}")
