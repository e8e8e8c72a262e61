"""PS-KD's store laid out by rows over the devices (``shard_rows``).

One device, every backend: ``shard_rows`` changes nothing (the same store,
the same training, bit for bit); TensorFlow refuses ``shard_rows=True``
under a strategy of several replicas.

Two devices, JAX: this file run as a script (``python test_sharded_store.py
OUT DUMP``) in a process with ``XLA_FLAGS=--xla_force_host_platform_device_count
=2``, which also dumps the compiled train steps' HLO (``--xla_dump_to``; the
persistent compilation cache is turned off there, else nothing is
compiled). It trains PS-KD with the store replicated and split by rows,
saves and loads the stores both ways (and a store whose rows do not split
evenly), and writes what it saw to ``OUT``. The tests check that each device
holds half of the rows, that the results equal the replicated store's, that
no collective of the compiled step moves an operand of the store's size
(the table is never all-gathered: the rows are read by a masked local
gather and an all-reduce of the batch's rows, written by a local scatter),
and that every round trip gives back the store. Two processes:
``tests/test_multihost.py``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_tfkd import recipes
from keras_tfkd.online import PastPredictions

BACKEND = keras.backend.backend()
N, K, B = 256, 5, 16
#: Seconds the two-device process may run.
TIMEOUT = 180
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute")
COLLECTIVES += ("reduce-scatter",)


def _data(n=N):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = rng.integers(0, K, n).astype("int32")
    return x, y


def _student():
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, "relu"), keras.layers.Dense(K)]
    )


def _ps_kd(init, shard_rows, n=N):
    student = _student()
    student.set_weights(init)
    distiller = recipes.ps_kd(student, alpha=0.8, num_examples=n, shard_rows=shard_rows)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    return distiller


def _init():
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.3, w.shape).astype("float32") for w in _student().weights]


def _train(shard_rows, epochs=2):
    x, y = _data()
    distiller = _ps_kd(_init(), shard_rows)
    history = distiller.fit(x, y, batch_size=B, epochs=epochs, shuffle=False, verbose=0)
    return distiller, history.history


# ------------------------------------------------------- one device
@pytest.mark.parametrize("shard_rows", [True, "auto"])
def test_one_device_changes_nothing(shard_rows):
    plain = PastPredictions(N, K)
    split = PastPredictions(N, K, shard_rows=shard_rows)
    assert split.predictions.shape == plain.predictions.shape == (N, K)
    assert split.stored_rows == N
    assert split.predictions.path == f"{split.name}/predictions"
    assert plain.predictions.path == f"{plain.name}/predictions"
    assert len(split.weights) == len(split.non_trainable_weights) == 1
    assert "shard_rows" not in plain.get_config()
    again = PastPredictions.from_config(split.get_config())
    assert again.shard_rows == shard_rows and again.stored_rows == N


def test_one_device_trains_bit_for_bit_as_before():
    replicated, history = _train(False, epochs=1)
    split, split_history = _train(True, epochs=1)
    assert split_history == history
    for a, b in zip(replicated.weights, split.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("value", [1, "yes", None])
def test_shard_rows_takes_true_false_or_auto(value):
    with pytest.raises(ValueError, match="shard_rows"):
        PastPredictions(N, K, shard_rows=value)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a TensorFlow strategy")
def test_tensorflow_refuses_a_split_store_over_several_replicas(monkeypatch):
    import tensorflow as tf

    class TwoReplicas:
        num_replicas_in_sync = 2

    monkeypatch.setattr(tf.distribute, "has_strategy", lambda: True)
    monkeypatch.setattr(tf.distribute, "get_strategy", lambda: TwoReplicas())
    with pytest.raises(ValueError, match="whole\\s+copy on each of its 2"):
        PastPredictions(N, K, shard_rows=True)
    assert PastPredictions(N, K, shard_rows="auto").predictions.shape == (N, K)


# ------------------------------------------------------- two devices (JAX)
def _shapes(text):
    """``[(dtype, dims), ...]`` of an HLO result type (a tuple or an array)."""
    return [
        (dtype, tuple(int(d) for d in dims.split(",") if d))
        for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text)
    ]


def _read_hlo(folder):
    """Per compiled train step: its collectives and its scatters."""
    pattern = re.compile(r"=\s*(.+?)\s+([a-z-]+)\(")
    modules = {}
    for path in sorted(Path(folder).glob("*train_step*after_optimizations.txt")):
        collectives, scatters = [], []
        for line in path.read_text().splitlines():
            match = pattern.search(line)
            if not match:
                continue
            result, op = match.groups()
            base = op.removesuffix("-start")
            if base in COLLECTIVES:
                collectives.append([base, _shapes(result)])
            elif op == "scatter":
                scatters.append(_shapes(result))
        modules[path.name] = {"collectives": collectives, "scatters": scatters}
    return modules


def _round_trip(folder, save, load, name):
    path = str(Path(folder) / f"{name}.weights.h5")
    save.save_weights(path)
    load.optimizer.build(load.trainable_variables)
    load.load_weights(path)
    return bool(
        np.array_equal(
            np.asarray(load.teacher.predictions.value)[: load.teacher.num_examples],
            np.asarray(save.teacher.predictions.value)[: save.teacher.num_examples],
        )
    )


def _two_devices(out, folder):
    from keras_tfkd import _sharded, distribution

    dist = distribution.get_distribution("data_parallel")
    results = {"devices": dist.devices}
    with dist.scope():
        runs = {}
        for name, shard_rows in (("replicated", False), ("sharded", True)):
            distiller, history = _train(shard_rows)
            store = distiller.teacher.predictions
            runs[name] = distiller
            results[name] = {
                "history": history,
                "weights": [np.asarray(w).tolist() for w in distiller.student.weights],
                "store": np.asarray(store.value).tolist(),
                "rows": int(store.shape[0]),
                "bytes_per_device": [
                    int(s.data.nbytes) for s in store.value.addressable_shards
                ],
                "split": _sharded.is_split(store),
            }
        init = _init()
        trips = {
            "sharded_to_replicated": _round_trip(
                folder, runs["sharded"], _ps_kd(init, False), "a"
            ),
            "replicated_to_sharded": _round_trip(
                folder, runs["replicated"], _ps_kd(init, True), "b"
            ),
        }
        # 255 rows over 2 devices: 128 rows each, the last one padding.
        odd = _ps_kd(init, True, n=N - 1)
        values = np.random.default_rng(1).uniform(size=(N, K)).astype("float32")
        _sharded.assign_rows_from_host(odd.teacher.predictions, values)
        results["odd_rows"] = odd.teacher.stored_rows
        trips["odd_sharded_to_sharded"] = _round_trip(
            folder, odd, _ps_kd(init, True, n=N - 1), "c"
        )
    # ... and into a store on one device, outside the distribution.
    trips["odd_sharded_to_one_device"] = _round_trip(
        folder, odd, _ps_kd(init, False, n=N - 1), "d"
    )
    results["round_trips"] = trips
    with open(out, "w") as f:
        json.dump(results, f)


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    if BACKEND != "jax":
        pytest.skip("layouts are a JAX keras.distribution feature")
    folder = tmp_path_factory.mktemp("sharded_store")
    dump = folder / "hlo"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cache hit compiles (dumps) nothing
    env["XLA_FLAGS"] = (
        "--xla_force_host_platform_device_count=2 "
        f"--xla_dump_to={dump} --xla_dump_hlo_module_re=.*train_step.*"
    )
    out = folder / "out.json"
    proc = subprocess.run(
        [sys.executable, __file__, str(out), str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads(out.read_text())
    results["hlo"] = _read_hlo(dump)
    return results


def test_each_device_holds_half_of_the_rows(two_devices):
    assert len(two_devices["devices"]) == 2
    replicated, sharded = two_devices["replicated"], two_devices["sharded"]
    assert not replicated["split"] and sharded["split"]
    assert replicated["bytes_per_device"] == [N * K * 4] * 2
    assert sharded["bytes_per_device"] == [N // 2 * K * 4] * 2
    assert two_devices["odd_rows"] == N  # 255 padded to 2 x 128


def test_a_split_store_trains_as_a_replicated_one(two_devices):
    replicated, sharded = two_devices["replicated"], two_devices["sharded"]
    assert sharded["history"] == replicated["history"]
    for a, b in zip(replicated["weights"], sharded["weights"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sharded["store"], replicated["store"])
    assert sharded["history"]["loss"][0] != sharded["history"]["loss"][1]


def _store_sized(shape, rows):
    """An array of `K` columns and at least `rows` rows (a share of the store)."""
    dims = shape[1]
    return len(dims) == 2 and dims[1] == K and dims[0] >= rows


def test_the_compiled_step_never_gathers_the_store(two_devices):
    """The sharded step updates its half of the table in place (a scatter into
    ``[N/2, K]``) and moves only the batch's rows between the devices."""
    hlo = two_devices["hlo"]
    local = [
        name
        for name, module in hlo.items()
        if any(shape == ("f32", (N // 2, K)) for s in module["scatters"] for shape in s)
    ]
    whole = [
        name
        for name, module in hlo.items()
        if any(shape == ("f32", (N, K)) for s in module["scatters"] for shape in s)
    ]
    assert local, f"no train step scatters into half of the store: {hlo}"
    assert whole, "the replicated step (the comparison) was not found"
    for name in local:
        moved = [
            (op, shape)
            for op, shapes in hlo[name]["collectives"]
            for shape in shapes
            if _store_sized(shape, N // 2)
        ]
        assert not moved, f"{name} moves the store between devices: {moved}"
        gathers = [
            dims
            for op, shapes in hlo[name]["collectives"]
            if op == "all-gather"
            for _, dims in shapes
        ]
        # All that is gathered: the batch's B indices and B x K new rows
        # (B = 16); the all-reduces are the gradients' and the B x K rows
        # read (each device's rows, zeros elsewhere).
        assert gathers and max(np.prod(d) for d in gathers) <= B * K, gathers


def test_split_stores_save_and_load_every_way(two_devices):
    trips = two_devices["round_trips"]
    assert trips == {key: True for key in trips} and len(trips) == 4


if __name__ == "__main__":
    _two_devices(sys.argv[1], sys.argv[2])
