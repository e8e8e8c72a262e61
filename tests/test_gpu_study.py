"""`benchmarks/gpu_study.py`: the full Fashion-MNIST study for one GPU, on CPU
in smoke mode, with the data passed in (the GPU machine cannot download)."""

import importlib.util
import json
from pathlib import Path

import keras
import pytest
from test_data import write_fashion

from keras_tfkd import study

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location(
    "keras_tfkd_gpu_study", ROOT / "benchmarks" / "gpu_study.py"
)
gpu_study = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gpu_study)


def test_the_full_preset_is_the_regime_on_all_the_data():
    full = study.StudyConfig.from_preset("fashion_mnist_full")
    regime = study.StudyConfig.from_preset("fashion_mnist_regime")
    assert full.limit is None and full.methods == regime.methods
    for field in ("dataset", "student", "teacher", "augment", "seeds"):
        assert getattr(full, field) == getattr(regime, field), field


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="backend-independent script: run once, in the torch session (no "
    "compilation per run)",
)
def test_smoke_mode_runs_every_method_on_data_passed_in(tmp_path):
    folder = tmp_path / "fashion"
    write_fashion(folder, n_train=80, n_test=40)
    lines = []
    code = gpu_study.main(
        ["--data-dir", str(folder), "--output-dir", str(tmp_path / "out"), "--smoke",
         "--backend", "torch"],
        log=lines.append,
    )  # fmt: skip
    assert code == 0, lines
    report = json.loads((tmp_path / "out" / "gpu_study.json").read_text())
    assert report["smoke"] is True and report["device"] == "cpu"
    assert report["preset"] == "fashion_mnist_full" and report["seconds"] > 0
    methods = {r["method"] for r in study.summarize(_records(tmp_path / "out"))}
    assert methods == set(study.StudyConfig().methods)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "preset fashion_mnist_full" in md and "Does it help?" in md


def _records(folder):
    from keras_tfkd import runs

    return runs.ResultsStore(folder / "results.json").records


def test_missing_data_is_two_lines_before_anything_loads(tmp_path):
    lines = []
    code = gpu_study.main(["--data-dir", str(tmp_path)], log=lines.append)
    assert code == 2 and len(lines) == 1
    assert "lacks train-images-idx3-ubyte.gz" in lines[0]
