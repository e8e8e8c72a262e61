"""ReferenceSchedule, CoupledSGD and the reference optimisers."""

import keras
import numpy as np
import pytest

from keras_tfkd.schedules import (
    CoupledSGD,
    ReferenceSchedule,
    imagenet_optimizer,
    reference_lr,
    reference_optimizer,
    scale_milestones,
)


def python_lr(step, base_lr, spe, epochs, warmup, milestones, gamma, ref_epochs):
    """The documented formula, in plain Python."""
    if epochs != ref_epochs:
        milestones = [round(m * epochs / ref_epochs) for m in milestones]
    lr = base_lr * gamma ** sum(step >= m * spe for m in milestones)
    warmup_steps = round(warmup * spe)
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


def schedule_values(schedule, steps):
    return np.array([float(keras.ops.convert_to_numpy(schedule(s))) for s in steps])


CASES = [  # base_lr, steps/epoch, epochs, warm-up epochs, milestones, gamma, ref
    (0.1, 10, 200, 1, (60, 120, 160), 0.2, 200),  # the reference run
    (0.05, 7, 20, 1, (60, 120, 160), 0.2, 200),  # scaled: 6, 12, 16
    (0.1, 4, 5, 1, (60, 120, 160), 0.2, 200),  # scaled: 2 (1.5 half-even), 3, 4
    (0.2, 3, 90, 0, (30, 60, 80), 0.1, 90),  # ImageNet, no warm-up
]


def test_schedule_matches_formula():
    # One test, not parametrised: the suite's per-test Keras reset is slow.
    for base_lr, spe, epochs, warmup, milestones, gamma, ref in CASES:
        schedule = ReferenceSchedule(
            base_lr, spe, epochs, warmup, milestones, gamma, reference_epochs=ref
        )
        steps = set(range(2 * spe + 2))  # warm-up and the first epochs
        for m in schedule.milestone_epochs:  # both sides of every milestone
            steps |= {m * spe - 1, m * spe, m * spe + 1}
        steps |= {epochs * spe - 1}
        steps = sorted(s for s in steps if s >= 0)
        expected = [
            python_lr(s, base_lr, spe, epochs, warmup, milestones, gamma, ref)
            for s in steps
        ]
        got = schedule_values(schedule, steps)
        np.testing.assert_allclose(
            got, expected, rtol=1e-6, err_msg=str(schedule.get_config())
        )


def test_schedule_landmarks():
    schedule = ReferenceSchedule(0.1, steps_per_epoch=10, epochs=200)
    values = schedule_values(schedule, [0, 9, 10, 599, 600, 1200, 1600, 1999])
    np.testing.assert_allclose(
        values, [0.01, 0.1, 0.1, 0.1, 0.02, 0.004, 0.0008, 0.0008], rtol=1e-6
    )
    assert scale_milestones((60, 120, 160), 20, 200) == (6, 12, 16)
    assert scale_milestones((60, 120, 160), 5, 200) == (2, 3, 4)
    assert ReferenceSchedule(0.1, 10, epochs=20).milestone_steps == (60, 120, 160)


def test_schedule_serialization_round_trip():
    schedule = ReferenceSchedule(0.05, 13, epochs=30, warmup_epochs=2, gamma=0.5)
    config = keras.saving.serialize_keras_object(schedule)
    assert config["registered_name"] == "keras_tfkd>ReferenceSchedule"
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, ReferenceSchedule)
    assert restored.get_config() == schedule.get_config()
    steps = [0, 25, 26, 100, 300]
    np.testing.assert_allclose(
        schedule_values(restored, steps), schedule_values(schedule, steps)
    )


def numpy_torch_sgd(w, grads, lrs, momentum, wd, nesterov=False):
    """torch.optim.SGD's update (dampening 0), in NumPy float64."""
    w = np.array(w, np.float64)
    buf = None
    for g, lr in zip(grads, lrs):
        g = np.asarray(g, np.float64) + wd * w
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        w = w - lr * g
    return w


W0 = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], np.float32)
GRADS = [
    np.array([[0.1, -0.2, 0.3], [0.0, 0.5, -0.4]], np.float32),
    np.array([[-0.3, 0.1, 0.2], [0.2, -0.1, 0.05]], np.float32),
    np.array([[0.05, 0.05, -0.1], [-0.3, 0.2, 0.1]], np.float32),
]


def run_keras(optimizer, w0=W0, grads=GRADS):
    var = keras.Variable(w0)
    for g in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    return keras.ops.convert_to_numpy(var)


@pytest.mark.parametrize(
    "momentum, wd, nesterov", [(0.9, 0.1, False), (0.0, 0.1, False), (0.9, 0.05, True)]
)
def test_coupled_sgd_matches_torch_formula(momentum, wd, nesterov):
    # A schedule that changes lr every step: torch and Keras momentum differ then.
    schedule = ReferenceSchedule(0.3, steps_per_epoch=3, epochs=2, milestones=(1,))
    lrs = schedule_values(schedule, range(3)).tolist()
    opt = CoupledSGD(schedule, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    got = run_keras(opt)
    expected = numpy_torch_sgd(W0, GRADS, lrs, momentum, wd, nesterov)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Keras's own decoupled decay is a different update.
    keras_sgd = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.1)
    coupled = CoupledSGD(0.1, momentum=0.9, weight_decay=0.1)
    assert not np.allclose(run_keras(keras_sgd), run_keras(coupled), atol=1e-4)


@pytest.mark.one_backend  # NumPy against torch.optim: no Keras backend involved
def test_numpy_reference_is_torch():
    torch = pytest.importorskip("torch")
    w = torch.tensor(W0.astype(np.float64), requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.1)
    lrs = [0.1, 0.2, 0.05]
    for g, lr in zip(GRADS, lrs):
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.tensor(g.astype(np.float64))
        opt.step()
    np.testing.assert_allclose(
        w.detach().numpy(), numpy_torch_sgd(W0, GRADS, lrs, 0.9, 0.1), rtol=1e-12
    )


def test_coupled_sgd_exclusion():
    opt = CoupledSGD(0.1, momentum=0.9, weight_decay=0.5)
    var = keras.Variable(W0, name="bias_like")
    opt.exclude_from_weight_decay(var_names=["bias_like"])
    for g in GRADS:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    expected = numpy_torch_sgd(W0, GRADS, [0.1] * 3, 0.9, 0.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(var), expected, rtol=1e-5)


@pytest.mark.gradients
def test_coupled_sgd_in_fit_matches_torch_formula():
    """Compiled train steps (jit / tf.function / torch) with the schedule."""
    x = np.array([[1.0, 2.0, -1.0], [0.5, -1.0, 1.0], [2.0, 0.0, 1.0]], np.float32)
    y = np.array([[1.0], [0.0], [2.0]], np.float32)
    w0 = np.array([[0.1], [-0.2], [0.3]], np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].set_weights([w0])
    schedule = ReferenceSchedule(
        0.1, steps_per_epoch=2, epochs=4, milestones=(1, 2), reference_epochs=4
    )
    opt = CoupledSGD(schedule, momentum=0.9, weight_decay=0.01)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=3, epochs=5, shuffle=False, verbose=0)

    w = w0.astype(np.float64)
    buf = None
    for step in range(5):
        lr = python_lr(step, 0.1, 2, 4, 1, (1, 2), 0.2, 4)
        g = 2.0 / len(x) * x.T @ (x @ w - y) + 0.01 * w
        buf = g if buf is None else 0.9 * buf + g
        w = w - lr * buf
    np.testing.assert_allclose(model.layers[0].get_weights()[0], w, rtol=1e-5)


def test_optimizer_serialization_round_trip(tmp_path):
    opt = reference_optimizer("resnet18", batch_size=64, steps_per_epoch=10, epochs=20)
    config = keras.optimizers.serialize(opt)
    restored = keras.optimizers.deserialize(config)
    assert isinstance(restored, CoupledSGD)
    assert restored.weight_decay == pytest.approx(5e-4)
    assert restored.momentum == pytest.approx(0.9)
    schedule = restored._learning_rate
    assert isinstance(schedule, ReferenceSchedule)
    assert schedule.get_config() == opt._learning_rate.get_config()

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"), verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, CoupledSGD)
    assert isinstance(loaded.optimizer._learning_rate, ReferenceSchedule)


def test_reference_optimizers():
    assert reference_lr(128) == pytest.approx(0.1)
    assert reference_lr(64) == pytest.approx(0.05)
    opt = reference_optimizer("mobilenet_v2", batch_size=64, steps_per_epoch=782)
    assert isinstance(opt, CoupledSGD)
    cfg = opt._learning_rate.get_config()
    assert cfg["base_lr"] == pytest.approx(0.05)
    assert cfg["milestones"] == [60, 120, 160] and cfg["gamma"] == pytest.approx(0.2)
    assert cfg["steps_per_epoch"] == 782 and cfg["warmup_epochs"] == 1
    for name in ("cnn5", "CNN-5"):
        adam = reference_optimizer(name, batch_size=128, steps_per_epoch=10)
        assert isinstance(adam, keras.optimizers.Adam)
        assert float(keras.ops.convert_to_numpy(adam.learning_rate)) == pytest.approx(
            1e-3
        )
    imnet = imagenet_optimizer(batch_size=512, steps_per_epoch=100)
    assert imnet.weight_decay == pytest.approx(1e-4)
    icfg = imnet._learning_rate.get_config()
    assert icfg["base_lr"] == pytest.approx(0.2) and icfg["warmup_epochs"] == 0
    assert imnet._learning_rate.milestone_epochs == (30, 60, 80)
    assert icfg["gamma"] == pytest.approx(0.1)
