"""Ctrl-C: stopping training for sure, and saying from which epoch to resume."""

from __future__ import annotations

import _thread
import re
import signal
import sys
import threading
import time
from pathlib import Path

from keras_tfkd.cli.errors import PROG


class _Interrupts:
    """Ctrl-C that training cannot swallow, for the duration of a command.

    Keras converts the logs of every batch and epoch under a bare
    ``except:`` (``keras.src.utils.python_utils.pythonify_logs``), and on JAX
    that is where the main thread waits for the device: a KeyboardInterrupt
    raised there is lost and training goes on. So after the first Ctrl-C
    this raises KeyboardInterrupt again every `every` seconds until the
    command has stopped. Installed only over Python's default handler, in
    the main thread (an ignored SIGINT stays ignored); restored on exit.

    A KeyboardInterrupt raised where Python cannot propagate it (a garbage
    collector callback, e.g. JAX's, or a ``__del__``) is "unraisable": Python
    would print it with its traceback, and it is lost anyway. While a Ctrl-C
    is being repeated those are dropped silently (the next repeat stops the
    command); any other unraisable exception is reported as usual.
    """

    def __init__(self, every=0.5):
        self.every = every
        self.previous = None
        self.stopped = threading.Event()
        self.thread = None
        self.previous_hook = None

    def __enter__(self):
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self.previous = signal.signal(signal.SIGINT, self._handler)
            self.previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def _unraisable(self, unraisable):
        if self.thread is not None and unraisable.exc_type is KeyboardInterrupt:
            return  # our own repeated Ctrl-C, lost in a callback: the next one stops
        self.previous_hook(unraisable)

    def _handler(self, signum, frame):
        if self.stopped.is_set():  # a repeat that came after the command stopped
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._repeat, daemon=True)
            self.thread.start()
        raise KeyboardInterrupt

    def _repeat(self):
        while not self.stopped.wait(self.every):
            _thread.interrupt_main(signal.SIGINT)

    def __exit__(self, *exc):
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        _pending_signals_run_here()
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            sys.unraisablehook = self.previous_hook
        return False


def _pending_signals_run_here():
    """A Python call: CPython runs the pending signal handlers on entry."""


class _Progress:
    """The command's log, remembering what it trains (for the Ctrl-C message).

    It reads the lines the study and the runs print (``[i/n] <run>
    ...``, ``<label>: resuming after epoch N from <backup>``) and, on
    interruption, the ``backup.json`` files the runs wrote (`RunBackup`):
    the newest one written by this command, or the one it resumed from,
    holds the last finished epoch.
    """

    _RUN = re.compile(r"^\[\d+/\d+\] (.+) \.\.\.$")
    _RESUMED = re.compile(r": resuming after epoch \d+ from (.+)$")

    def __init__(self, output_dir, label=None, echo=True):
        self.output_dir = Path(output_dir)
        self.label = label
        self.echo = echo
        self.started = time.time()
        self.resumed = set()

    def __call__(self, message):
        message = str(message)
        match = self._RUN.match(message)
        if match:
            self.label = match.group(1)
        match = self._RESUMED.search(message)
        if match:
            self.resumed.add(Path(match.group(1)).absolute())
        if self.echo:
            print(message, flush=True)

    def saved_epoch(self):
        """The last epoch saved by the run that was interrupted (0: none)."""
        from keras_tfkd.callbacks import RunBackup
        from keras_tfkd.runs import BACKUPS_DIR, CHECKPOINTS_DIR

        out = self.output_dir
        found = []
        for folder in [
            *out.glob(f"{CHECKPOINTS_DIR}/*/backup"),  # normal runs
            *out.glob(f"{BACKUPS_DIR}/*"),  # the other runs
        ]:
            try:
                meta = RunBackup.read_state(folder)
                mtime = (folder / RunBackup.METADATA).stat().st_mtime
            except (OSError, ValueError):
                continue
            if meta is None:
                continue
            ours = mtime >= self.started - 1 or folder.absolute() in self.resumed
            if ours:
                found.append((mtime, int(meta["epoch"])))
        return max(found)[1] if found else 0

    def interrupted(self, study):
        skipped = "; finished runs are skipped" if study else ""
        if self.label is None:
            return (
                f"{PROG}: interrupted before training started; run the same "
                f"command again to start{skipped}."
            )
        return (
            f"{PROG}: interrupted; run the same command again to resume from "
            f"epoch {self.saved_epoch() + 1} ({self.label}{skipped})."
        )

    def lost_process(self, study, error):
        """The line for a job of several processes that lost one (`_lost_a_process`)."""
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        resume = self.interrupted(study).split("; ", 1)[-1]
        return (
            f"{PROG}: error: another process of this job of several processes "
            f"has stopped ({type(error).__name__}: {first[:200]}). Stop every "
            f"process of the job, then {resume}"
        )


#: Words of the errors a collective raises when a process of the job is gone.
_LOST_PROCESS_MARKERS = (
    "Gloo",
    "NCCL",
    "Connection closed by peer",
    "Connection reset by peer",
    "heartbeat",
    "coordination service",
)


def _lost_a_process(error):
    """True for an error of a collective in a job of several processes (JAX)
    whose peer is gone: gloo's "Connection closed by peer", a heartbeat
    timeout. Never for a job of one process."""
    distribution = sys.modules.get("keras_tfkd.distribution")
    if distribution is None or distribution.process_count() == 1:
        return False
    message = str(error)
    return any(marker in message for marker in _LOST_PROCESS_MARKERS)
