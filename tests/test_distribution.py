"""The Distiller on two devices gives what it gives on one (Keras's own engines).

Each backend's run happens in a subprocess, because the device count is fixed
when the runtime starts: JAX gets ``XLA_FLAGS=--xla_force_host_platform_device_count
=2`` before it is imported, TensorFlow two logical CPUs before it initialises.
The subprocess is this file run as a script (``python test_distribution.py
OUT``); it trains the same student from the same initial weights, once on the
default device and once data-parallel over both CPUs with the global batch
split, for a model teacher, a virtual teacher and a cached teacher (and the
online teachers, and a feature term), with sample weights and an L2
regulariser, and saves everything to ``OUT``; one process, one distribution of
each name for all of them. The tests compare the two runs with each other and
the logged values with NumPy.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()
TEACHERS = ("model", "virtual", "cached")
#: Teachers whose state is updated by every step (PS-KD's per-example store,
#: OLS's per-class sums): each replica must write the rows of the whole batch.
ONLINE_TEACHERS = ("pskd", "ols")
#: A feature-distillation term with a trained adapter beside the KD term.
FEATURE_KINDS = ("features",)
KINDS = TEACHERS + ONLINE_TEACHERS + FEATURE_KINDS
NUM_CLASSES = 5
ALPHA = 0.7
TEMPERATURE = 4.0
L2 = 1e-3


# ----------------------------------------------------------------- worker side
def _data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, 64).astype("int32")
    w = rng.uniform(0.2, 2.0, 64).astype("float32")
    return x, y, w


def _student():
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(
                NUM_CLASSES, kernel_regularizer=keras.regularizers.L2(L2)
            ),
        ],
        name="student",
    )


def _teacher_model():
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(NUM_CLASSES, name="teacher_out")],
        name="teacher",
    )


def _run(kind, dist, student_init, teacher_init, x, y, w):
    from keras_tfkd import Distiller, losses, online, teachers

    with dist.scope():
        student = _student()
        student.set_weights(student_init)
        teacher_model = _teacher_model()
        teacher_model.set_weights(teacher_init)
        inputs = x
        if kind == "model":
            teacher = teacher_model
            soft = losses.SoftTargetKL(temperature=TEMPERATURE)
        elif kind == "virtual":
            teacher = teachers.VirtualTeacher(NUM_CLASSES, correct_prob=0.9)
            soft = losses.SoftTargetKL(
                temperature=1.0, teacher_temperature=TEMPERATURE, multiplier=0.5
            )
        elif kind == "features":
            teacher = teacher_model
            soft = [
                losses.SoftTargetKL(temperature=TEMPERATURE),
                losses.FeatureDistillation("hidden", "teacher_out", adapter="dense"),
            ]
        elif kind == "cached":
            teacher = teachers.CachedTeacher.from_model(teacher_model, x)
            inputs = teacher.attach(x)
            soft = losses.SoftTargetKL(temperature=TEMPERATURE)
        else:
            if kind == "pskd":
                teacher = online.PastPredictions(len(x), NUM_CLASSES)
                inputs = teachers.attach_example_index(teacher, x)
            else:
                teacher = online.OnlineSoftLabels(NUM_CLASSES, variant="port")
            soft = losses.SoftTargetCrossEntropy(targets="probabilities")
        distiller = Distiller(
            student=student, teacher=teacher, soft_loss=soft, alpha=ALPHA
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        kwargs = dict(batch_size=16, verbose=0, sample_weight=w)
        history = distiller.fit(inputs, y, epochs=2, shuffle=False, **kwargs)
        logs = distiller.evaluate(inputs, y, return_dict=True, **kwargs)
    if dist.backend == "tensorflow" and dist.engine is not None:
        replicas = int(dist.engine.num_replicas_in_sync)
    elif dist.backend == "jax" and dist.engine is not None:
        replicas = len(student.weights[0].value.sharding.device_set)
    else:
        replicas = 1
    return {
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "evaluate": {k: float(v) for k, v in logs.items()},
        "weights": [np.asarray(v).tolist() for v in student.get_weights()],
        "replicas": replicas,
        "adapters": [
            np.asarray(v).tolist()
            for adapter in distiller.feature_adapters
            for v in adapter.get_weights()
        ],
        "teacher_state": [
            np.asarray(v, "float32").tolist()
            for v in getattr(distiller.teacher, "non_trainable_weights", [])
        ],
    }


def _worker(out_path):
    from keras_tfkd import distribution

    if BACKEND == "tensorflow":
        distribution.simulate_cpu_devices(2)
    devices = distribution.list_devices("cpu")
    x, y, w = _data()
    keras.utils.set_random_seed(0)
    student_init = _student().get_weights()
    teacher_init = _teacher_model().get_weights()
    results = {
        "devices": devices,
        "init": [v.tolist() for v in student_init],
        "teacher": [v.tolist() for v in teacher_init],
    }
    # One distribution of each name trains every kind. TensorFlow keys its
    # collectives by a counter that restarts with each new MirroredStrategy:
    # under a second strategy, steps with other collectives (the online
    # teachers' gathers, the adapter's gradients) would meet the first one's
    # keys, a collective-instance mismatch (see keras_tfkd._backend.
    # all_replicas); one strategy goes on counting, so one process runs all.
    dists = {
        name: distribution.get_distribution(name, devices=devices)
        for name in ("single", "data_parallel")
    }
    for kind in KINDS:
        for name, dist in dists.items():
            keras.utils.set_random_seed(1)  # the same adapter initial weights
            results[f"{kind}/{name}"] = _run(
                kind, dist, student_init, teacher_init, x, y, w
            )
    with open(out_path, "w") as f:
        json.dump(results, f)


# ------------------------------------------------------------------- test side
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if BACKEND == "torch":
        pytest.skip(
            "Keras 3.15 on torch has no data-parallel engine for fit(): "
            "keras.distribution needs backend distribution_lib, which is None on "
            "torch, and fit() never wraps DistributedDataParallel."
        )
    out = tmp_path_factory.mktemp("distribution") / "runs.json"
    env = dict(os.environ, KERAS_BACKEND=BACKEND, CUDA_VISIBLE_DEVICES="")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, __file__, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out) as f:
        return json.load(f)


def _log_softmax(z):
    z = np.asarray(z, "float64")
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _reference_logs(kind, student_weights, teacher_weights):
    """hard, soft and total loss of the trained student on the data, in NumPy."""
    x, y, w = _data()
    x, w, n = x.astype("float64"), w.astype("float64"), len(y)
    w1, b1, w2, b2 = (np.asarray(v, "float64") for v in student_weights)
    z_s = np.maximum(x @ w1 + b1, 0.0) @ w2 + b2
    hard = -(_log_softmax(z_s)[np.arange(n), y] * w).sum() / n
    if kind == "virtual":
        p_d = np.full((n, NUM_CLASSES), 0.1 / (NUM_CLASSES - 1))
        p_d[np.arange(n), y] = 0.9
        log_p_t, log_p_s = _log_softmax(p_d / TEMPERATURE), _log_softmax(z_s)
        factor = 0.5
    else:
        kernel, bias = (np.asarray(v, "float64") for v in teacher_weights)
        log_p_t = _log_softmax((x @ kernel + bias) / TEMPERATURE)
        log_p_s = _log_softmax(z_s / TEMPERATURE)
        factor = TEMPERATURE**2
    kl = (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1)
    soft = factor * (kl * w).sum() / n
    reg = L2 * float((w2**2).sum())  # the L2 on the last kernel
    return hard, soft, (1 - ALPHA) * hard + ALPHA * soft + reg


def test_two_cpu_devices_are_used(runs):
    assert runs["devices"] == ["cpu:0", "cpu:1"]
    for kind in TEACHERS:
        assert runs[f"{kind}/single"]["replicas"] == 1
        assert runs[f"{kind}/data_parallel"]["replicas"] == 2


@pytest.mark.gradients
@pytest.mark.parametrize("kind", TEACHERS + FEATURE_KINDS)
def test_same_losses_and_weights_on_two_devices(runs, kind):
    one, two = runs[f"{kind}/single"], runs[f"{kind}/data_parallel"]
    assert set(one["history"]) >= {"loss", "hard_loss", "soft_loss"}
    assert one["history"].keys() == two["history"].keys()
    for key in one["history"]:
        np.testing.assert_allclose(
            two["history"][key], one["history"][key], rtol=1e-5, err_msg=key
        )
    # Training moved the weights, and moved them identically on 1 and 2 devices.
    moved = max(
        np.abs(np.subtract(a, b)).max() for a, b in zip(one["weights"], runs["init"])
    )
    assert moved > 1e-2
    for a, b in zip(two["weights"], one["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(one["adapters"]) == (2 if kind in FEATURE_KINDS else 0)
    for a, b in zip(two["adapters"], one["adapters"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ONLINE_TEACHERS)
def test_online_teacher_state_is_complete_on_two_devices(runs, kind):
    """PS-KD's store and OLS's class sums get the rows of every replica.

    With each replica writing only its half of the batch, the stored rows (and
    so the targets of the next epoch, the losses and the weights) would differ
    from the single-device run.
    """
    one, two = runs[f"{kind}/single"], runs[f"{kind}/data_parallel"]
    assert two["replicas"] == 2
    assert one["teacher_state"] and len(one["teacher_state"]) == len(
        two["teacher_state"]
    )
    for a, b in zip(two["teacher_state"], one["teacher_state"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    store = np.asarray(one["teacher_state"][0])
    assert np.abs(store).sum() > 0  # the state was written
    for key in one["history"]:
        np.testing.assert_allclose(
            two["history"][key], one["history"][key], rtol=1e-5, err_msg=key
        )
    for a, b in zip(two["weights"], one["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", TEACHERS)
@pytest.mark.parametrize("name", ["single", "data_parallel"])
def test_logged_losses_are_unscaled_and_sample_weighted(runs, kind, name):
    """evaluate's hard/soft/total equal the weighted NumPy means on any device count.

    Under MirroredStrategy each replica's loss is scaled by 1/2 inside
    ``Loss.__call__``; unscaled logging gives the global value, a missed
    unscale would log half of it.
    """
    run = runs[f"{kind}/{name}"]
    hard, soft, total = _reference_logs(kind, run["weights"], runs["teacher"])
    logs = run["evaluate"]
    np.testing.assert_allclose(logs["hard_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(logs["soft_loss"], soft, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-5)
    assert soft > 1e-3 and hard > 1e-2


def test_torch_data_parallel_raises_clear_error():
    from keras_tfkd import distribution

    if BACKEND != "torch":
        dist = distribution.get_distribution("single")
        assert dist.num_replicas == 1 and dist.engine is None
        return
    with pytest.raises(NotImplementedError, match="torch"):
        distribution.get_distribution("data_parallel")
    assert distribution.get_distribution("auto").name == "single"


def test_bad_arguments_name_the_value():
    from keras_tfkd import distribution

    with pytest.raises(ValueError, match="name='model_parallel'"):
        distribution.get_distribution("model_parallel")
    with pytest.raises(ValueError, match="devices='cpu:0'"):
        distribution.get_distribution("single", devices="cpu:0")
    with pytest.raises(ValueError, match="count=0"):
        distribution.simulate_cpu_devices(0)


if __name__ == "__main__":
    _worker(sys.argv[1])
