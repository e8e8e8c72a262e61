"""Several processes give what one process with as many devices gives (JAX).

The comparison runs three Python processes at once (``multihost_worker.py``,
started here, each with a time limit and killed at the end whatever
happens): one reference process with two CPU devices, and two processes
with one CPU device each, joined over ``127.0.0.1`` on a free port
(`keras_tfkd.distribution.initialize`, gloo collectives). Both sides train
KD, Tf-KD_reg, PS-KD (fed by ``data.pipeline(..., example_index=True)``,
shuffled), CS-KD (shuffled class pairs) and OLS from the same weights on
the same data with the same global batches; the pair feeds every process
its half of each batch. The losses, the weights and the teachers' state
must agree, and PS-KD on per-process rows without indices is refused before
any step. PS-KD runs twice, with its store replicated and split by rows
(``shard_rows=True``: half of it in each process), saved and loaded back.

Every process then runs ``keras-tfkd run`` (PS-KD, whose store the command
splits over the devices), stopped by Ctrl-C after epoch 1 and run again. A
second pair runs the command with process 1 SIGKILLed after epoch 1: process
0 ends at once with one line (status 1), both are started again and resume
from epoch 1 to the results of the uninterrupted run.

The other tests need one process: the shares of every pipeline put
together are the global batch (both engines, augmentation included), KD
fed example indices trains, a PS-KD pipeline without indices is refused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_tfkd import data, distribution, recipes
from keras_tfkd.data import shards

BACKEND = keras.backend.backend()
WORKER = Path(__file__).with_name("multihost_worker.py")
METHODS = ("kd", "tfkd_reg", "pskd", "pskd_sharded", "cskd", "ols")
#: Seconds each worker may run (they take about 20 s of CPU each).
TIMEOUT = 240
#: Seconds a process may go on once the other process of its pair was killed
#: (its next collective fails at once; the command then ends with status 1
#: rather than wait in JAX's shutdown for the heartbeat timeout, 100 s).
GRACE = 20
HAVE_TF = importlib.util.find_spec("tensorflow") is not None


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args, devices):
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _env(devices):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if BACKEND != "jax":
        pytest.skip(
            "several processes train on the jax backend only: Keras's fit under "
            "TensorFlow's MultiWorkerMirroredStrategy is broken (keras-team/"
            "keras#20585) and released Keras has no multi-process torch fit"
        )
    folder = tmp_path_factory.mktemp("multihost")
    port = str(_free_port())
    alone, shared = str(folder / "reference_runs"), str(folder / "pair_runs")
    commands = {
        "reference": (["reference", str(folder / "reference.json")], 2),
        "p0": (["pair", str(folder / "p0.json"), shared, "0", port], 1),
        "p1": (["pair", str(folder / "p1.json"), shared, "1", port], 1),
    }
    commands["reference"][0].append(alone)
    procs = {}
    start = time.monotonic()
    try:
        for name, (args, devices) in commands.items():
            procs[name] = _start(args, devices)
        outputs = {}
        for name, proc in procs.items():
            left = max(1.0, TIMEOUT - (time.monotonic() - start))
            outputs[name] = proc.communicate(timeout=left)[0]
            assert proc.returncode == 0, f"{name}:\n{outputs[name][-4000:]}"
    finally:
        _stop(procs.values())
    results = {
        name: json.loads((folder / f"{name}.json").read_text()) for name in commands
    }
    results["wall_seconds"] = time.monotonic() - start
    results["folder"] = str(folder)
    return results


def _close(a, b, what):
    for i, (u, v) in enumerate(zip(a, b)):
        np.testing.assert_allclose(
            np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6, err_msg=f"{what}[{i}]"
        )
    assert len(a) == len(b), what


def test_the_pair_is_two_processes_of_one_device(runs):
    for name in ("p0", "p1"):
        assert runs[name]["process_count"] == 2
        assert len(runs[name]["devices"]) == 2
    assert runs["p0"]["process_index"] == 0 and runs["p1"]["process_index"] == 1
    assert runs["reference"]["process_count"] == 1
    assert len(runs["reference"]["devices"]) == 2


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_train_as_one_with_two_devices(runs, method):
    reference, pair = runs["reference"][method], runs["p0"][method]
    assert set(reference["history"]) == set(pair["history"])
    for key, values in reference["history"].items():
        np.testing.assert_allclose(
            pair["history"][key], values, rtol=1e-5, atol=1e-6, err_msg=key
        )
    _close(reference["weights"], pair["weights"], f"{method} weights")
    _close(reference["state"], pair["state"], f"{method} teacher state")
    # Both processes hold the same (replicated) result.
    _close(pair["weights"], runs["p1"][method]["weights"], f"{method} p1 weights")
    # The loss moved: the comparison is not between two untrained models.
    assert pair["history"]["loss"][0] != pair["history"]["loss"][-1]


def test_evaluate_on_arrays_matches(runs):
    assert runs["p0"]["kd"]["evaluate"] == pytest.approx(
        runs["reference"]["kd"]["evaluate"], rel=1e-5
    )


def test_each_process_is_fed_half_of_every_batch(runs):
    batch = 16
    assert runs["reference"]["pskd"]["local_batch"] == batch
    for name in ("p0", "p1"):
        assert runs[name]["pskd"]["local_batch"] == batch // 2
        assert runs[name]["fed"]["same_everywhere"] is True
        assert runs[name]["fed"]["rows"] == [64, 64]
    # Arrays given whole: process 0 gets rows 0-7, process 1 rows 8-15 of
    # the first global batch (shuffle=False).
    sys.path.insert(0, str(WORKER.parent))
    try:
        import multihost_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    _, y, _ = multihost_worker._data()
    assert runs["p0"]["fed"]["labels"] == y[:8].tolist()
    assert runs["p1"]["fed"]["labels"] == y[8:16].tolist()


def test_per_process_rows_without_indices_are_refused_for_pskd(runs):
    for name in ("p0", "p1"):
        refusal = runs[name]["refusal"]
        assert refusal["message"] is not None, "PS-KD trained on local indices"
        assert "example_index" in refusal["message"]
        assert "whole training set" in refusal["message"]
        assert refusal["weights_unchanged"]


# ------------------------------------------------------- one process
def _as_two_processes(monkeypatch, index):
    monkeypatch.setattr(distribution, "process_shard", lambda: (index, 2))
    monkeypatch.setattr(distribution, "agreed_seed", lambda seed=None: seed or 11)


def _images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 6, 6, 1)).astype("uint8")
    return images, (np.arange(n) % 4).astype("int32")


def _numpy(tree):
    return keras.tree.map_structure(lambda t: np.asarray(t), tree)


@pytest.mark.parametrize("engine", ["numpy", "tf.data"])
def test_the_shares_of_a_pipeline_make_up_its_batches(monkeypatch, engine):
    if engine == "tf.data" and not HAVE_TF:
        pytest.skip("tf.data needs TensorFlow")
    images, labels = _images()
    dataset = data.from_arrays((images, labels), (images[:8], labels[:8]))
    weights = np.linspace(0.5, 1.5, len(labels)).astype("float32")
    options = dict(seed=4, augment="shift", example_index=True, sample_weight=weights)
    options["engine"] = engine
    whole = list(map(_numpy, data.pipeline(dataset, "train", 16, **options)))
    shares = []
    for index in (0, 1):
        with monkeypatch.context() as patch:
            _as_two_processes(patch, index)
            shares.append(
                list(map(_numpy, data.pipeline(dataset, "train", 16, **options)))
            )
    assert len(whole) == len(shares[0]) == len(shares[1]) == 3
    for batch, first, second in zip(whole, *shares):
        (x, y, w), (x0, y0, w0), (x1, y1, w1) = batch, first, second
        assert len(y0) == len(y1) == len(y) // 2
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
        np.testing.assert_array_equal(np.concatenate([w0, w1]), w)
        for key in x:  # the inputs (augmented alike) and the global indices
            np.testing.assert_array_equal(np.concatenate([x0[key], x1[key]]), x[key])
    indices = np.concatenate([b[0]["example_index"] for b in whole])
    assert sorted(indices.tolist()) == list(range(len(labels)))


def test_a_pipeline_refuses_batches_the_processes_cannot_share(monkeypatch):
    images, labels = _images(n=41)
    dataset = data.from_arrays((images, labels), (images[:8], labels[:8]))
    _as_two_processes(monkeypatch, 0)
    with pytest.raises(ValueError, match="multiple of 2"):
        data.pipeline(dataset, "train", 15, engine="numpy")
    with pytest.raises(ValueError, match="drop_remainder=True"):
        data.pipeline(dataset, "train", 16, engine="numpy")
    stream = data.pipeline(dataset, "train", 16, drop_remainder=True, engine="numpy")
    assert len(stream) == 2 and stream[1][0].shape[0] == 8


def test_array_shards_cut_every_global_batch():
    x, y = np.arange(20.0)[:, None], np.arange(20)
    parts = [
        shards.ArrayShards(x, y, batch_size=8, seed=3, shard=(i, 2)) for i in (0, 1)
    ]
    whole = shards.ArrayShards(x, y, batch_size=8, seed=3)
    for b in range(len(whole)):
        np.testing.assert_array_equal(
            np.concatenate([parts[0].batch(1, b)[1], parts[1].batch(1, b)[1]]),
            whole.batch(1, b)[1],
        )
    assert parts[0].batch(1, 2)[1].shape == (2,)
    assert not np.array_equal(whole.batch(0, 0)[1], whole.batch(1, 0)[1])
    with pytest.raises(ValueError, match="cannot share evenly"):
        shards.ArrayShards(x[:19], y[:19], batch_size=8, shard=(0, 2))


def test_kd_ignores_example_indices_it_does_not_need():
    images, labels = _images(n=16)
    dataset = data.from_arrays((images, labels), (images[:8], labels[:8]))
    stream = data.pipeline(dataset, "train", 8, example_index=True, seed=0)
    keras.utils.set_random_seed(0)

    def model():
        return keras.Sequential(
            [keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(4)]
        )

    distiller = recipes.kd(model(), model(), alpha=0.5, temperature=2.0)
    distiller.compile(optimizer="sgd")
    history = distiller.fit(stream, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_pskd_refuses_a_pipeline_without_indices():
    images, labels = _images(n=16)
    dataset = data.from_arrays((images, labels), (images[:8], labels[:8]))
    stream = data.pipeline(dataset, "train", 8, seed=0, engine="numpy")
    student = keras.Sequential(
        [keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(4)]
    )
    distiller = recipes.ps_kd(student, alpha=0.8)
    distiller.compile(optimizer="sgd")
    before = [np.array(w) for w in student.get_weights()]
    with pytest.raises(ValueError, match="example_index=True"):
        distiller.fit(stream, epochs=1, verbose=0)
    for old, new in zip(before, student.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_one_process_changes_nothing():
    assert distribution.process_shard() == (0, 1)
    assert distribution.agreed_seed(None) is None
    x, y = np.zeros((4, 2)), np.zeros(4)
    assert shards.shard_fit_data(x, y, {}, arrays_global=None)[0] is x


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a TensorFlow strategy")
def test_multi_worker_strategy_is_refused_with_the_reason():
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        with pytest.raises(NotImplementedError, match="20585"):
            distribution.check_fit_backend()


def _assert_same_as_the_uninterrupted_run(record, runs):
    """A resumed run's record equals the reference process's uninterrupted one."""
    (alone,) = json.loads(
        Path(runs["folder"], "reference_runs", "results.json").read_text()
    )
    assert record["epochs_completed"] == alone["epochs_completed"] == 3
    for key, values in alone["history"].items():
        np.testing.assert_allclose(
            record["history"][key], values, rtol=1e-5, atol=1e-6, err_msg=key
        )
    assert record["test_accuracy"] == pytest.approx(alone["test_accuracy"])


def test_the_command_resumes_every_process_from_the_backup(runs):
    reference = runs["reference"]["resume"]
    assert reference["run"] == {"status": 0, "epochs": [0, 1, 2]}
    for name in ("p0", "p1"):
        resume = runs[name]["resume"]
        assert resume["stopped"] == {"status": 130, "epochs": [0]}, name
        assert any(b.endswith(".weights.h5") for b in resume["backups"]), name
        # Run again: epochs 2 and 3 only, from the backup of epoch 1.
        assert resume["run"] == {"status": 0, "epochs": [1, 2]}, name
    assert runs["p0"]["resume"]["writer"] and not runs["p1"]["resume"]["writer"]
    # One results file, written by process 0, equal to the uninterrupted run's.
    (record,) = json.loads(
        Path(runs["folder"], "pair_runs", "results.json").read_text()
    )
    _assert_same_as_the_uninterrupted_run(record, runs)


# ------------------------------------------- PS-KD's store split by rows
def test_a_store_split_over_processes_trains_as_a_replicated_one(runs):
    """``shard_rows=True``: each of the two processes holds half of the rows
    (one device each), the reference's two devices half each; the results
    are those of the replicated store."""
    rows, classes = 64, 5
    half = rows // 2 * classes * 4  # bytes of 32 rows of 5 float32
    assert runs["reference"]["pskd_sharded"]["store"]["bytes_per_device"] == [
        half,
        half,
    ]
    for name in ("p0", "p1"):
        store = runs[name]["pskd_sharded"]["store"]
        assert store["rows"] == rows and store["split"] and store["loaded_split"]
        assert store["bytes_per_device"] == [half], name
        # Saved (gathered from both processes) and loaded back into halves.
        assert store["round_trip"], name
    replicated, sharded = runs["reference"]["pskd"], runs["p0"]["pskd_sharded"]
    for key, values in replicated["history"].items():
        np.testing.assert_allclose(
            sharded["history"][key], values, rtol=1e-5, atol=1e-6, err_msg=key
        )
    _close(replicated["weights"], sharded["weights"], "sharded PS-KD weights")
    _close(replicated["state"], sharded["state"], "sharded PS-KD store")


def test_the_split_store_is_saved_whole_once(runs):
    import h5py

    def stores(path):
        found = []
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, item: (
                    found.append(np.asarray(item))
                    if isinstance(item, h5py.Dataset) and item.shape == (64, 5)
                    else None
                )
            )
        return found

    (saved,) = stores(Path(runs["folder"], "pair.weights.h5"))
    np.testing.assert_allclose(
        saved, runs["p0"]["pskd_sharded"]["state"][0], rtol=0, atol=0
    )


# ------------------------------------------- one process SIGKILLed mid-run
@pytest.fixture(scope="module")
def killed(runs, tmp_path_factory):
    """``keras-tfkd run`` on the pair, process 1 SIGKILLed after epoch 1's
    backup; process 0 left GRACE seconds to end by itself, then killed; then
    the same command started again on both (a new coordinator port)."""
    folder = tmp_path_factory.mktemp("killed")
    shared = str(folder / "runs")
    out = {}
    start = time.monotonic()

    def pair(tag, *extra):
        port = str(_free_port())
        return [
            _start(
                ["command", str(folder / f"{tag}{i}.json"), shared, str(i), port]
                + list(extra),
                1,
            )
            for i in (0, 1)
        ]

    procs = pair("killed", "kill")
    try:
        victim = procs[1]
        output = victim.communicate(timeout=TIMEOUT)[0]
        assert victim.returncode == -signal.SIGKILL, output[-4000:]
        died = time.monotonic()
        try:
            survivor = procs[0].communicate(timeout=GRACE)[0]
            out["survivor"] = {"status": procs[0].returncode}
        except subprocess.TimeoutExpired:
            procs[0].kill()
            survivor = procs[0].communicate(timeout=30)[0]
            out["survivor"] = {"status": "killed by the test"}
        out["survivor"]["seconds_after_the_kill"] = time.monotonic() - died
        out["survivor"]["output"] = survivor[-4000:]
        procs = pair("resumed")
        for i, proc in enumerate(procs):
            output = proc.communicate(timeout=TIMEOUT)[0]
            assert proc.returncode == 0, f"resumed p{i}:\n{output[-4000:]}"
    finally:
        _stop(procs)
    for i in (0, 1):
        out[f"p{i}"] = json.loads((folder / f"resumed{i}.json").read_text())
    out["record"] = json.loads((folder / "runs" / "results.json").read_text())
    out["wall_seconds"] = time.monotonic() - start
    return out


def test_a_job_with_a_killed_process_resumes_every_process(runs, killed):
    # The survivor's next collective failed (gloo: "Connection closed by
    # peer"): the command said so in one line and ended at once, status 1.
    survivor = killed["survivor"]
    assert survivor["status"] == 1, survivor
    assert survivor["seconds_after_the_kill"] < GRACE
    assert "another process of this job" in survivor["output"], survivor
    assert "run the same command again to resume from epoch 2" in survivor["output"]
    # Started again: both processes resume from epoch 1's backup.
    for name in ("p0", "p1"):
        assert killed[name]["status"] == 0, name
        assert killed[name]["epochs"] == [1, 2], name
    (record,) = killed["record"]
    _assert_same_as_the_uninterrupted_run(record, runs)


def test_a_lost_process_is_told_apart_from_other_errors(monkeypatch, tmp_path):
    from keras_tfkd.cli import interrupts

    gone = ValueError(
        "UNKNOWN: Gloo AllGather failed: [pair.cc:547] Connection closed by peer"
    )
    assert not interrupts._lost_a_process(gone)  # one process: never
    monkeypatch.setattr(distribution, "process_count", lambda: 2)
    assert interrupts._lost_a_process(gone)
    assert not interrupts._lost_a_process(ValueError("a bad value"))
    line = interrupts._Progress(tmp_path).lost_process(False, gone)
    assert line.startswith("keras-tfkd: error: another process of this job")
    assert "Connection closed by peer" in line
    assert line.endswith("run the same command again to start.")
