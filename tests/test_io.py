"""keras_tfkd._io: the atomic writers of backups, results, records and models."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from keras_tfkd import _io

# Backend-independent (files on disk only): one session.
pytestmark = pytest.mark.one_backend


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


@pytest.mark.parametrize(
    "name, ending",
    [
        ("epoch-3.weights.h5", ".weights.h5"),
        ("best.keras", ".keras"),
        ("best-epoch-2.npz", ".npz"),
        ("run.json", ".tmp"),
        ("notes", ".tmp"),
    ],
)
def test_write_atomic_writes_a_hidden_temporary_file_then_replaces(
    tmp_path, name, ending
):
    path = tmp_path / "new" / name  # the folder is created
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert not path.exists()
        Path(tmp).write_bytes(b"one")

    _io.write_atomic(path, write)
    (tmp,) = seen
    assert isinstance(tmp, str) and Path(tmp).parent == path.parent
    assert Path(tmp).name.startswith(f".{name}.") and tmp.endswith(ending)
    assert path.read_bytes() == b"one"
    assert [p.name for p in path.parent.iterdir()] == [name]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    _io.write_atomic(str(path), lambda tmp: Path(tmp).write_bytes(b"two"))
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == [name]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "backup.json"
    path.write_text("old")

    def half_then_crash(tmp):
        Path(tmp).write_text("ha")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _io.write_atomic(path, half_then_crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["backup.json"]


def test_write_json_atomic_writes_numpy_values_and_paths(tmp_path):
    path = tmp_path / "run.json"
    payload = {
        "accuracy": np.float32(0.5),
        "epoch": np.int64(3),
        "curve": np.array([1.0, 2.0]),
        "folder": Path("runs") / "a",
    }
    _io.write_json_atomic(path, payload)
    text = path.read_text()
    assert text.endswith("}\n") and '\n "accuracy": 0.5,' in text
    assert json.loads(text) == {
        "accuracy": 0.5,
        "epoch": 3,
        "curve": [1.0, 2.0],
        "folder": os.path.join("runs", "a"),
    }
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with pytest.raises(TypeError, match="Cannot write object to JSON"):
        _io.write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text())["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
