"""Run safety: `NaNGuard` (and `NonFiniteLossError`) and `RunBackup`.

`NaNGuard` stops training at the first non-finite loss and names the epoch
and batch; `RunBackup` writes atomic epoch-end backups with extra JSON state,
so a killed run resumes where it stopped. Placed after a tripped `NaNGuard`,
`RunBackup` saves nothing: the last good backup stays on disk.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import keras

from keras_tfkd import _io, distribution
from keras_tfkd.callbacks._common import as_float

__all__ = ["NaNGuard", "NonFiniteLossError", "RunBackup"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf (raised by `NaNGuard`)."""


class NaNGuard(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN or Inf; name it.

    Like `keras.callbacks.TerminateOnNaN`, but the message says where it
    happened (epoch and batch, both counted from 1) and what to check, and a
    `RunBackup` placed after it in the ``callbacks`` list does not save the
    diverged weights: the last good backup stays on disk. A non-finite loss
    usually means NaN/Inf in the inputs or in the teacher's logits, or a
    learning rate that is too high.

    Args:
        raise_error: raise `NonFiniteLossError` (default) rather than only
            setting ``model.stop_training`` (then read `stopped_at`).
        log: called with the message when training stops (default: `warnings.warn`
            when not raising).

    Attributes:
        stopped_at: None, or ``{"epoch": e, "batch": b, "loss": value}``.
        message: the message, or None.

    Example:

    ```python
    guard = NaNGuard()
    distiller.fit(x, y, epochs=3, callbacks=[guard])  # NonFiniteLossError on NaN
    ```
    """

    def __init__(self, raise_error=True, log=None):
        super().__init__()
        self.raise_error = bool(raise_error)
        self.log = log
        self.stopped_at = None
        self.message = None
        self._epoch = 0

    @property
    def tripped(self):
        return self.stopped_at is not None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.tripped or not logs or "loss" not in logs:
            return
        loss = as_float(logs["loss"])
        if loss is None or math.isfinite(loss):
            return
        self.stopped_at = {"epoch": self._epoch + 1, "batch": batch + 1, "loss": loss}
        self.message = (
            f"The training loss became {loss} at epoch {self._epoch + 1}, batch "
            f"{batch + 1}; training stopped. Check the inputs and the teacher's "
            "logits for NaN/Inf, or lower the learning rate. The last backup "
            "(if any) is from before this batch."
        )
        if hasattr(self.model, "loss_weighting"):  # a Distiller: which term, weight
            from keras_tfkd import loss_report

            self.message += " " + loss_report.explain(self.model, logs)
        self.model.stop_training = True
        if self.raise_error:
            raise NonFiniteLossError(self.message)
        if self.log is not None:
            self.log(self.message)
        else:
            warnings.warn(self.message, RuntimeWarning, stacklevel=2)


class RunBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` made safe against a SIGKILL.

    At the end of every epoch it writes the Distiller's weights and optimizer
    state to a new ``epoch-<n>.weights.h5`` in `backup_dir`, then commits by
    atomically replacing ``backup.json`` (the finished epoch count, the weights
    file and the JSON-able ``state()`` of the caller); older weights files are
    removed after the commit. A run killed at any instant therefore finds
    either the previous backup or the new one, never a mix or a half-written
    file. On the first ``on_train_begin`` the weights of the backup (if any)
    are loaded; the caller reads `read_state` *before* ``fit`` to know where
    to start (``fit(..., initial_epoch=state["epoch"])``) and to restore its
    own state (best accuracy so far, history). Nothing is saved once a
    `NaNGuard` given as `guard` has tripped, so the backup stays the last good
    epoch. The folder is left in place at the end of training; delete it
    (`clear`) once the run's results are safely written.

    Args:
        backup_dir: the run's backup folder.
        state: optional callable returning a JSON-able dict saved with each
            backup (called at epoch end, after the callbacks before this one).
        guard: optional `NaNGuard`.

    Example:

    ```python
    backup = RunBackup("runs/demo/backup")
    start = (RunBackup.read_state("runs/demo/backup") or {}).get("epoch", 0)
    distiller.fit(x, y, epochs=10, initial_epoch=start, callbacks=[backup])
    backup.clear()
    ```
    """

    METADATA = "backup.json"

    def __init__(self, backup_dir, state=None, guard=None):
        super().__init__(
            os.fspath(backup_dir), save_freq="epoch", delete_checkpoint=False
        )
        self.state_fn = state
        self.guard = guard
        self._restored = False
        # Own state and saving only: every hook of BackupAndRestore is
        # overridden below, so none of its private state or files is used
        # (tests/test_keras_compat.py checks that no hook is left over).
        self._backup_epoch = 0

    @classmethod
    def read_state(cls, backup_dir):
        """The committed backup of `backup_dir` as a dict, or None if none.

        Raises a `ValueError` naming the file if it is not a backup.
        """
        path = os.path.join(os.fspath(backup_dir), cls.METADATA)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                meta = json.load(f)
            weights = os.path.join(os.fspath(backup_dir), meta["weights"])
            int(meta["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"The run backup {path!r} is unreadable ({e}). Delete the folder "
                f"{os.fspath(backup_dir)!r} to start this run again from scratch."
            ) from e
        if not os.path.exists(weights):
            raise ValueError(
                f"The run backup {path!r} names {weights!r}, which is missing. "
                f"Delete the folder {os.fspath(backup_dir)!r} to start this run "
                "again from scratch."
            )
        return meta

    def on_train_begin(self, logs=None):
        if self._restored:
            return
        self._restored = True
        # Several processes: all read the backup process 0 wrote, once it is there.
        distribution.barrier("keras_tfkd.RunBackup")
        meta = self.read_state(self.backup_dir)
        if meta is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        path = os.path.join(self.backup_dir, meta["weights"])
        try:
            self.model.load_weights(path)
        except Exception as e:
            raise ValueError(
                f"Cannot restore the run backup {path!r} ({type(e).__name__}: {e}). "
                f"Delete the folder {self.backup_dir!r} to start this run again "
                "from scratch."
            ) from e
        self._backup_epoch = int(meta["epoch"])

    def on_train_batch_end(self, batch, logs=None):
        pass  # epoch-end backups only: a resumed epoch must restart whole

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.tripped:
            return
        self._backup_epoch = epoch + 1
        self._save_backup()

    def _save_backup(self):
        epoch = self._backup_epoch
        name = f"epoch-{epoch}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        _io.write_atomic(path, lambda tmp: self.model.save_weights(tmp, overwrite=True))
        meta = {"epoch": epoch, "weights": name}
        if self.state_fn is not None:
            meta["state"] = self.state_fn()
        _io.write_json_atomic(os.path.join(self.backup_dir, self.METADATA), meta)
        if not _io.is_writer():  # process 0 keeps the backups (see _io)
            return
        for other in os.listdir(self.backup_dir):
            if other.endswith(".weights.h5") and other != name:
                _io.remove_file(os.path.join(self.backup_dir, other))

    def on_train_end(self, logs=None):
        pass

    def clear(self):
        """Delete the backup folder (call once the results are written)."""
        _io.remove_tree(self.backup_dir)
