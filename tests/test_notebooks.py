"""The Colab notebooks: generated, committed clean, public API only, and runnable.

* The committed ``notebooks/*.ipynb`` and ``docs/notebooks.md`` are exactly what
  ``notebooks/build_notebooks.py`` writes: valid nbformat v4, no outputs, no
  execution counts.
* Every notebook starts with a header (Colab badge, estimated full-run time)
  and the shared setup cell, which picks the backend before Keras is imported
  and installs keras-tfkd from git only when it is not importable.
* The code cells use the public API of keras_tfkd only.
* Each notebook runs top to bottom in smoke mode (``KERAS_TFKD_SMOKE=1``) in a
  Jupyter kernel of this Python, offline, and prints values checked here
  against independent computations and the experiments registry. These runs
  train about twenty small models in all, so they run once, in the torch
  session, where nothing compiles per model (the language-model notebook also
  needs KerasHub); `.ci/check_install` runs notebook 01 on JAX and PyTorch.
* A notebook runs with its working directory (and ``TMPDIR``) in pytest's
  ``tmp_path``, writes only into temporary folders, and leaves no file in
  ``notebooks/``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import nbformat
import pytest

from keras_tfkd import experiments

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
FILES = (
    "01_quickstart.ipynb",
    "02_teacher_free_cifar100.ipynb",
    "03_kd_as_label_smoothing.ipynb",
    "04_distil_causal_lm.ipynb",
)
INSTALL_TARGET = "git+https://github.com/keras-tfkd/keras-tfkd"
# What a notebook may import from keras_tfkd (the public API).
PUBLIC_MODULES = {
    "callbacks",
    "data",
    "experiments",
    "losses",
    "models",
    "recipes",
    "schedules",
    "teachers",
    "runs",
}
PUBLIC_NAMES = PUBLIC_MODULES | {"Distiller"}

# The session these run in: torch, the shortest (no compilation per model).
IN_ONE_SESSION = keras.backend.backend() == "torch"
ONE_SESSION = pytest.mark.skipif(
    not IN_ONE_SESSION,
    reason="executing the notebooks trains about twenty small models: done once, in "
    "the torch session (nothing compiles per model), to keep CI short",
)
ONCE = pytest.mark.skipif(
    not IN_ONE_SESSION,
    reason="starts its own Python processes, each with the backend under test: "
    "run once, in the torch session",
)


def _generator():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", NOTEBOOK_DIR / "build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no notebooks/__pycache__ in the checkout
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = write_bytecode
        del sys.modules[spec.name]
    return module


def _read(filename):
    return nbformat.read(NOTEBOOK_DIR / filename, as_version=nbformat.NO_CONVERT)


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _full_run(nb):
    """The full-run estimate stated in a notebook's first (markdown) cell."""
    match = re.search(r"\*\*Full run on a Colab GPU: (.+?)\*\*", nb.cells[0].source)
    assert match, "the first cell must state the full-run time on a Colab GPU"
    return match.group(1)


# ---------------------------------------------------------------- the files


def test_every_notebook_is_committed():
    found = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert found == list(FILES)


@pytest.mark.parametrize("filename", FILES)
def test_notebook_is_valid_v4_and_stripped(filename):
    nb = _read(filename)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for index, cell in enumerate(_code_cells(nb)):
        assert cell.outputs == [], f"{filename}: code cell {index} has outputs"
        assert cell.execution_count is None, (
            f"{filename}: code cell {index} has an execution count"
        )
        assert "execution" not in cell.metadata, f"{filename}: timing metadata"


def test_committed_files_are_what_the_generator_writes():
    stale = [
        str(path.relative_to(ROOT))
        for path, text in _generator().render().items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, (
        f"{stale} differ from the generator's output: edit "
        "notebooks/build_notebooks.py and run it"
    )


@pytest.mark.parametrize("filename", FILES)
def test_header_has_colab_badge_and_full_run_estimate(filename):
    nb = _read(filename)
    header = nb.cells[0]
    assert header.cell_type == "markdown"
    url = (
        "https://colab.research.google.com/github/keras-tfkd/keras-tfkd/blob/main/"
        f"notebooks/{filename}"
    )
    assert f"]({url})" in header.source
    estimate = _full_run(nb)
    assert "estimate" in estimate
    assert re.search(r"\d+ (minutes|hours)", estimate), estimate


def test_docs_table_has_a_badge_and_the_estimate_of_every_notebook():
    docs = (ROOT / "docs" / "notebooks.md").read_text()
    rows = [line for line in docs.splitlines() if line.startswith("| [")]
    assert len(rows) == len(FILES)
    assert "estimate" in docs.split("| Notebook |")[1].splitlines()[0]
    for filename, row in zip(FILES, rows):
        url = (
            "https://colab.research.google.com/github/keras-tfkd/keras-tfkd/blob/"
            f"main/notebooks/{filename}"
        )
        assert f"(../notebooks/{filename})" in row  # docs/ links up to notebooks/
        assert f"]({url})" in row
        assert row.rstrip(" |").endswith(_full_run(_read(filename)))


# ------------------------------------------------------------ the setup cell


def test_every_notebook_starts_with_the_same_setup_cell():
    first = {name: _code_cells(_read(name))[0].source for name in FILES}
    assert len(set(first.values())) == 1, "the setup cells differ"
    source = first[FILES[0]]
    assert INSTALL_TARGET in source
    assert "except ImportError" in source
    assert "KERAS_TFKD_SMOKE" in source


def test_setup_cell_sets_the_backend_before_importing_keras():
    tree = ast.parse(_code_cells(_read(FILES[0]))[0].source)
    backend_line = None
    import_lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            target = node.targets[0]
            if (
                isinstance(target, ast.Subscript)
                and ast.unparse(target) == "os.environ['KERAS_BACKEND']"
            ):
                backend_line = node.lineno
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
            if {"keras", "keras_tfkd"} & set(names):
                import_lines.append(node.lineno)
    assert backend_line is not None
    assert import_lines and backend_line < min(import_lines)


def _run_setup_cell(tmp_path, env, prelude):
    """Run the setup cell in a fresh Python; return what it reports as JSON."""
    setup = _code_cells(_read(FILES[0]))[0].source
    report = (
        "import json\n"
        "print('REPORT', json.dumps({'calls': CALLS, 'backend': "
        "keras.backend.backend(), 'smoke': SMOKE, 'BACKEND': BACKEND}))\n"
    )
    script = tmp_path / "setup_cell.py"
    script.write_text(prelude + "\n" + setup + "\n" + report)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT ") :])


def _clean_env(**extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KERAS_BACKEND", "KERAS_TFKD_SMOKE")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


# Simulates a fresh Colab runtime: keras_tfkd cannot be imported until the
# (recorded, not executed) pip install "installs" it.
_NOT_INSTALLED = """
import subprocess
import sys
CALLS = []
sys.modules["keras_tfkd"] = None

def _fake_check_call(command, *args, **kwargs):
    CALLS.append(list(command))
    del sys.modules["keras_tfkd"]
    return 0

subprocess.check_call = _fake_check_call
"""

_INSTALLED = """
import subprocess
CALLS = []

def _fake_check_call(command, *args, **kwargs):
    CALLS.append(list(command))
    return 0

subprocess.check_call = _fake_check_call
"""


@ONCE
def test_setup_cell_installs_from_git_only_when_missing_and_defaults_to_jax(
    tmp_path,
):
    report = _run_setup_cell(tmp_path, _clean_env(), _NOT_INSTALLED)
    assert report["calls"] == [
        [sys.executable, "-m", "pip", "install", "-q", INSTALL_TARGET]
    ]
    assert report["backend"] == report["BACKEND"] == "jax"
    assert report["smoke"] is False


@ONCE
def test_setup_cell_keeps_a_backend_set_in_the_environment(tmp_path):
    env = _clean_env(KERAS_BACKEND="tensorflow", KERAS_TFKD_SMOKE="1")
    report = _run_setup_cell(tmp_path, env, _INSTALLED)
    assert report["calls"] == []  # importable: nothing is installed
    assert report["backend"] == report["BACKEND"] == "tensorflow"
    assert report["smoke"] is True


# ------------------------------------------------------------ public API only


def _keras_tfkd_uses(source):
    """``(module, attribute)`` pairs a cell takes from keras_tfkd, and bad imports."""
    tree = ast.parse(source)
    aliases, uses, bad = {}, [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "keras_tfkd":
                continue
            for alias in node.names:
                if len(parts) == 1 and alias.name in PUBLIC_NAMES:
                    aliases[alias.asname or alias.name] = alias.name
                elif len(parts) == 2 and parts[1] in PUBLIC_MODULES:
                    uses.append((parts[1], alias.name))
                else:
                    bad.append(f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("keras_tfkd."):
                    bad.append(f"import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            uses.append((aliases[node.value.id], node.attr))
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "keras_tfkd"
            and node.attr != "__version__"
        ):
            bad.append(f"keras_tfkd.{node.attr}")
    return uses, bad


@pytest.mark.parametrize("filename", FILES)
def test_notebook_uses_only_the_public_api(filename):
    # One source for the whole notebook: a name imported in one cell is used
    # in the later ones.
    source = "\n".join(cell.source for cell in _code_cells(_read(filename)))
    uses, bad = _keras_tfkd_uses(source)
    assert not bad, f"{filename} reaches past the public API: {bad}"
    assert uses, f"{filename} does not use keras_tfkd at all"
    for module_name, attribute in uses:
        module = importlib.import_module(f"keras_tfkd.{module_name}")
        public = getattr(module, "__all__", None)
        assert not attribute.startswith("_"), f"{module_name}.{attribute}"
        assert hasattr(module, attribute), f"{module_name}.{attribute} is missing"
        if public is not None:
            assert attribute in public, (
                f"{filename} uses {module_name}.{attribute}, not in its __all__"
            )


# ------------------------------------------------------ executing the notebooks


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A Jupyter data folder whose ``python3`` kernel is this very Python."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (keras-tfkd tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return root


def _files_under(folder):
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def _execute(filename, tmp_path, kernel_dir, monkeypatch):
    """Run a notebook in smoke mode, its working directory being ``tmp_path``."""
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    monkeypatch.setenv("KERAS_TFKD_SMOKE", "1")
    monkeypatch.setenv("KERAS_TFKD_OFFLINE", "1")  # smoke mode must not download
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    pythonpath = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, pythonpath)))
    nb = _read(filename)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=600,
        startup_timeout=180,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    before = _files_under(NOTEBOOK_DIR)
    client.execute()  # raises CellExecutionError on the first failing cell
    left = sorted(_files_under(NOTEBOOK_DIR) - before)
    assert not left, f"{filename} left files in notebooks/: {left}"
    return nb


def _text(nb):
    return "".join(
        output.get("text", "")
        for cell in _code_cells(nb)
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


def _images(nb):
    return sum(
        "image/png" in output.get("data", {})
        for cell in _code_cells(nb)
        for output in cell.outputs
    )


def _check_quickstart(nb, tmp_path):
    text = _text(nb)
    best = {
        name: float(value)
        for name, value in re.findall(
            r"^(plain|Tf-KD_reg|Tf-KD_self) +best test accuracy +([\d.]+)%",
            text,
            re.M,
        )
    }
    assert set(best) == {"plain", "Tf-KD_reg", "Tf-KD_self"}
    assert all(0.0 <= value <= 100.0 for value in best.values())
    reloaded = re.search(r"test accuracy ([\d.]+)% \(same predictions", text)
    assert reloaded, text[-2000:]
    # EarlyStopping restored the best epoch, so the saved student scores the
    # best accuracy logged for Tf-KD_reg.
    assert float(reloaded.group(1)) == pytest.approx(best["Tf-KD_reg"], abs=0.01)
    # Saved in a new temporary folder (TMPDIR is tmp_path here), not beside the
    # notebook nor in its working directory.
    saved = re.search(r"^saved the student to (.+)$", text, re.M)
    assert saved, text[-2000:]
    saved = Path(saved.group(1))
    assert saved.name == "tfkd_reg_student.keras" and saved.is_file()
    assert saved.parent.parent == tmp_path and saved.parent.name.startswith(
        "tfkd_quickstart_"
    )
    assert not (tmp_path / "tfkd_reg_student.keras").exists()
    assert _images(nb) >= 1


def _check_cifar(nb, tmp_path):
    text = _text(nb)
    assert "SMOKE run" in text
    out_dir = re.search(r"^results and checkpoints go to (.+)$", text, re.M)
    assert out_dir and Path(out_dir.group(1)).parent == tmp_path, text[:2000]
    rows = re.findall(
        r"^(baseline|Tf-KD_self|Tf-KD_reg|LSR) +([\d.]+) +([-+][\d.]+) +([\d.]+) "
        r"+([-+][\d.]+)$",
        text,
        re.M,
    )
    assert [row[0] for row in rows] == ["baseline", "Tf-KD_self", "Tf-KD_reg", "LSR"]
    ids = {
        "baseline": "baseline/resnet18",
        "Tf-KD_self": "tfkd_self/resnet18_from_resnet18",
        "Tf-KD_reg": "tfkd_reg/resnet18",
        "LSR": "lsr/resnet18",
    }
    paper_base = experiments.get(ids["baseline"]).published_accuracy
    ours_base = float(rows[0][1])
    for label, ours, gain, paper, paper_gain in rows:
        published = experiments.get(ids[label]).published_accuracy
        assert 0.0 <= float(ours) <= 100.0
        assert float(gain) == pytest.approx(float(ours) - ours_base, abs=0.011)
        assert float(paper) == pytest.approx(published, abs=0.005)
        assert float(paper_gain) == pytest.approx(published - paper_base, abs=0.005)
    assert _images(nb) >= 1


def _virtual_true_prob(num_classes, temperature, a=0.99):
    off = (1 - a) / (num_classes - 1)
    on = math.exp(a / temperature)
    return on / (on + (num_classes - 1) * math.exp(off / temperature))


def _check_label_smoothing(nb, tmp_path):
    text = _text(nb)
    printed = {
        (int(k), int(t)): float(p)
        for k, t, p in re.findall(r"K=(\d+) +T=(\d+) +p\(true\)=([\d.]+)", text)
    }
    assert set(printed) == {(k, t) for k in (10, 100) for t in (1, 10, 20, 40)}
    for (k, t), p in printed.items():
        assert p == pytest.approx(_virtual_true_prob(k, t), abs=6e-6), (k, t)
    # docs/paper.md: about 0.0110 / 0.0105 / 0.01025 at T = 10 / 20 / 40, K = 100.
    for t, quoted in ((10, 0.0110), (20, 0.0105), (40, 0.01025)):
        assert printed[(100, t)] == pytest.approx(quoted, abs=5e-5)

    lsr = re.search(r"^label smoothing +- +([\d.]+) +([\d.]+)$", text, re.M)
    eps, k = 0.1, 10
    entropy = -(1 - eps) * math.log(1 - eps) - eps * math.log(eps / (k - 1))
    assert float(lsr.group(1)) == pytest.approx(1 - eps, abs=1e-4)
    assert float(lsr.group(2)) == pytest.approx(entropy, abs=1e-4)
    virtual = re.search(r"^virtual teacher +20 +([\d.]+) +([\d.]+)$", text, re.M)
    assert float(virtual.group(1)) == pytest.approx(_virtual_true_prob(k, 20), abs=1e-4)

    paper_rows = dict(
        re.findall(r"^(Re-KD|De-KD) paper +((?:[-+\d.]+ +){3}[-+\d.]+)$", text, re.M)
    )
    expected = {
        "Re-KD": (
            experiments.get("baseline/mobilenet_v2").published_accuracy,
            experiments.get("baseline/resnet18").published_accuracy,
            experiments.get("rekd/resnet18_from_mobilenet_v2").published_accuracy,
        ),
        "De-KD": (
            experiments.get("dekd/mobilenet_v2_from_resnet18").teacher_accuracy,
            experiments.get("baseline/mobilenet_v2").published_accuracy,
            experiments.get("dekd/mobilenet_v2_from_resnet18").published_accuracy,
        ),
    }
    assert set(paper_rows) == set(expected)
    for name, (teacher, student, distilled) in expected.items():
        values = [float(v) for v in paper_rows[name].split()]
        assert values == pytest.approx(
            [teacher, student, distilled, distilled - student], abs=0.006
        )
    assert re.search(r"^Re-KD ours ", text, re.M)
    assert re.search(r"^De-KD ours ", text, re.M)
    assert _images(nb) >= 2


def _check_causal_lm(nb, tmp_path):
    text = _text(nb)
    assert "SMOKE run" in text
    held_out = re.search(r"^held-out padding: ([\d.]+)% of the positions$", text, re.M)
    assert held_out, text[-3000:]
    padding = float(held_out.group(1)) / 100
    assert 0 < padding < 1

    def value(label):
        match = re.search(rf"^{re.escape(label)} +([\d.]+)$", text, re.M)
        assert match, (label, text[-3000:])
        return float(match.group(1))

    token_mean = value("mean over the real tokens (NumPy)")
    # The Distiller's loss is the mean over the real tokens; Keras's default
    # reduction divides the same sum by every position, padding included.
    assert value("the Distiller's loss (token mean)") == pytest.approx(
        token_mean, abs=2e-5
    )
    assert value("Keras's default (sum_over_batch_size)") == pytest.approx(
        token_mean * (1 - padding), rel=2e-4
    )
    p_true = re.search(r"virtual teacher at T=20: p\(true token\)=([\d.]+)", text)
    assert float(p_true.group(1)) == pytest.approx(
        _virtual_true_prob(256, 20), abs=1e-6
    )

    # Each run's loss is (1 - alpha) hard + alpha soft, alpha of its recipe.
    alphas = {"baseline": 0.0, "KD": 0.5, "Tf-KD_reg": 0.1, "GJSD": 0.5}
    runs = re.findall(
        r"^(\S+) +train loss ([\d.]+) \(hard ([\d.]+), soft ([\d.]+)\)$",
        text,
        re.M,
    )
    assert [run[0] for run in runs] == list(alphas)
    for name, loss, hard, soft in runs:
        alpha = alphas[name]
        expected = (1 - alpha) * float(hard) + alpha * float(soft)
        assert float(loss) == pytest.approx(expected, abs=2e-4), name
        assert (float(soft) > 0) == (alpha > 0), name

    rows = re.findall(
        r"^(teacher|baseline|KD|Tf-KD_reg|GJSD) +(\d+) +([\d.]+) +([\d.]+)%$",
        text,
        re.M,
    )
    assert [row[0] for row in rows] == ["teacher", *alphas]
    params = {name: int(p) for name, p, _, _ in rows}
    assert all(params[name] < params["teacher"] for name in alphas)
    for name, _, perplexity, accuracy in rows:
        # Trained models beat a uniform guess over the 256 byte values.
        assert 1.0 < float(perplexity) < 256.0, name
        assert 0.0 <= float(accuracy) <= 100.0, name

    generated = re.search(r"^generated: (.+)$", text, re.M)
    assert ast.literal_eval(generated.group(1)).startswith("The student")
    saved = re.search(r"^saved the student to (.+)$", text, re.M)
    assert saved, text[-2000:]
    # Saved into the working directory (tmp_path here), as the notebook says.
    assert Path(saved.group(1)) == tmp_path / "tfkd_reg_gpt2_student.keras"
    assert Path(saved.group(1)).is_file()
    assert "same next-token logits as before saving" in text


CHECKS = {
    "01_quickstart.ipynb": _check_quickstart,
    "02_teacher_free_cifar100.ipynb": _check_cifar,
    "03_kd_as_label_smoothing.ipynb": _check_label_smoothing,
    "04_distil_causal_lm.ipynb": _check_causal_lm,
}
NEEDS = {"04_distil_causal_lm.ipynb": "keras_hub"}


@ONE_SESSION
@pytest.mark.slow
@pytest.mark.gradients
@pytest.mark.parametrize("filename", FILES)
def test_notebook_runs_in_smoke_mode(filename, tmp_path, kernel_dir, monkeypatch):
    needs = NEEDS.get(filename)
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{filename} needs {needs}, which is not installed")
    nb = _execute(filename, tmp_path, kernel_dir, monkeypatch)
    CHECKS[filename](nb, tmp_path)
