"""Training workflows: one run of an `Experiment`, its teacher trained first and cached.

`train` runs one experiment with one seed on one loaded data set and returns
its result record (also appended to a `ResultsStore`). How the teacher is
obtained is data (`keras_tfkd.experiments.TEACHER_SOURCE`):

==========  =================================================================
method      teacher
==========  =================================================================
baseline    none; the run itself is a normal run whose checkpoints are cached
lsr         none (label smoothing, one stage)
tfkd_reg    none (the virtual teacher is built from the labels, one stage)
kd, rekd    a normal run of the teacher model -- its *best* checkpoint (best
            test accuracy over epochs, as the paper reports), or a checkpoint
            given by the user
dekd        the checkpoint after ``teacher_epochs`` epochs of the teacher's
            normal run (its schedule is that of the full run)
tfkd_self   stage 1: a normal run of the student's own architecture; its best
            checkpoint is frozen as the teacher. Stage 2 trains a freshly
            initialised model of that architecture with `recipes.tfkd_self`.
==========  =================================================================

Normal runs are cached under ``<output_dir>/checkpoints/``: ``best.keras``
and ``final.keras`` (``student.save``) and ``run.json``, keyed by model, data
set, epochs, seed and training settings, so every method and every later run
that needs the same teacher reuses it. Each run is seeded with
``keras.utils.set_random_seed(seed)`` just before its model is built, and the
data pipeline with the same seed. Stage 2 of Tf-KD_self therefore starts from
the same initial weights as stage 1 did (not from the trained weights), as in
the reference code, which seeds every run with 230.

Training uses `keras_tfkd.data.pipeline` (the data set's reference
augmentation) and, with ``TrainConfig(optimizer="reference")``,
`keras_tfkd.schedules.reference_optimizer` (CIFAR) or `imagenet_optimizer`.
``optimizer="adam"`` uses Adam (constant learning rate, or a cosine decay to 0
over the run): what the study uses for the small models on the offline data
sets, where a dozen epochs of Adam train well and the reference warm-up and
decay over 200 epochs make no sense.
Test accuracy is measured after every epoch; a record keeps the final and the
best one.

Example:

```python
from keras_tfkd import data, experiments, workflows
ds = data.load("digits")
exp = experiments.get("tfkd_reg/resnet18").replace(
    student="cnn_tiny", dataset="digits", epochs=10, batch_size=64)
store = workflows.ResultsStore("runs/demo/results.json")
record = workflows.train(exp, ds, seed=0, output_dir="runs/demo", store=store,
                         config=workflows.TrainConfig(optimizer="adam"))
record["best_test_accuracy"], record["kl_translation"]["note"]
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import shutil
import time
import zipfile
from pathlib import Path

import keras
import numpy as np

from keras_tfkd import _backend, _io, schedules
from keras_tfkd import callbacks as callbacks_lib
from keras_tfkd import data as data_lib
from keras_tfkd import experiments as experiments_lib

__all__ = [
    "OPTIMIZERS",
    "CorruptCheckpointError",
    "ResultsStore",
    "TrainConfig",
    "build_model",
    "check_keras_file",
    "check_model_name",
    "compilation_cache",
    "deterministic",
    "model_names",
    "planned_key",
    "run_key",
    "teacher_checkpoint",
    "train",
]

OPTIMIZERS = ("reference", "adam")
RESULTS_FILE = "results.json"
CHECKPOINTS_DIR = "checkpoints"
BACKUPS_DIR = "backups"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How runs are trained, beyond the experiment's own hyper-parameters.

    Args:
        optimizer: ``"reference"`` (the paper's SGD and schedule: CIFAR or
            ImageNet protocol of the experiment) or ``"adam"`` (Adam at
            `learning_rate`, see `lr_schedule`).
        learning_rate: Adam's learning rate (default 1e-3); must be None with
            the reference optimiser, whose rate follows the batch size.
        lr_schedule: Adam only: ``"constant"`` or ``"cosine"`` (decay to 0
            over the run's epochs, `keras.optimizers.schedules.CosineDecay`).
        augment: passed to `data.pipeline` for the train split (None: the data
            set's reference augmentation).
        translation: ``"auto"`` or ``"none"``, see
            `Experiment.kl_translation`.
        eval_batch_size: batch size of the per-epoch test evaluation.
        drop_remainder: drop the last, smaller training batch of each epoch
            (the data is reshuffled every epoch, so no example is left out for
            good). The reference keeps it; on JAX a second batch shape means a
            second compilation of the train step, which dominates short runs.
        progress_every: print a line every this many epochs (0: never).
    """

    optimizer: str = "reference"
    learning_rate: float | None = None
    lr_schedule: str = "constant"
    augment: bool | str | None = None
    translation: str = "auto"
    eval_batch_size: int = 512
    drop_remainder: bool = False
    progress_every: int = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"`optimizer` must be one of {OPTIMIZERS}, got "
                f"optimizer={self.optimizer!r}."
            )
        if self.learning_rate is not None:
            if self.optimizer != "adam":
                raise ValueError(
                    "`learning_rate` is only for optimizer='adam' (the reference "
                    "optimiser uses 0.1 * batch_size / 128), got "
                    f"learning_rate={self.learning_rate!r}."
                )
            if not (
                isinstance(self.learning_rate, (int, float))
                and math.isfinite(self.learning_rate)
                and self.learning_rate > 0
            ):
                raise ValueError(
                    "`learning_rate` must be a number > 0, got "
                    f"learning_rate={self.learning_rate!r}."
                )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                "`lr_schedule` must be 'constant' or 'cosine', got "
                f"lr_schedule={self.lr_schedule!r}."
            )
        if self.lr_schedule != "constant" and self.optimizer != "adam":
            raise ValueError(
                "`lr_schedule` is only for optimizer='adam' (the reference "
                "optimiser has its own schedule), got "
                f"lr_schedule={self.lr_schedule!r}."
            )
        if self.translation not in ("auto", "none"):
            raise ValueError(
                "`translation` must be 'auto' or 'none', got "
                f"translation={self.translation!r}."
            )

    def hyperparameters(self):
        hp = {"optimizer": self.optimizer}
        if self.optimizer == "adam":
            hp["learning_rate"] = self.learning_rate or 1e-3
            if self.lr_schedule != "constant":
                hp["lr_schedule"] = self.lr_schedule
        if self.augment is not None:
            hp["augment"] = self.augment
        if self.drop_remainder:
            hp["drop_remainder"] = True
        return hp


# ------------------------------------------------------------------ results
def run_key(method, student, teacher, dataset, seed, epochs, hyperparameters):
    """The identity of a run: readable fields plus a hash of the hyper-parameters.

    >>> run_key("kd", "cnn_tiny", "cnn_small", "digits", 0, 5, {"alpha": 0.9})
    'kd/cnn_tiny/cnn_small/digits/seed0/epochs5/...'
    """
    blob = json.dumps(hyperparameters, sort_keys=True, default=str)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:10]
    return (
        f"{method}/{student}/{teacher or '-'}/{dataset}/seed{seed}/epochs{epochs}/"
        f"{digest}"
    )


class ResultsStore:
    """A ``results.json`` file: a list of run records, one per key.

    Every `add` re-reads the file, merges by ``key`` (a finished run is
    never duplicated; re-adding a key replaces its record) and rewrites it
    atomically (a temporary file in the same folder, then `os.replace`), so
    an interrupted write never loses the runs already there.

    Example:

    >>> store = ResultsStore("runs/study/results.json")  # doctest: +SKIP
    >>> store.get(key) is None  # not run yet  # doctest: +SKIP
    """

    def __init__(self, path):
        self.path = Path(path)

    def _read(self):
        if not self.path.exists():
            return []
        try:
            records = json.loads(self.path.read_text() or "[]")
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{self.path} is not valid JSON ({e}); move it away to start a "
                "new results file."
            ) from e
        if not isinstance(records, list) or not all(
            isinstance(r, dict) and "key" in r for r in records
        ):
            raise ValueError(
                f"{self.path} is not a keras-tfkd results file (a JSON list of "
                "records with a 'key'); move it away to start a new one."
            )
        return records

    @property
    def records(self):
        """All records, in the order they were first added."""
        return self._read()

    def get(self, key):
        """The record with this key, or None."""
        for record in self._read():
            if record["key"] == key:
                return record
        return None

    def add(self, record):
        """Add (or replace) the record with ``record["key"]``; write atomically."""
        records = self._read()
        for i, old in enumerate(records):
            if old["key"] == record["key"]:
                records[i] = record
                break
        else:
            records.append(record)
        _io.write_json_atomic(self.path, records)
        return record


# ------------------------------------------------------------------- models
def model_names():
    """Every student/teacher name: `keras_tfkd.models` plus the ImageNet ones."""
    from keras_tfkd import models

    return sorted([*models.available(), *experiments_lib.IMAGENET_APPLICATIONS])


def check_model_name(name, argument="model"):
    """Raise `UnknownNameError` (listing the valid names) for an unknown model."""
    names = model_names()
    if name not in names:
        raise experiments_lib.UnknownNameError(
            f"Unknown {argument} {name!r}; valid models: {', '.join(names)}.",
            name,
            names,
        )


def build_model(name, num_classes, input_shape):
    """A logits model by name: `keras_tfkd.models` or a `keras.applications` one.

    The ImageNet names (``imagenet_resnet50``, ``imagenet_mobilenet_v2``,
    ``imagenet_densenet121``) build the `keras.applications` model with
    ``weights=None`` and ``classifier_activation=None`` (logits).

    >>> model = build_model("cnn_tiny", 10, (8, 8, 1))  # doctest: +SKIP
    """
    check_model_name(name)
    app = experiments_lib.IMAGENET_APPLICATIONS.get(name)
    if app is not None:
        return getattr(keras.applications, app)(
            weights=None,
            input_shape=tuple(input_shape),
            classes=int(num_classes),
            classifier_activation=None,
        )
    from keras_tfkd import models

    return models.get_model(name, num_classes, input_shape=tuple(input_shape))


# ---------------------------------------- backend-specific (in _backend.py)
@contextlib.contextmanager
def compilation_cache(directory):
    """JAX only: keep XLA compilations on disk and reuse them across runs.

    A study trains the same few architectures with several seeds; on JAX each
    new model is traced and compiled anew, and for the small models the XLA
    compilation dominates the run (measured on 2 busy CPU cores: about 10 s
    for the first epoch of `cnn_tiny` on digits, 1 s with this cache).
    TensorFlow (no XLA on CPU by default) and PyTorch (eager) have nothing to
    cache, and there this does nothing. The previous JAX settings are restored
    on exit. Yields True if the cache is in use. (The JAX code is
    `keras_tfkd._backend.jax_compilation_cache`.)

    >>> with compilation_cache("runs/study/.jax_cache"):  # doctest: +SKIP
    ...     train(...)
    """
    with _backend.jax_compilation_cache(directory) as in_use:
        yield in_use


def deterministic(seed):
    """Seed everything for a reproducible run; on TensorFlow, deterministic ops.

    Calls ``keras.utils.set_random_seed(seed)`` (Python, NumPy and the
    backend's generators) and, on the TensorFlow backend only,
    ``tf.config.experimental.enable_op_determinism()`` (for the rest of the
    process, via `keras_tfkd._backend.enable_op_determinism`): without it,
    some TF kernels (e.g. multi-threaded reductions) may sum in a different
    order from run to run. JAX and PyTorch on CPU are deterministic once
    seeded. Same seed and backend: the same results.

    >>> deterministic(0)  # doctest: +SKIP
    """
    keras.utils.set_random_seed(int(seed))
    _backend.enable_op_determinism()


# ---------------------------------------------------------------- training
class _TestAccuracy(keras.callbacks.Callback):
    """Test accuracy of the student after every epoch; keeps its best weights.

    Only the student is evaluated (``student.predict``), not the Distiller:
    no teacher forward pass, and on JAX one compiled predict function per
    architecture, shared by every method through the compilation cache. The
    accuracy is written to the epoch logs as ``test_accuracy``.
    """

    def __init__(self, test_data, labels, keep_best_weights, log, every, total, label):
        super().__init__()
        self.test_data = test_data
        self.labels = np.asarray(labels).reshape(-1)
        self.keep_best_weights = keep_best_weights
        self.log = log
        self.every = every
        self.total = total
        self.label = label
        self.best = -1.0
        self.best_epoch = 0
        self.best_weights = None
        self.accuracies = []
        self.history = {}

    def state(self):
        """JSON-able state for a `RunBackup` (the best weights go separately)."""
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "accuracies": list(self.accuracies),
            "history": {k: list(v) for k, v in self.history.items()},
        }

    def restore(self, state):
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.accuracies = [float(a) for a in state["accuracies"]]
        self.history = {k: [float(v) for v in vs] for k, vs in state["history"].items()}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        student = self.model.student
        logits = np.asarray(student.predict(self.test_data, verbose=0))
        acc = float(np.mean(np.argmax(logits, axis=-1) == self.labels))
        if not np.all(np.isfinite(logits)):
            acc = float("nan")
        logs["test_accuracy"] = acc
        self.accuracies.append(acc)
        for name, key in _HISTORY_KEYS:
            if key in logs:
                self.history.setdefault(name, []).append(float(logs[key]))
        if acc > self.best:
            self.best, self.best_epoch = acc, epoch + 1
            if self.keep_best_weights:
                self.best_weights = student.get_weights()
        if self.every and ((epoch + 1) % self.every == 0 or epoch + 1 == self.total):
            self.log(
                f"    {self.label} epoch {epoch + 1}/{self.total}: "
                f"loss {logs.get('loss', float('nan')):.4f}  "
                f"test acc {100 * acc:.2f}%  (best {100 * self.best:.2f}%)"
            )


def _make_optimizer(experiment, config, steps_per_epoch):
    if config.optimizer == "adam":
        lr = config.learning_rate or 1e-3
        if config.lr_schedule == "cosine":
            lr = keras.optimizers.schedules.CosineDecay(
                lr, decay_steps=steps_per_epoch * experiment.epochs
            )
        return keras.optimizers.Adam(lr)
    if experiment.protocol == "imagenet":
        return schedules.imagenet_optimizer(
            experiment.batch_size, steps_per_epoch, experiment.epochs
        )
    return schedules.reference_optimizer(
        experiment.student, experiment.batch_size, steps_per_epoch, experiment.epochs
    )


def _default_log(message):
    print(message, flush=True)


_HISTORY_KEYS = (
    ("test_accuracy", "test_accuracy"),
    ("train_accuracy", "accuracy"),
    ("loss", "loss"),
    ("hard_loss", "hard_loss"),
    ("soft_loss", "soft_loss"),
)


def _epoch_seed(seed, epoch):
    """The data seed of one epoch: a resumed run sees the same batches."""
    return int(seed) * 100_003 + int(epoch)


def _best_weights_state(tracker, backup_dir):
    """Save the tracker's best weights next to the backup; the backup's state."""
    state = tracker.state()
    if tracker.best_weights is not None:
        name = f"best-epoch-{tracker.best_epoch}.npz"
        path = Path(backup_dir) / name
        if not path.exists():
            _io.write_atomic(path, lambda tmp: np.savez(tmp, *tracker.best_weights))
        state["best_weights"] = name
        committed = callbacks_lib.RunBackup.read_state(backup_dir) or {}
        keep = {name, committed.get("state", {}).get("best_weights")}
        for other in Path(backup_dir).glob("best-epoch-*.npz"):
            if other.name not in keep:
                other.unlink()
    return state


def _load_best_weights(backup_dir, name):
    with np.load(Path(backup_dir) / name, allow_pickle=False) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def _fit(
    experiment,
    dataset,
    *,
    seed,
    config,
    teacher,
    fit_epochs,
    keep_best_weights,
    log,
    label,
    backup_dir=None,
):
    """Build, compile and train one Distiller; return (student, tracker, info).

    With `backup_dir`, a `RunBackup` saves the run after every epoch and a
    rerun resumes from it: the model is rebuilt from the same seed, the
    weights, optimizer state, best accuracy so far (and best weights) and
    history are restored, and training goes on from the next epoch. Every
    epoch's data comes from a pipeline seeded with ``(seed, epoch)``, so a
    resumed run sees the same batches as an uninterrupted one.
    """
    n_train = dataset.num_examples("train")
    if n_train == 0:
        raise ValueError(
            f"The train split of dataset {dataset.name!r} is empty: there is "
            "nothing to train on. Check the data folder and the `limit` argument."
        )
    if dataset.num_examples("test") == 0:
        raise ValueError(
            f"The test split of dataset {dataset.name!r} is empty: test accuracy "
            "cannot be measured. Check the data folder and the `limit` argument."
        )
    deterministic(seed)
    student = build_model(experiment.student, dataset.num_classes, dataset.input_shape)
    distiller = experiment.build(student, teacher, translation=config.translation)
    drop = config.drop_remainder and n_train >= experiment.batch_size
    steps = data_lib.num_batches(n_train, experiment.batch_size, drop)
    distiller.compile(
        optimizer=_make_optimizer(experiment, config, steps), metrics=["accuracy"]
    )
    test_data = data_lib.pipeline(dataset, "test", config.eval_batch_size)
    tracker = _TestAccuracy(
        test_data,
        dataset.labels("test"),
        keep_best_weights,
        log,
        config.progress_every,
        fit_epochs,
        label,
    )
    guard = callbacks_lib.NaNGuard(raise_error=False, log=log)
    callbacks = [guard, tracker]
    initial_epoch = 0
    if backup_dir is not None:
        backup_dir = Path(backup_dir)
        meta = callbacks_lib.RunBackup.read_state(backup_dir)
        if meta is not None:
            initial_epoch = min(int(meta["epoch"]), fit_epochs)
            state = meta.get("state") or {}
            tracker.restore(state)
            if keep_best_weights and state.get("best_weights"):
                tracker.best_weights = _load_best_weights(
                    backup_dir, state["best_weights"]
                )
            log(f"    {label}: resuming after epoch {initial_epoch} from {backup_dir}")
        callbacks.append(
            callbacks_lib.RunBackup(
                backup_dir,
                state=lambda: _best_weights_state(tracker, backup_dir),
                guard=guard,
            )
        )
    start = time.perf_counter()
    # A fit of no epoch builds the Distiller (and restores the backup, if
    # any) before any epoch's pipeline is read: Keras's build reads one batch,
    # which would otherwise advance that epoch's reshuffled order.
    distiller.fit(
        data_lib.pipeline(dataset, "train", experiment.batch_size, shuffle=False),
        initial_epoch=initial_epoch,
        epochs=initial_epoch,
        callbacks=callbacks[2:],
        verbose=0,
    )
    for epoch in range(initial_epoch, fit_epochs):
        train_data = data_lib.pipeline(
            dataset,
            "train",
            experiment.batch_size,
            augment=config.augment,
            seed=_epoch_seed(seed, epoch),
            drop_remainder=drop,
        )
        distiller.fit(
            train_data,
            initial_epoch=epoch,
            epochs=epoch + 1,
            callbacks=callbacks,
            shuffle=False,
            verbose=0,
        )
        if guard.tripped or len(tracker.accuracies) < epoch + 1:
            break
    seconds = time.perf_counter() - start
    test_acc = tracker.accuracies
    epochs_run = len(test_acc)
    losses = tracker.history.get("loss", [])
    diverged = (
        guard.tripped
        or epochs_run < fit_epochs
        or not all(math.isfinite(v) for v in losses)
    )
    history = {k: v[:epochs_run] for k, v in tracker.history.items()}
    info = {
        "test_accuracy": float(test_acc[-1]) if test_acc else None,
        "best_test_accuracy": tracker.best if tracker.best >= 0 else None,
        "best_epoch": tracker.best_epoch,
        "epochs_completed": epochs_run,
        "diverged": bool(diverged),
        "train_seconds": round(seconds, 3),
        "history": history,
        "steps_per_epoch": steps,
    }
    if guard.tripped:
        info["stopped_at"] = guard.stopped_at
    if initial_epoch:
        info["resumed_after_epoch"] = initial_epoch
    return student, tracker, info


def _base_record(experiment, dataset, seed, epochs, hyperparameters, config):
    translation = experiment.kl_translation(dataset.num_classes, config.translation)
    return {
        "key": run_key(
            experiment.method,
            experiment.student,
            experiment.teacher,
            dataset.name,
            seed,
            epochs,
            hyperparameters,
        ),
        "method": experiment.method,
        "student": experiment.student,
        "teacher": experiment.teacher,
        "dataset": dataset.name,
        "num_classes": dataset.num_classes,
        "seed": int(seed),
        "epochs": int(epochs),
        "experiment": experiment.based_on or experiment.id,
        "id": experiment.id,
        "hyperparameters": hyperparameters,
        "kl_reduction": translation["kl_reduction"],
        "kl_translation": translation,
        "published_accuracy": experiment.published_accuracy,
    }


def _finish(record, info):
    record.update(info)
    record["backend"] = keras.backend.backend()
    record["keras_version"] = keras.__version__
    record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    return record


def _hyperparameters(experiment, dataset, config):
    hp = experiment.hyperparameters()
    hp.update(config.hyperparameters())
    hp["train_examples"] = dataset.num_examples("train")
    hp["test_examples"] = dataset.num_examples("test")
    if experiment.method in experiments_lib.KL_METHODS:
        hp["translation"] = config.translation
    return hp


def _planned_record(
    experiment, dataset, seed, config, stop_after=None, teacher_checkpoint_path=None
):
    """The record of a run before it runs: its fields and its key."""
    epochs = stop_after or experiment.epochs
    hp = _hyperparameters(experiment, dataset, config)
    if stop_after is not None:
        hp["schedule_epochs"] = experiment.epochs
    if teacher_checkpoint_path is not None:
        hp["teacher_checkpoint"] = str(teacher_checkpoint_path)
    record = _base_record(experiment, dataset, seed, epochs, hp, config)
    if stop_after is not None:
        record["role"] = "teacher"
    return record


def planned_key(experiment, dataset, seed, config=None, teacher_checkpoint_path=None):
    """The key `train` will give this run (look it up in a `ResultsStore`)."""
    config = config or TrainConfig()
    return _planned_record(
        experiment,
        dataset,
        seed,
        config,
        teacher_checkpoint_path=teacher_checkpoint_path,
    )["key"]


def _normal_run(
    experiment, dataset, *, seed, output_dir, config, store, log, stop_after=None
):
    """A baseline run with cached ``best.keras``/``final.keras``; its record."""
    record = _planned_record(experiment, dataset, seed, config, stop_after)
    epochs = record["epochs"]
    folder = Path(output_dir) / CHECKPOINTS_DIR / _folder_name(record)
    cached = _cached_normal_run(folder, log)
    if cached is not None and cached["key"] == record["key"]:
        if store is not None and store.get(cached["key"]) is None:
            store.add(cached)
        return cached, folder
    what = f"{experiment.student} ({dataset.name}, seed {seed}, {epochs} epochs"
    what += f" of {experiment.epochs})" if stop_after else ")"
    log(f"  training {what} normally ...")
    student, tracker, info = _fit(
        experiment,
        dataset,
        seed=seed,
        config=config,
        teacher=None,
        fit_epochs=epochs,
        keep_best_weights=True,
        log=log,
        label=experiment.student,
        backup_dir=folder / "backup",
    )
    folder.mkdir(parents=True, exist_ok=True)
    _save_model(student, folder / "final.keras")
    if tracker.best_weights is not None:
        student.set_weights(tracker.best_weights)
    _save_model(student, folder / "best.keras")
    record = _finish(record, info)
    record["checkpoints"] = {
        "best": str(Path(CHECKPOINTS_DIR) / folder.name / "best.keras"),
        "final": str(Path(CHECKPOINTS_DIR) / folder.name / "final.keras"),
    }
    _io.write_json_atomic(folder / "run.json", record)
    if store is not None:
        store.add(record)
    shutil.rmtree(folder / "backup", ignore_errors=True)
    return record, folder


def _folder_name(record):
    digest = record["key"].rsplit("/", 1)[-1]
    return (
        f"{record['dataset']}-{record['student']}-e{record['epochs']}-"
        f"s{record['seed']}-{digest}"
    )


class CorruptCheckpointError(ValueError):
    """A ``.keras`` file that is truncated or damaged."""


def check_keras_file(path, argument="checkpoint"):
    """Raise `CorruptCheckpointError` if `path` is not an intact ``.keras`` file.

    A ``.keras`` file is a zip archive: a truncated one has no central
    directory and a damaged one fails its CRC checks; both are caught here,
    before Keras tries to load it. The message names the file and says what
    to do.

    >>> check_keras_file("runs/x/checkpoints/.../best.keras")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{argument} not found: {argument}={str(path)!r}.")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        bad, names = f"not a complete .keras (zip) archive: {e}", None
    else:
        if bad is not None:
            bad = f"member {bad!r} is damaged"
        elif not {"config.json", "model.weights.h5"} <= names:
            bad = "config.json or model.weights.h5 is missing"
    if bad is not None:
        raise CorruptCheckpointError(
            f"The {argument} {str(path)!r} is truncated or corrupt ({bad}). "
            "Delete it and train it again (or pass another file)."
        )


def _cached_normal_run(folder, log=_default_log):
    """The cached record of a finished normal run, or None (then: retrain).

    A cache whose checkpoints are truncated or corrupt is never reused: it is
    reported and the run is trained again (its files are replaced).
    """
    run_file = folder / "run.json"
    if not (
        run_file.exists()
        and (folder / "best.keras").exists()
        and (folder / "final.keras").exists()
    ):
        return None
    try:
        record = json.loads(run_file.read_text())
    except json.JSONDecodeError:
        log(f"  {run_file} is not valid JSON: training this run again.")
        return None
    for name in ("best.keras", "final.keras"):
        try:
            check_keras_file(folder / name, "cached checkpoint")
        except CorruptCheckpointError as e:
            log(f"  {e} Training this run again.")
            run_file.unlink(missing_ok=True)
            return None
    return record


def _save_model(model, path):
    _io.write_atomic(path, model.save)


def teacher_checkpoint(
    experiment,
    dataset,
    *,
    seed,
    output_dir,
    config=None,
    store=None,
    log=_default_log,
):
    """Path of the teacher checkpoint of `experiment` (training it if needed).

    Returns ``(path, teacher_record)``: the best checkpoint of the teacher's
    normal run for kd/rekd/tfkd_self, the checkpoint after
    ``teacher_epochs`` epochs for dekd. Normal runs are cached in
    ``output_dir`` and reused by every run that needs the same one.
    """
    config = config or TrainConfig()
    source = experiment.teacher_source
    if source is None:
        raise ValueError(f"Experiment {experiment.id!r} has no teacher model.")
    teacher_exp = experiment.teacher_experiment()
    stop = experiment.teacher_epochs if source == "early" else None
    record, folder = _normal_run(
        teacher_exp,
        dataset,
        seed=seed,
        output_dir=output_dir,
        config=config,
        store=store,
        log=log,
        stop_after=stop,
    )
    which = "final" if source == "early" else "best"
    return folder / f"{which}.keras", record


def _load_teacher(path, dataset):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Teacher checkpoint not found: teacher={str(path)!r}.")
    check_keras_file(path, "teacher checkpoint")
    try:  # safe_mode=True (the default): no lambda/code from the file runs
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        raise CorruptCheckpointError(
            f"Cannot load the teacher checkpoint {str(path)!r} "
            f"({type(e).__name__}: {e}). Delete it and train it again (or pass "
            "another file)."
        ) from e
    if not isinstance(model, keras.Model) or len(model.outputs or ()) != 1:
        raise ValueError(
            f"The teacher checkpoint {str(path)!r} is not a one-output logits model."
        )
    classes = model.output_shape[-1]
    if classes != dataset.num_classes:
        raise ValueError(
            f"The teacher checkpoint {str(path)!r} predicts {classes} classes but "
            f"{dataset.name!r} has {dataset.num_classes}."
        )
    return model


def _teacher_accuracy(model, dataset, config):
    test = data_lib.pipeline(dataset, "test", config.eval_batch_size)
    logits = model.predict(test, verbose=0)
    labels = np.asarray(dataset.labels("test"))
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def train(
    experiment,
    dataset,
    *,
    seed,
    output_dir,
    config=None,
    store=None,
    teacher_checkpoint_path=None,
    log=_default_log,
):
    """Run one experiment with one seed; return its record (skip if finished).

    Args:
        experiment: an `Experiment` (from `experiments.get`, maybe replaced).
        dataset: a loaded `keras_tfkd.data.Dataset`; its ``num_classes`` sets
            the KL translation (see `keras_tfkd.experiments`).
        seed: seeds the model initialisation, the data order and augmentation.
        output_dir: folder of the cached teacher checkpoints.
        config: a `TrainConfig` (default: the reference optimiser).
        store: a `ResultsStore`; a run whose key is already there is skipped
            and its record returned.
        teacher_checkpoint_path: a trained teacher (``.keras``) to use instead
            of training one (kd, rekd, dekd, tfkd_self).
        log: called with one line of progress at a time.

    Returns:
        The record: method, student, teacher, dataset, seed, epochs,
        test_accuracy (final), best_test_accuracy (best over epochs) and
        best_epoch, train_seconds (wall time of `fit`, compilation and the
        per-epoch evaluation included), backend, hyperparameters (the key's
        hash covers them), experiment (the registry id it started from),
        kl_reduction and kl_translation (which translation was applied),
        teacher_test_accuracy, history (per-epoch test accuracy and losses),
        diverged.
    """
    config = config or TrainConfig()
    check_model_name(experiment.student, "student")
    if experiment.teacher is not None:
        check_model_name(experiment.teacher, "teacher")
    if experiment.method == "baseline":
        record, _ = _normal_run(
            experiment,
            dataset,
            seed=seed,
            output_dir=output_dir,
            config=config,
            store=store,
            log=log,
        )
        return record
    record = _planned_record(
        experiment,
        dataset,
        seed,
        config,
        teacher_checkpoint_path=teacher_checkpoint_path,
    )
    if store is not None:
        done = store.get(record["key"])
        if done is not None:
            return done
    teacher = None
    if experiment.teacher_source is not None:
        if teacher_checkpoint_path is None:
            path, teacher_record = teacher_checkpoint(
                experiment,
                dataset,
                seed=seed,
                output_dir=output_dir,
                config=config,
                store=store,
                log=log,
            )
            key = (
                "test_accuracy" if experiment.method == "dekd" else "best_test_accuracy"
            )
            teacher_acc = teacher_record.get(key)
            record["teacher_key"] = teacher_record["key"]
        else:
            path, teacher_acc = Path(teacher_checkpoint_path), None
        teacher = _load_teacher(path, dataset)
        if teacher_acc is None:
            teacher_acc = _teacher_accuracy(teacher, dataset, config)
        record["teacher_checkpoint"] = str(path)
        record["teacher_test_accuracy"] = teacher_acc
    backup_dir = (
        Path(output_dir)
        / BACKUPS_DIR
        / f"{record['method']}-{record['teacher'] or 'none'}-{_folder_name(record)}"
    )
    _, _, info = _fit(
        experiment,
        dataset,
        seed=seed,
        config=config,
        teacher=teacher,
        fit_epochs=experiment.epochs,
        keep_best_weights=False,
        log=log,
        label=experiment.id,
        backup_dir=backup_dir,
    )
    record = _finish(record, info)
    if store is not None:
        store.add(record)
    shutil.rmtree(backup_dir, ignore_errors=True)
    return record


def explain_accuracy(record):
    """Why a finished run's accuracy looks the way it does: lines to print.

    Reads a result record (`train`'s return value, a line of ``results.json``)
    and returns ``[]`` for a run that learned, or lines such as
    ``"diverged at epoch 3 (batch 7, loss nan); ..."`` and
    ``"near chance (1/K = 10.0%): alpha=0.95 leaves 5% of the loss weight on
    the labels; ..."``. A run is *near chance* when its best test accuracy is
    at most ``min(1.5 / K, 1 / K + 0.1)``; one that got further and then fell
    back there has *collapsed*. The reasons looked for: a soft term that
    leaves little weight on the labels (``alpha >= 0.9``) in a run shorter
    than its published schedule, a teacher that is itself near chance, a
    De-KD teacher stopped early on purpose, or simply too few epochs.

    >>> explain_accuracy({"num_classes": 10, "best_test_accuracy": 0.098,
    ...                   "test_accuracy": 0.098, "epochs": 2,
    ...                   "method": "tfkd_reg", "experiment": "tfkd_reg/mobilenet_v2",
    ...                   "hyperparameters": {"alpha": 0.95}})[0][:34]
    'near chance (1/K = 10.0%): alpha=0'
    """
    lines = []
    hp = record.get("hyperparameters") or {}
    epochs = record.get("epochs")
    if record.get("diverged"):
        stop = record.get("stopped_at") or {}
        if stop.get("epoch") is not None:
            detail = [
                f"{name} {stop[name]}"
                for name in ("batch", "loss")
                if stop.get(name) is not None
            ]
            what = f"diverged at epoch {stop['epoch']}"
            what += f" ({', '.join(detail)})" if detail else ""
        else:
            done = record.get("epochs_completed")
            what = "diverged (a non-finite loss)"
            if done is not None and epochs is not None:
                what += f" after {done} of {epochs} epochs"
        lines.append(
            f"{what}; the accuracies are those of the epochs before: lower the "
            "learning rate or the soft term's weight (alpha, multiplier)"
        )
    k = record.get("num_classes")

    def finite(value):  # a run that diverged in its first epoch has NaN here
        return value if value is not None and math.isfinite(value) else None

    best = finite(record.get("best_test_accuracy"))
    final = finite(record.get("test_accuracy"))
    acc = best if best is not None else final
    if not k or k < 2 or acc is None:
        return lines
    chance = 1.0 / k
    limit = min(1.5 * chance, chance + 0.1)
    head = f"near chance (1/K = {100 * chance:.1f}%)"
    if acc > limit:
        if final is not None and final <= limit:
            at = record.get("best_epoch")
            at = f" at epoch {at}" if at else ""
            lines.append(
                f"ended {head} at {100 * final:.1f}% after a best of "
                f"{100 * best:.1f}%{at}: training collapsed; lower the learning "
                "rate or the soft term's weight"
            )
        return lines
    try:  # the schedule of the registry row the run started from
        schedule = experiments_lib.get(record.get("experiment") or "").epochs
    except (KeyError, ValueError, TypeError):
        schedule = None
    reasons = []
    if record.get("role") == "teacher":
        run = hp.get("schedule_epochs")
        run = f" of its {run}-epoch run" if run else ""
        reasons.append(
            f"the De-KD teacher, stopped after {epochs} epoch(s){run} on purpose "
            "(a poorly trained teacher is the point)"
        )
    alpha = hp.get("alpha")
    if (
        record.get("method") in experiments_lib.KL_METHODS
        and isinstance(alpha, (int, float))
        and alpha >= 0.9
    ):
        labels = round(100 * (1 - alpha), 2)
        why = f"alpha={alpha:g} leaves {labels:g}% of the loss weight on the labels"
        soft = (record.get("kl_translation") or {}).get("soft_weight")
        if hp.get("optimizer", "reference") == "reference" and soft is not None:
            total = (1 - alpha) + soft
            if 0 < total < 0.5:
                why += (
                    f" (the soft term weighs {soft:.3g}), so SGD's steps are about "
                    f"{1 / total:.0f}x smaller than a baseline's"
                )
        if schedule and epochs and epochs < schedule:
            why += (
                f"; the published setting expects the {schedule}-epoch schedule: "
                f"try --epochs {schedule} or --alpha 0.5"
            )
        else:
            why += ": try --alpha 0.5"
        reasons.append(why)
    teacher_acc = record.get("teacher_test_accuracy")
    if teacher_acc is not None and teacher_acc <= limit:
        reasons.append(f"its teacher is itself near chance ({100 * teacher_acc:.1f}%)")
    if not reasons:
        if schedule and epochs and epochs < schedule:
            reasons.append(
                f"only {epochs} epoch(s) of the published {schedule}: train longer "
                f"(--epochs {schedule})"
            )
        else:
            reasons.append("the model did not learn: check the learning rate and data")
    lines.append(f"{head}: " + "; ".join(reasons))
    return lines
