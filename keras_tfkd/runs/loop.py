"""The training loop of one planned run: seed, build, compile, fit epoch by epoch.

Every epoch's data comes from a pipeline seeded with ``(seed, epoch)``, test
accuracy is measured after every epoch, and with a backup folder a
`RunBackup` saves the run after every epoch so a rerun resumes from it.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import time
from pathlib import Path

import keras
import numpy as np

from keras_tfkd import _backend, _io, distribution, schedules
from keras_tfkd import callbacks as callbacks_lib
from keras_tfkd import data as data_lib
from keras_tfkd import metrics as metrics_lib
from keras_tfkd.metrics import accuracy
from keras_tfkd.runs.models import build_model

__all__ = ["compilation_cache", "default_log", "deterministic", "finish", "fit"]


def default_log(message):
    """Where progress lines go unless a run is given a `log`: standard output."""
    print(message, flush=True)


def finish(record, info):
    """The planned record completed with the training's `info` and the versions."""
    record.update(info)
    record["backend"] = keras.backend.backend()
    record["keras_version"] = keras.__version__
    record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    return record


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


#: Calibration of the test predictions after every epoch (NumPy, host logits):
#: the record's field and history name, and its function.
CALIBRATION = (
    ("test_nll", metrics_lib.negative_log_likelihood),
    ("test_ece", metrics_lib.expected_calibration_error),
    ("test_brier", metrics_lib.brier_score),
)

_HISTORY_KEYS = (
    ("test_accuracy", "test_accuracy"),
    ("val_accuracy", "val_accuracy"),
    *((name, name) for name, _ in CALIBRATION),
    ("train_accuracy", "accuracy"),
    ("loss", "loss"),
    ("hard_loss", "hard_loss"),
    ("soft_loss", "soft_loss"),
)


class _TestAccuracy(keras.callbacks.Callback):
    """Test accuracy of the student after every epoch; keeps its best weights.

    Only the student is evaluated (``student.predict``), not the Distiller:
    no teacher forward pass, and on JAX one compiled predict function per
    architecture, shared by every method through the compilation cache. The
    accuracy is written to the epoch logs as ``test_accuracy``, and the
    calibration of the same predictions as ``test_nll``, ``test_ece`` (15
    equal-width bins) and ``test_brier``.

    The best epoch (`best_epoch`, 1-based, and with `keep_best_weights` the
    weights kept as the run's best checkpoint, a KD teacher's) is the *first*
    epoch that reached the best test accuracy: a later epoch that only ties
    it does not replace it, and a NaN accuracy is never best. (The
    validation selection, `_selected`, takes the last of equally good
    epochs.)
    """

    def __init__(
        self,
        test_data,
        labels,
        keep_best_weights,
        log,
        every,
        total,
        label,
        validation=None,
    ):
        super().__init__()
        self.test_data = test_data
        self.labels = np.asarray(labels).reshape(-1)
        #: ``(batches, labels)`` of held-out training examples, or None.
        self.validation = validation
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
        logits = distribution.predict(student, self.test_data)
        acc = accuracy(logits, self.labels)
        logs["test_accuracy"] = acc
        for name, function in CALIBRATION:
            logs[name] = function(logits, self.labels)
        if self.validation is not None:
            batches, labels = self.validation
            val_logits = distribution.predict(student, batches)
            logs["val_accuracy"] = accuracy(val_logits, labels)
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
                _io.remove_file(other)
    return state


def _load_best_weights(backup_dir, name):
    with np.load(Path(backup_dir) / name, allow_pickle=False) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def _check_splits(dataset):
    for split, why in (
        ("train", "there is nothing to train on"),
        ("test", "test accuracy cannot be measured"),
    ):
        if dataset.num_examples(split) == 0:
            raise ValueError(
                f"The {split} split of dataset {dataset.name!r} is empty: {why}. "
                "Check the data folder and the `limit` argument."
            )


def _resume(plan, tracker, keep_best_weights, log):
    """The epoch to start from: after the backup's last epoch, if there is one."""
    meta = callbacks_lib.RunBackup.read_state(plan.backup_dir)
    if meta is None:
        return 0
    initial_epoch = min(int(meta["epoch"]), plan.epochs)
    state = meta.get("state") or {}
    tracker.restore(state)
    if keep_best_weights and state.get("best_weights"):
        tracker.best_weights = _load_best_weights(
            plan.backup_dir, state["best_weights"]
        )
    log(
        f"    {plan.label}: resuming after epoch {initial_epoch} from {plan.backup_dir}"
    )
    return initial_epoch


def _summary(plan, tracker, guard, seconds, steps, initial_epoch):
    test_acc = tracker.accuracies
    epochs_run = len(test_acc)
    losses = tracker.history.get("loss", [])
    diverged = (
        guard.tripped
        or epochs_run < plan.epochs
        or not all(math.isfinite(v) for v in losses)
    )
    calibration = {
        name: tracker.history[name][epochs_run - 1]
        if len(tracker.history.get(name, [])) >= epochs_run > 0
        else None
        for name, _ in CALIBRATION
    }
    info = {
        "test_accuracy": float(test_acc[-1]) if test_acc else None,
        **calibration,
        **_selected(tracker.history, epochs_run),
        "best_test_accuracy": tracker.best if tracker.best >= 0 else None,
        "best_epoch": tracker.best_epoch,
        "epochs_completed": epochs_run,
        "diverged": bool(diverged),
        "train_seconds": round(seconds, 3),
        "history": {k: v[:epochs_run] for k, v in tracker.history.items()},
        "steps_per_epoch": steps,
    }
    if guard.tripped:
        info["stopped_at"] = guard.stopped_at
    if initial_epoch:
        info["resumed_after_epoch"] = initial_epoch
    return info


def _selected(history, epochs_run):
    """The epoch with the best validation accuracy and the test metrics there.

    ``selected_epoch`` (1-based; the last of equal ones: a small validation
    split ties often, and among equally good epochs the latest has trained
    longest, at the lowest learning rate of the schedule) and
    ``selected_test_accuracy``, ``selected_test_nll``, ... : what a run
    selected on held-out training data reports, unlike the best test
    accuracy, which selects on the test set itself. Empty without a
    validation split.
    """
    val = history.get("val_accuracy", [])[:epochs_run]
    finite = [v if math.isfinite(v) else -1.0 for v in val]
    if not finite or max(finite) < 0:
        return {}
    epoch = len(finite) - 1 - int(np.argmax(finite[::-1]))
    out = {"selected_epoch": epoch + 1, "selected_val_accuracy": float(val[epoch])}
    for name in ("test_accuracy", *(n for n, _ in CALIBRATION)):
        values = history.get(name, [])
        out[f"selected_{name}"] = float(values[epoch]) if epoch < len(values) else None
    return out


def _train_data(experiment, dataset, **options):
    """The train split's batches as the experiment's method needs them.

    PS-KD's store needs each example's row (``example_index``); CS-KD's
    batches hold class pairs (`keras_tfkd.online.ClassPairBatches`, the NumPy
    engine on every backend); the other methods take `data.pipeline`.
    """
    if experiment.method == "cskd":
        from keras_tfkd.online import ClassPairBatches

        return ClassPairBatches.from_dataset(
            dataset, "train", experiment.batch_size, **options
        )
    if experiment.method == "pskd":
        options["example_index"] = True
    return data_lib.pipeline(dataset, "train", experiment.batch_size, **options)


def fit(plan, dataset, teacher=None, *, keep_best_weights, log):
    """Build, compile and train the plan's Distiller; return (student, tracker, info).

    The model is built from the plan's seed; a `RunBackup` in
    ``plan.backup_dir`` saves the run after every epoch and a rerun resumes
    from it (weights, optimizer state, best accuracy so far and best
    weights, history), going on from the next epoch.
    """
    experiment, config = plan.experiment, plan.config
    _check_splits(dataset)
    deterministic(plan.seed)
    student = build_model(experiment.student, dataset.num_classes, dataset.input_shape)
    n_train = dataset.num_examples("train")
    distiller = experiment.build(student, teacher, num_examples=n_train)
    # One fit per epoch: the schedules (PS-KD's ramp, DKD's warm-up) run over
    # the whole plan, not over each one-epoch fit.
    distiller.schedule_epochs = plan.epochs
    drop = config.drop_remainder and n_train >= experiment.batch_size
    steps = data_lib.num_batches(n_train, experiment.batch_size, drop)
    distiller.compile(
        optimizer=_make_optimizer(experiment, config, steps), metrics=["accuracy"]
    )
    held_out = getattr(dataset, "validation", None)
    with distribution.whole_batches():  # every process predicts all of them
        test = data_lib.pipeline(dataset, "test", config.eval_batch_size)
        val = None
        if held_out is not None:
            val = data_lib.pipeline(held_out, "test", config.eval_batch_size)
    tracker = _TestAccuracy(
        test,
        dataset.labels("test"),
        keep_best_weights,
        log,
        config.progress_every,
        plan.epochs,
        plan.label,
        validation=None if held_out is None else (val, held_out.labels("test")),
    )
    guard = callbacks_lib.NaNGuard(raise_error=False, log=log)
    initial_epoch = _resume(plan, tracker, keep_best_weights, log)
    backup = callbacks_lib.RunBackup(
        plan.backup_dir,
        state=lambda: _best_weights_state(tracker, plan.backup_dir),
        guard=guard,
    )
    start = time.perf_counter()
    # A fit of no epoch builds the Distiller (and restores the backup, if
    # any) before any epoch's pipeline is read: Keras's build reads one batch,
    # which would otherwise advance that epoch's reshuffled order.
    distiller.fit(
        _train_data(experiment, dataset, shuffle=False),
        initial_epoch=initial_epoch,
        epochs=initial_epoch,
        callbacks=[backup],
        verbose=0,
    )
    for epoch in range(initial_epoch, plan.epochs):
        train_data = _train_data(
            experiment,
            dataset,
            augment=config.augment,
            seed=_epoch_seed(plan.seed, epoch),
            drop_remainder=drop,
        )
        distiller.fit(
            train_data,
            initial_epoch=epoch,
            epochs=epoch + 1,
            callbacks=[guard, tracker, backup],
            shuffle=False,
            verbose=0,
        )
        if guard.tripped or len(tracker.accuracies) < epoch + 1:
            break
    seconds = time.perf_counter() - start
    info = _summary(plan, tracker, guard, seconds, steps, initial_epoch)
    # How much better the final model fits what it trained on than what it did
    # not (with the validation accuracy): the regime a study is in.
    info["train_eval_accuracy"] = split_accuracy(
        student, dataset, "train", config.eval_batch_size
    )
    return student, tracker, info


def split_accuracy(model, dataset, split, batch_size):
    """A model's accuracy on one split of the data set, read as a test set
    (no augmentation, no shuffle, inference mode)."""
    with distribution.whole_batches():  # every process predicts all of them
        batches = data_lib.pipeline(
            dataset, split, batch_size, augment=False, shuffle=False
        )
    logits = distribution.predict(model, batches)
    return accuracy(logits, dataset.labels(split))
