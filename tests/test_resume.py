"""Resumable runs: a `keras-tfkd run` killed with SIGKILL resumes and ends the same.

Also: the same seed gives identical results on one backend, the backup is
written atomically and restores the best accuracy so far, and a rerun into the
same folder neither loses nor duplicates finished runs.
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_tfkd import callbacks, data, experiments
from keras_tfkd import runs as runs_lib
from keras_tfkd.cli import main

# Tf-KD_self on digits: stage 1 (the normal run of the teacher) is cached, so
# the killed stage is stage 2, and its rerun must skip stage 1.
RUN_ARGS = [
    "run",
    "--experiment",
    "tfkd_self/resnet18_from_resnet18",
    "--student",
    "cnn_tiny",
    "--teacher",
    "cnn_tiny",
    "--dataset",
    "digits",
    "--limit",
    "300",
    "--epochs",
    "3",
    "--batch-size",
    "16",
    "--optimizer",
    "adam",
    "--learning-rate",
    "0.01",
    "--seed",
    "3",
]
# Fields that must not depend on an interruption (timings and dates may).
SAME = (
    "key",
    "test_accuracy",
    "best_test_accuracy",
    "best_epoch",
    "epochs_completed",
    "diverged",
    "history",
    "teacher_test_accuracy",
)


def _main(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def _records(folder):
    return json.loads((Path(folder) / runs_lib.RESULTS_FILE).read_text())


def _stage2(records):
    return next(r for r in records if r["method"] == "tfkd_self")


def _backup_epoch(folder):
    """Finished epochs in the committed stage-2 backup of `folder` (0: none)."""
    for meta in Path(folder, runs_lib.BACKUPS_DIR).glob("*/backup.json"):
        try:
            return json.loads(meta.read_text())["epoch"]
        except (OSError, ValueError):  # pragma: no cover - replaced atomically
            return 0
    return 0


# One session only: what SIGKILL tests is ours and the same on every backend
# (the backup written to a temporary folder and renamed, the rerun finding it);
# each backend's save and restore of the backup is tested in this process by
# test_resume_restores_best_accuracy_and_history and test_same_seed_same_results.
# (It took 60 s of the TensorFlow session and 33 s of JAX's.)
@pytest.mark.slow
@pytest.mark.one_backend
def test_sigkill_mid_run_resumes_to_the_same_result(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    cmd = [sys.executable, "-m", "keras_tfkd", *RUN_ARGS, "--output-dir", str(killed)]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while _backup_epoch(killed) < 1:
            assert proc.poll() is None, (
                "the run ended before its first stage-2 backup: "
                + (tmp_path / "first.log").read_text()[-2000:]
            )
            assert time.monotonic() < deadline, "no backup within 240 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:  # pragma: no cover - only on a failed assert
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / runs_lib.RESULTS_FILE).exists() or all(
        r["method"] != "tfkd_self" for r in _records(killed)
    ), "the run finished before it was killed: nothing was tested"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "normally" not in rerun.stdout, "stage 1 (the teacher) was trained again"
    assert "resuming after epoch" in rerun.stdout
    resumed = _stage2(_records(killed))
    assert resumed["resumed_after_epoch"] >= 1
    assert not list(Path(killed, runs_lib.BACKUPS_DIR).glob("*/backup.json"))

    # The uninterrupted run, in this process on the same backend.
    code, _ = _main([*RUN_ARGS, "--output-dir", str(clean), "--quiet"])
    assert code == 0
    reference = _stage2(_records(clean))
    for field in SAME:
        assert resumed[field] == reference[field], field
    # it learnt something: well above chance (0.1); 3 short epochs reach 0.44 on TF
    assert reference["best_test_accuracy"] > 0.2
    # Stage 1 (the cached teacher) was recorded once, and so was stage 2.
    keys = [r["key"] for r in _records(killed)]
    assert len(keys) == len(set(keys)) == 2


# ----------------------------------------------- in-process, smaller checks
@pytest.fixture(scope="module")
def digits():
    return data.load("digits", limit=200)


def _experiment(method="tfkd_reg/resnet18", epochs=3):
    return experiments.get(method).replace(
        student="cnn_tiny", dataset="digits", epochs=epochs, batch_size=32
    )


CONFIG = runs_lib.TrainConfig(optimizer="adam", learning_rate=1e-2)


def test_same_seed_same_results(tmp_path, digits):
    exp = _experiment()
    a = runs_lib.train(exp, digits, seed=5, output_dir=tmp_path / "a", config=CONFIG)
    b = runs_lib.train(exp, digits, seed=5, output_dir=tmp_path / "b", config=CONFIG)
    for field in SAME[1:]:
        assert a.get(field) == b.get(field), field
    c = runs_lib.train(exp, digits, seed=6, output_dir=tmp_path / "c", config=CONFIG)
    assert c["history"]["loss"] != a["history"]["loss"]


class _Crash(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt("simulated crash")


# Every backend restores a plain run and PS-KD's store (a non-trainable
# variable, as OLS's sums are); OLS's and CS-KD's own state (the same Keras
# variables, CS-KD's NumPy pair sampler) is resumed alike on every backend, so
# those two run in one session (29 s of TensorFlow's).
@pytest.mark.parametrize(
    "experiment_id",
    [
        "baseline/resnet18",
        "pskd/resnet18",
        pytest.param("ols/resnet18", marks=pytest.mark.one_backend),
        pytest.param("cskd/resnet18", marks=pytest.mark.one_backend),
    ],
)
def test_resume_restores_best_accuracy_and_history(
    tmp_path, digits, monkeypatch, experiment_id
):
    """A crash after epoch 2: best.keras and the history match a clean run.

    For PS-KD (its per-example store, its alpha ramp), OLS (its soft-label
    matrix) and CS-KD (its per-epoch pairs) the state lives in the Distiller
    and the schedules span the whole run, so a resumed run equals an
    uninterrupted one too.
    """
    exp = _experiment(experiment_id, epochs=4)
    clean = runs_lib.train(
        exp, digits, seed=2, output_dir=tmp_path / "clean", config=CONFIG
    )

    from keras_tfkd.runs import loop

    real_fit = loop.fit

    def crashing_fit(*args, **kwargs):
        real = keras.Model.fit

        def fit(self, *a, **k):
            k["callbacks"] = [*k.get("callbacks", []), _Crash(2)]
            return real(self, *a, **k)

        monkeypatch.setattr(keras.Model, "fit", fit)
        try:
            return real_fit(*args, **kwargs)
        finally:
            monkeypatch.setattr(keras.Model, "fit", real)

    monkeypatch.setattr(loop, "fit", crashing_fit)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        runs_lib.train(exp, digits, seed=2, output_dir=out, config=CONFIG)
    monkeypatch.setattr(loop, "fit", real_fit)
    plan = runs_lib.plan_run(exp, digits, seed=2, output_dir=out, config=CONFIG)
    backup = Path(plan.backup_dir)
    meta = callbacks.RunBackup.read_state(backup)
    assert meta["epoch"] == 2
    assert meta["state"]["accuracies"] == clean["history"]["test_accuracy"][:2]
    if exp.method == "baseline":  # a normal run keeps its best weights too
        assert (backup / meta["state"]["best_weights"]).exists()

    resumed = runs_lib.train(exp, digits, seed=2, output_dir=out, config=CONFIG)
    assert resumed["resumed_after_epoch"] == 2
    for field in SAME[1:]:
        assert resumed.get(field) == clean.get(field), field
    if exp.method != "baseline":
        return
    # The best checkpoint is the same model as the uninterrupted run's.
    x = digits.x_test[:50].astype("float32") / 255.0
    folder = Path(clean["checkpoints"]["best"]).parent.name
    best_clean = keras.saving.load_model(
        tmp_path / "clean" / clean["checkpoints"]["best"]
    )
    best_resumed = keras.saving.load_model(out / resumed["checkpoints"]["best"])
    np.testing.assert_allclose(
        best_resumed.predict(x, verbose=0),
        best_clean.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )
    assert not (out / runs_lib.CHECKPOINTS_DIR / folder / "backup").exists()


def test_backup_is_committed_atomically(tmp_path):
    """Only `backup.json` commits a backup; stale weights files are removed."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    backup = callbacks.RunBackup(tmp_path / "b", state=lambda: {"note": 1})
    model.fit(x, y, epochs=3, verbose=0, callbacks=[backup])
    meta = callbacks.RunBackup.read_state(tmp_path / "b")
    assert meta["epoch"] == 3 and meta["state"] == {"note": 1}
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "backup.json",
        "epoch-3.weights.h5",
    ]
    # A fresh model restores the weights and optimizer step of the backup.
    fresh = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    fresh.compile(optimizer="adam", loss="mse")
    fresh.fit(
        x,
        y,
        epochs=3,
        initial_epoch=3,
        verbose=0,
        callbacks=[callbacks.RunBackup(tmp_path / "b")],
    )
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(fresh.optimizer.iterations) == int(model.optimizer.iterations) == 3


def test_broken_backup_is_a_clear_error(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "backup.json").write_text('{"epoch": 1, "weights": "epoch-1.weights.h5"}')
    with pytest.raises(ValueError, match=r"missing.*Delete the folder"):
        callbacks.RunBackup.read_state(folder)
    (folder / "epoch-1.weights.h5").write_bytes(b"not hdf5")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match=r"Cannot restore the run backup.*Delete"):
        model.fit(
            np.ones((4, 3)),
            np.ones((4, 2)),
            epochs=2,
            verbose=0,
            callbacks=[callbacks.RunBackup(folder)],
        )
