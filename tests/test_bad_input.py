"""Bad input: a clear error naming what is wrong, nothing lost, no silent garbage.

(Labels out of range / float, one-hot width, teacher-student shape mismatch and
probability teachers on arrays are tested in tests/test_distiller.py.)
"""

import contextlib
import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_tfkd import callbacks, data, experiments, teachers
from keras_tfkd import runs as runs_lib
from keras_tfkd.cli import main
from keras_tfkd.distiller import Distiller


def _student(classes=3, features=4):
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(classes)])


# ------------------------------------------------------------------ tf.data
def test_tf_data_out_of_range_label_names_the_range():
    tf = pytest.importorskip("tensorflow")
    x = np.ones((8, 4), "float32")
    y = np.array([0, 1, 2, 0, 1, 7, 0, 1], "int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    distiller = Distiller(student=_student(), teacher=teachers.UniformTeacher(3))
    distiller.compile(optimizer="sgd")
    with pytest.raises(Exception, match=r"labels must be in \[0, 3\)"):
        distiller.fit(ds, epochs=1, verbose=0)


# ----------------------------------------------------------------- NaN/Inf
def test_nan_guard_names_epoch_and_batch():
    x = np.ones((16, 4), "float32")
    x[9] = np.nan  # batch 3 of 4 (batch size 4), in epoch 1
    y = np.zeros(16, "int32")
    model = _student()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(callbacks.NonFiniteLossError, match="epoch 1, batch 3"):
        model.fit(
            x,
            y,
            batch_size=4,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[callbacks.NaNGuard()],
        )


def test_nan_teacher_logits_stop_training_and_keep_last_good_backup(tmp_path):
    """NaN teacher logits in epoch 2: the backup on disk is epoch 1's."""
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32, dtype="int32") % 3
    cached = teachers.CachedTeacher(3)
    student = _student()
    distiller = Distiller(student=student, teacher=cached, alpha=0.5)
    distiller.compile(optimizer="sgd")
    z = np.zeros((32, 3), "float32")
    guard = callbacks.NaNGuard(raise_error=False, log=lambda m: None)
    backup = callbacks.RunBackup(tmp_path / "b", guard=guard)
    distiller.fit(
        cached.attach(x, z),
        y,
        batch_size=8,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[guard, backup],
    )
    good = [w.copy() for w in student.get_weights()]
    bad = z.copy()
    bad[20] = np.nan  # batch 3 of epoch 2
    # The array checks of `fit` catch NaN up front; a generator is only seen
    # batch by batch, so the guard must catch it during training.
    packed = cached.attach(x, bad)

    def batches():
        for i in range(0, 32, 8):
            yield {k: v[i : i + 8] for k, v in packed.items()}, y[i : i + 8]

    distiller.fit(
        batches(),
        epochs=2,
        initial_epoch=1,
        verbose=0,
        callbacks=[guard, backup],
    )
    assert guard.stopped_at["epoch"] == 2 and guard.stopped_at["batch"] == 3
    assert "epoch 2, batch 3" in guard.message
    meta = callbacks.RunBackup.read_state(tmp_path / "b")
    assert meta["epoch"] == 1
    fresh = Distiller(student=_student(), teacher=teachers.CachedTeacher(3))
    fresh.compile(optimizer="sgd")
    fresh.fit(
        cached.attach(x, z),
        y,
        epochs=1,
        initial_epoch=1,
        verbose=0,
        callbacks=[callbacks.RunBackup(tmp_path / "b")],
    )
    for a, b in zip(fresh.student.get_weights(), good):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(w).all() for w in fresh.student.get_weights())


# --------------------------------------------------------- empty / tiny data
def _sliced(ds, n_train, n_test):
    import dataclasses

    return dataclasses.replace(
        ds,
        x_train=ds.x_train[:n_train],
        y_train=ds.y_train[:n_train],
        x_test=ds.x_test[:n_test],
        y_test=ds.y_test[:n_test],
    )


CONFIG = runs_lib.TrainConfig(optimizer="adam", learning_rate=1e-2)


def _exp(epochs=1, batch_size=64):
    return experiments.get("tfkd_reg/resnet18").replace(
        student="cnn_tiny", dataset="digits", epochs=epochs, batch_size=batch_size
    )


def test_empty_train_split_is_a_clear_error(tmp_path):
    ds = _sliced(data.load("digits", limit=20), 0, 20)
    with pytest.raises(ValueError, match=r"train split of dataset 'digits' is empty"):
        runs_lib.train(_exp(), ds, seed=0, output_dir=tmp_path, config=CONFIG)


def test_batch_larger_than_data_trains_one_partial_batch(tmp_path):
    ds = _sliced(data.load("digits", limit=20), 10, 20)
    record = runs_lib.train(
        _exp(epochs=2),
        ds,
        seed=0,
        output_dir=tmp_path,
        config=CONFIG,
        log=lambda m: None,
    )
    assert record["steps_per_epoch"] == 1
    assert record["epochs_completed"] == 2
    assert all(np.isfinite(record["history"]["loss"]))


# ---------------------------------------------------- corrupt checkpoints
def _saved_model(path):
    model = runs_lib.build_model("cnn_tiny", 10, (8, 8, 1))
    model.save(path)
    return path


def test_truncated_teacher_checkpoint_names_the_file(tmp_path):
    path = _saved_model(tmp_path / "teacher.keras")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        runs_lib.CorruptCheckpointError,
        match=r"teacher\.keras.*truncated or corrupt.*Delete it",
    ):
        runs_lib.check_keras_file(path, "teacher checkpoint")
    ds = data.load("digits", limit=50)
    exp = (
        experiments.get("kd/cnn5_from_resnet18").replace(
            student="cnn_tiny",
            teacher="cnn_tiny",
            dataset="digits",
            epochs=1,
            batch_size=32,
        )
        if "kd/cnn5_from_resnet18" in experiments.available()
        else None
    )
    if exp is None:
        pytest.skip("no kd experiment to override")
    with pytest.raises(runs_lib.CorruptCheckpointError, match="teacher.keras"):
        runs_lib.train(
            exp,
            ds,
            seed=0,
            output_dir=tmp_path / "run",
            config=CONFIG,
            teacher_checkpoint_path=path,
            log=lambda m: None,
        )


# One session: the truncated-file check and the retraining are ours, the same on
# every backend (each backend's identical rerun: test_resume's same-seed test).
@pytest.mark.one_backend
def test_corrupt_cached_teacher_is_retrained_not_reused(tmp_path):
    ds = data.load("digits", limit=60)
    exp = experiments.get("baseline/resnet18").replace(
        student="cnn_tiny", dataset="digits", epochs=1, batch_size=32
    )
    first = runs_lib.train(
        exp, ds, seed=0, output_dir=tmp_path, config=CONFIG, log=lambda m: None
    )
    best = tmp_path / first["checkpoints"]["best"]
    best.write_bytes(best.read_bytes()[:100])
    lines = []
    again = runs_lib.train(
        exp, ds, seed=0, output_dir=tmp_path, config=CONFIG, log=lines.append
    )
    assert any("truncated or corrupt" in line for line in lines)
    assert any("normally" in line for line in lines)  # trained again
    runs_lib.check_keras_file(best)  # intact again
    assert again["best_test_accuracy"] == first["best_test_accuracy"]


# ----------------------------------------------------------------- the CLI
def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as info:
            main(argv)
    return info.value.code, err.getvalue()


def test_cli_missing_dataset_files_exit_1(tmp_path):
    code, err = _cli(
        [
            "run",
            "--experiment",
            "tfkd_reg/resnet18",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert "cifar" in err.lower() and str(tmp_path) in err


@pytest.mark.parametrize(
    "flag, value, named",
    [
        ("--experiment", "tfkd_reg/nope", "tfkd_reg/nope"),
        ("--student", "resnet9000", "resnet9000"),
        ("--dataset", "mnist9", "mnist9"),
    ],
)
def test_cli_unknown_names_exit_2(tmp_path, flag, value, named):
    argv = ["run", "--experiment", "tfkd_reg/resnet18", "--output-dir", str(tmp_path)]
    if flag == "--experiment":
        argv[2] = value
    else:
        argv += [flag, value]
    code, err = _cli(argv)
    assert code == 2 and named in err and ("valid" in err or "Closest" in err)


@pytest.mark.parametrize(
    "content, named",
    [
        ('{"alpha": 0.5, "temprature": 4}', "temprature"),
        ('{"alpha": "high"}', "alpha"),
        ('{"epochs": 2.5}', "epochs"),
        ('{"alpha": 1.5}', "alpha"),
        ("[1, 2]", "JSON object"),
        ('{"alpha": 0.5,', "not valid JSON"),
    ],
)
def test_cli_config_file_errors_name_the_key(tmp_path, content, named):
    config = tmp_path / "exp.json"
    config.write_text(content)
    argv = ["run", "--experiment", "tfkd_reg/resnet18", "--config", str(config)]
    code, err = _cli([*argv, "--output-dir", str(tmp_path / "out")])
    assert code == 2 and named in err


def test_cli_config_file_overrides_apply(tmp_path, monkeypatch):
    seen = {}

    def fake_execute(plan, dataset, **kwargs):
        seen["experiment"] = plan.experiment
        raise SystemExit(0)

    monkeypatch.setattr(runs_lib, "execute", fake_execute)
    config = tmp_path / "exp.json"
    config.write_text(json.dumps({"alpha": 0.25, "epochs": 2, "dataset": "digits"}))
    argv = ["run", "--experiment", "tfkd_reg/resnet18", "--config", str(config)]
    code, _ = _cli([*argv, "--epochs", "3", "--output-dir", str(tmp_path / "o")])
    assert code == 0
    got = seen["experiment"]
    assert (got.alpha, got.epochs, got.dataset) == (0.25, 3, "digits")


def test_no_pickle_or_eval_of_user_files():
    root = Path(runs_lib.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text and "allow_pickle=True" not in text, path
        assert " eval(" not in text and "exec(" not in text, path
        assert "safe_mode=False" not in text, path
    assert json  # the only format user files are read in


# Runs `keras-tfkd run` in a fresh process with two CPU devices (the device
# count is fixed when the runtime starts), once --distribution single and once
# data_parallel, and reports the devices the student's variables live on.
_DISTRIBUTION_DRIVER = """
import json, sys
import keras
from keras_tfkd import distribution
from keras_tfkd.runs import loop
if keras.backend.backend() == "tensorflow":
    distribution.simulate_cpu_devices(2)
from keras_tfkd.cli import main

seen = {}
real_build, real_get = loop.build_model, distribution.get_distribution

def build_model(*args, **kwargs):
    seen["student"] = model = real_build(*args, **kwargs)
    return model

def get_distribution(*args, **kwargs):
    seen["dist"] = dist = real_get(*args, **kwargs)
    return dist

loop.build_model = build_model  # where the training loop looks it up
distribution.get_distribution = get_distribution
out, argv = sys.argv[1], sys.argv[2:]
results = {}
for name in ("single", "data_parallel"):
    code = main([*argv, "--distribution", name, "--output-dir", out + "-" + name])
    dist, kernel = seen["dist"], seen["student"].weights[0].value
    if keras.backend.backend() == "jax":
        used = len(kernel.sharding.device_set)
    else:  # a MirroredVariable holds one copy per replica
        used = len(getattr(kernel, "values", [kernel]))
    in_sync = None
    if dist.engine is not None and hasattr(dist.engine, "num_replicas_in_sync"):
        in_sync = int(dist.engine.num_replicas_in_sync)
    results[name] = {
        "code": code,
        "devices": list(dist.devices),
        "num_replicas": dist.num_replicas,
        "variable_devices": used,
        "in_sync": in_sync,
    }
with open(out + ".json", "w") as f:
    json.dump(results, f)
"""


def test_cli_distribution_flag(tmp_path):
    """data_parallel trains on both of two CPU devices on JAX/TF, single on one;
    torch says why not."""
    argv = [
        "run",
        "--experiment",
        "tfkd_reg/resnet18",
        "--student",
        "mlp",
        "--dataset",
        "digits",
        "--limit",
        "200",
        "--epochs",
        "1",
        "--quiet",
    ]
    backend = keras.backend.backend()
    if backend == "torch":
        code, err = _cli([*argv, "--distribution", "data_parallel"])
        assert code == 2 and "torch" in err and "data_parallel" in err
        return
    import os
    import subprocess
    import sys

    driver = tmp_path / "driver.py"
    driver.write_text(_DISTRIBUTION_DRIVER)
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(driver), str(out), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "data parallel over 2 devices" in proc.stdout
    results = json.loads(Path(f"{out}.json").read_text())
    single, parallel = results["single"], results["data_parallel"]
    assert single["code"] == parallel["code"] == 0
    assert (single["num_replicas"], single["variable_devices"]) == (1, 1)
    assert parallel["devices"] == ["cpu:0", "cpu:1"]
    assert (parallel["num_replicas"], parallel["variable_devices"]) == (2, 2)
    if backend == "tensorflow":
        assert parallel["in_sync"] == 2
    for name in ("single", "data_parallel"):
        records = json.loads(Path(f"{out}-{name}/results.json").read_text())
        assert len(records) == 1 and 0.0 <= records[0]["test_accuracy"] <= 1.0
