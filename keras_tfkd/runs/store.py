"""Results: a run's key, and the ``results.json`` file that holds the records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from keras_tfkd import _io

__all__ = ["RESULTS_FILE", "ResultsStore", "run_key"]

RESULTS_FILE = "results.json"


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
