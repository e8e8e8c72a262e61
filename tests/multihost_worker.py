"""One process of tests/test_multihost.py (run as a script, never collected).

``python multihost_worker.py reference OUT DIR``: one JAX process with two CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``) trains
every method data-parallel over both.

``python multihost_worker.py pair OUT DIR PROCESS_ID PORT``: one of two JAX
processes with one CPU device each, joined over ``127.0.0.1:PORT``
(`keras_tfkd.distribution.initialize`), trains the same methods from the
same data, each process fed its half of every global batch; then tries
PS-KD on per-process rows (refused before training).

PS-KD is trained twice: with its store replicated (``pskd``) and laid
out by rows over the devices (``pskd_sharded``, ``shard_rows=True``: each
process of the pair holds half of it); the sharded store is then saved
(``SAVED`` next to ``OUT``, written by process 0) and loaded into a fresh
sharded Distiller.

Then every process runs ``keras-tfkd run`` (PS-KD, 3 epochs) with its
output in ``DIR`` (one folder for both processes of the pair): the pair is
stopped (Ctrl-C) after epoch 1 and the command run again, which resumes
from the backup process 0 wrote.

``python multihost_worker.py command OUT DIR PROCESS_ID PORT [kill]``: one
of two processes that only run the command in ``DIR``; with ``kill``
process 1 kills itself (SIGKILL) after epoch 1's backup, and process 0 is
left to fail (the test kills it if it does not end); without, the command
runs to its end (resuming from a backup if there is one).

Each writes ``OUT`` (JSON): per method the history, the final student
weights and the teacher's state, and what each process was fed.
"""

from __future__ import annotations

import json
import sys
import time

NUM_CLASSES = 5
N = 64
BATCH = 16
EPOCHS = 2
METHODS = ("kd", "tfkd_reg", "pskd", "pskd_sharded", "cskd", "ols")


def _data():
    import numpy as np

    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(N, 4, 4, 1)).astype("uint8")
    y = (np.arange(N) % NUM_CLASSES).astype("int32")
    rng.shuffle(y)
    w = rng.uniform(0.5, 1.5, N).astype("float32")
    return images, y, w


def _student():
    import keras

    return keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(NUM_CLASSES),
        ],
        name="student",
    )


def _teacher():
    import keras

    return keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(5)],
        name="teacher",
    )


def _fetch(value):
    import numpy as np

    return np.asarray(value, dtype="float64").tolist()


def _run(method, dist, student_init, teacher_init, saved=None):
    import keras
    import numpy as np

    from keras_tfkd import _sharded, data, recipes

    images, y, w = _data()
    x = images.astype("float32") / 255.0
    with dist.scope():
        student = _student()
        student.set_weights(student_init)
        fit_x, fit = x, dict(batch_size=BATCH, shuffle=False, sample_weight=w)
        if method == "kd":
            teacher = _teacher()
            teacher.set_weights(teacher_init)
            distiller = recipes.kd(student, teacher, alpha=0.7, temperature=4.0)
        elif method == "tfkd_reg":
            distiller = recipes.tfkd_reg(
                student, NUM_CLASSES, alpha=0.5, temperature=4.0, correct_prob=0.9
            )
        elif method == "ols":
            distiller = recipes.online_label_smoothing(student, variant="port")
        elif method == "cskd":
            distiller = recipes.cs_kd(student)
            distiller.teacher.seed = 5  # the same pairs in every run
            fit = dict(batch_size=BATCH, shuffle=True)
        else:  # PS-KD, from data.pipeline: shuffled, seeded, global indices
            dataset = data.from_arrays((x, y), (x[:16], y[:16]))
            fit_x = data.pipeline(
                dataset, "train", BATCH, seed=3, example_index=True, engine="numpy"
            )
            fit = {}
            sharded = method == "pskd_sharded"
            distiller = recipes.ps_kd(
                student, alpha=0.8, num_examples=N, shard_rows=sharded
            )
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        history = distiller.fit(
            fit_x, y if fit else None, epochs=EPOCHS, verbose=0, **fit
        )
        result = {
            "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            "weights": [_fetch(v) for v in student.weights],
            "state": [
                _fetch(_sharded.fetch_rows(v))
                for v in distiller.teacher.non_trainable_weights
            ]
            if hasattr(distiller.teacher, "non_trainable_weights")
            else [],
        }
        if method == "pskd_sharded":
            result["store"] = _store_round_trip(distiller, student_init, saved)
        if method == "kd":
            logs = distiller.evaluate(
                x, y, batch_size=BATCH, verbose=0, return_dict=True
            )
            result["evaluate"] = {k: float(v) for k, v in logs.items()}
        if method == "pskd":
            result["local_batch"] = int(np.asarray(fit_x[0][1]).shape[0])
    return result


def _store_round_trip(distiller, student_init, saved):
    """The sharded store's layout, saved (process 0 writes) and loaded into a
    fresh sharded Distiller: True if the loaded store equals the trained one."""
    import keras
    import numpy as np

    from keras_tfkd import _io, _sharded, distribution, recipes

    store = distiller.teacher.predictions
    layout = {
        "rows": int(store.shape[0]),
        "bytes_per_device": [
            int(s.data.nbytes) for s in store.value.addressable_shards
        ],
        "split": _sharded.is_split(store),
    }
    _io.write_atomic(saved, distiller.save_weights)
    distribution.barrier("store saved")
    student = _student()
    student.set_weights(student_init)
    fresh = recipes.ps_kd(student, alpha=0.8, num_examples=N, shard_rows=True)
    fresh.compile(optimizer=keras.optimizers.SGD(0.1))
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(saved)
    loaded = fresh.teacher.predictions
    layout["loaded_split"] = _sharded.is_split(loaded)
    layout["round_trip"] = bool(
        np.array_equal(_sharded.fetch_rows(loaded), _sharded.fetch_rows(store))
    )
    return layout


def _fed_rows():
    """What `Distiller.fit` feeds this process for arrays given whole."""
    from keras_tfkd.data import shards

    images, y, _ = _data()
    global_arrays, rows = shards.arrays_are_global(images, y)
    fed = shards.shard_fit_data(
        images, y, {"batch_size": BATCH, "shuffle": False}, arrays_global=True
    )[0]
    return {
        "same_everywhere": global_arrays,
        "rows": rows,
        "labels": fed[0][1].tolist(),
    }


def _refusal(dist, student_init, process_id):
    """PS-KD on each process's own rows, without indices: refused up front."""
    import keras

    from keras_tfkd import recipes

    images, y, _ = _data()
    with dist.scope():
        student = _student()
        student.set_weights(student_init)
        distiller = recipes.ps_kd(student, alpha=0.8, num_examples=N)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        before = [_fetch(v) for v in student.weights]
        try:
            distiller.fit(
                images[process_id::2] / 255.0,
                y[process_id::2],
                batch_size=BATCH,
                epochs=1,
                verbose=0,
            )
        except ValueError as error:
            message = str(error)
        else:
            message = None
        unchanged = before == [_fetch(v) for v in student.weights]
    return {"message": message, "weights_unchanged": unchanged}


def _wait_for_backup(folder, epoch, timeout=60):
    """Until a ``backup.json`` under `folder` records `epoch` (or `timeout` s)."""
    import os

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for root, _, names in os.walk(folder):
            if "backup.json" in names:
                try:
                    with open(os.path.join(root, "backup.json")) as f:
                        if json.load(f)["epoch"] >= epoch:
                            return
                except (OSError, ValueError, KeyError):
                    pass
        time.sleep(0.05)


def _command(folder, mode, process_id, port, stop_after=None, kill=False):
    """``keras-tfkd run`` (PS-KD, 3 epochs) in this process; with `stop_after`
    interrupted (Ctrl-C, or with `kill` SIGKILL) after that epoch's backup.
    Returns the exit status and the epochs this call trained."""
    import os
    import signal

    from keras_tfkd import cli
    from keras_tfkd.callbacks import safety

    args = ["run", "--experiment", "pskd/resnet18", "--student", "mlp"]
    args += ["--dataset", "digits", "--limit", "64", "--epochs", "3"]
    args += ["--batch-size", "16", "--output-dir", folder, "--quiet"]
    if mode == "pair":
        args += ["--coordinator-address", f"127.0.0.1:{port}"]
        args += ["--num-processes", "2", "--process-id", str(process_id)]
    else:
        args += ["--distribution", "data_parallel"]
    original = safety.RunBackup.on_epoch_end
    epochs = []

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        epochs.append(epoch)
        if stop_after is not None and epoch + 1 == stop_after:
            if kill:  # once process 0 has committed the backup
                _wait_for_backup(folder, stop_after)
                os.kill(os.getpid(), signal.SIGKILL)
            raise KeyboardInterrupt

    safety.RunBackup.on_epoch_end = on_epoch_end
    try:
        status = cli.main(args)
    except SystemExit as exit_:
        status = exit_.code
    finally:
        safety.RunBackup.on_epoch_end = original
    return {"status": status, "epochs": epochs}


def _resume(folder, mode, process_id, port):
    """The command stopped after epoch 1 and run again (the pair), or once."""
    import os

    from keras_tfkd import _io, distribution

    out = {"writer": _io.is_writer()}
    if mode == "pair":
        out["stopped"] = _command(folder, mode, process_id, port, stop_after=1)
        distribution.barrier("worker")  # process 0 has written its backup
        out["backups"] = sorted(
            name for _, _, names in os.walk(folder) for name in names
        )
    out["run"] = _command(folder, mode, process_id, port)
    return out


def main(argv):
    mode, out = argv[1], argv[2]
    start = time.perf_counter()
    import os

    import numpy as np

    from keras_tfkd import distribution

    process_id, port, command_dir = 0, None, argv[3]
    if mode in ("pair", "command"):
        process_id, port = int(argv[4]), int(argv[5])
        distribution.initialize(
            f"127.0.0.1:{port}", num_processes=2, process_id=process_id
        )
    if mode == "command":
        kill = argv[6:] == ["kill"] and process_id == 1  # process 0 goes on
        results = _command(
            command_dir,
            "pair",
            process_id,
            port,
            stop_after=1 if kill else None,
            kill=kill,
        )
        results["seconds"] = time.perf_counter() - start
        with open(out, "w") as f:
            json.dump(results, f)
        return
    # Initial weights from NumPy: keras.utils.set_random_seed would import
    # TensorFlow and torch (seconds of CPU in every process).
    rng = np.random.default_rng(0)
    student_init, teacher_init = (
        [rng.normal(0.0, 0.3, w.shape).astype("float32") for w in model.get_weights()]
        for model in (_student(), _teacher())
    )
    dist = distribution.get_distribution("data_parallel")
    results = {
        "process_count": distribution.process_count(),
        "process_index": distribution.process_index(),
        "devices": dist.devices,
    }
    results["setup_seconds"] = time.perf_counter() - start
    saved = os.path.join(os.path.dirname(os.path.abspath(out)), f"{mode}.weights.h5")
    for method in METHODS:
        began = time.perf_counter()
        results[method] = _run(method, dist, student_init, teacher_init, saved)
        results[method]["seconds"] = time.perf_counter() - began
    if mode == "pair":
        results["fed"] = _fed_rows()
        results["refusal"] = _refusal(dist, student_init, process_id)
    results["resume"] = _resume(command_dir, mode, process_id, port)
    results["seconds"] = time.perf_counter() - start
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv)
