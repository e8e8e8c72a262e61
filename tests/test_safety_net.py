"""A safety net for the redesign: behaviour a move or a rename could break silently.

Every test checks values: the study's aggregation over seeds, the record of a
run that diverges, the validation of `TrainConfig`/`StudyConfig`, the virtual
teacher's exact logits, `.keras` round trips of Distillers with a cached and a
uniform teacher, a hard loss given to `compile`, and the learning rate that
`keras-tfkd run --optimizer adam --lr-schedule ...` really trains with.
"""

import contextlib
import io
import json
import math

import keras
import numpy as np
import pytest
import reference as ref
from keras import ops

from keras_tfkd import Distiller, data, experiments, losses, study, teachers
from keras_tfkd import runs as runs_lib
from keras_tfkd.cli import main

K = 10


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


# ===================================================== 1. the study's summary
def _record(method, seed, best, final, *, student="cnn_tiny", epochs=2, **extra):
    """A finished-run record with the fields `study.summarize` reads."""
    teacher = None if method in ("baseline", "lsr", "tfkd_reg") else "cnn_small"
    record = {
        "key": f"{method}/{student}/{teacher}/seed{seed}/epochs{epochs}",
        "method": method,
        "student": student,
        "teacher": teacher,
        "dataset": "digits",
        "num_classes": K,
        "seed": seed,
        "epochs": epochs,
        "experiment": study.STUDY_SOURCES[method],
        "hyperparameters": {"batch_size": 64, "test_examples": 450},
        "best_test_accuracy": best,
        "test_accuracy": final,
        "best_epoch": 1,
        "history": {"test_accuracy": [best, final][:epochs]},
        "kl_note": "batch-mean KL",
        "diverged": False,
        "train_seconds": 1.5,
    }
    record.update(extra)
    return record


def _row(rows, method, student="cnn_tiny"):
    (row,) = [
        r
        for r in rows
        if (r["method"], r["student"], r["role"]) == (method, student, "run")
    ]
    return row


# Three seeds, best != final. KD's records come in another seed order than
# the baseline's: the per-seed deltas must pair by seed, not by position.
BASE = {0: (0.90, 0.80), 1: (0.92, 0.84), 2: (0.94, 0.88)}  # seed: (best, final)
KD = {2: (0.97, 0.91), 0: (0.93, 0.85), 1: (0.95, 0.85)}
KD_TEACHER = {2: 0.99, 0: 0.97, 1: 0.98}


def _three_seed_records():
    records = [_record("baseline", s, b, f) for s, (b, f) in BASE.items()]
    records += [
        _record("kd", s, b, f, teacher_test_accuracy=KD_TEACHER[s])
        for s, (b, f) in KD.items()
    ]
    return records


def test_summary_final_accuracy_teacher_accuracy_and_paired_deltas_three_seeds():
    rows = study.summarize(_three_seed_records())
    base, kd = _row(rows, "baseline"), _row(rows, "kd")
    assert [r["method"] for r in rows] == ["baseline", "kd"]  # the paper's order
    assert base["seeds"] == kd["seeds"] == [0, 1, 2] and kd["n"] == 3
    # best: 90/92/94 -> 92 ± 2; 93/95/97 -> 95 ± 2 (sample std, ddof=1)
    assert base["best"] == pytest.approx(92.0) and base["best_std"] == pytest.approx(2)
    assert kd["best"] == pytest.approx(95.0) and kd["best_std"] == pytest.approx(2.0)
    # final: 80/84/88 -> 84 ± 4; 85/85/91 -> 87 ± sqrt(12) (ddof=0 would be 2.83)
    assert base["final"] == pytest.approx(84.0)
    assert base["final_std"] == pytest.approx(4.0)
    assert kd["final"] == pytest.approx(87.0)
    assert kd["final_std"] == pytest.approx(math.sqrt(12.0))
    # Paired by seed: best deltas 3, 3, 3 (no spread), final deltas 5, 1, 3.
    assert sorted(kd["delta_best_seeds"]) == pytest.approx([3.0, 3.0, 3.0])
    assert kd["delta_best"] == pytest.approx(3.0)
    assert kd["delta_best_std"] == pytest.approx(0.0, abs=1e-9)
    assert sorted(kd["delta_final_seeds"]) == pytest.approx([1.0, 3.0, 5.0])
    assert kd["delta_final"] == pytest.approx(3.0)
    assert kd["delta_final_std"] == pytest.approx(2.0)
    # The baseline is the reference: its own deltas are zero, every seed.
    assert base["delta_best"] == pytest.approx(0.0)
    assert base["delta_final_seeds"] == pytest.approx([0.0, 0.0, 0.0])
    # The teacher's accuracy: 97/98/99 -> 98 ± 1; none for the baseline.
    assert kd["teacher_accuracy"] == pytest.approx(98.0)
    assert kd["teacher_accuracy_std"] == pytest.approx(1.0)
    assert base["teacher_accuracy"] is None and base["teacher_accuracy_std"] is None
    # The mean curve over seeds, in %: epoch 1 is the best, epoch 2 the final.
    assert kd["curve"] == pytest.approx([95.0, 87.0])
    assert kd["train_seconds"] == pytest.approx(4.5) and kd["diverged"] == 0
    table = study.format_table(rows, "header")
    kd_line = next(line for line in table.splitlines() if line.startswith("KD "))
    assert "95.00 ± 2.00" in kd_line and "87.00 ± 3.46" in kd_line
    assert "+3.00 ± 0.00" in kd_line and "+3.00 ± 2.00" in kd_line


def test_summary_pairs_only_matching_seeds_and_epochs():
    records = _three_seed_records()
    # The baseline of seed 2 is missing: KD's seed 2 has no pair.
    records = [r for r in records if not (r["method"] == "baseline" and r["seed"] == 2)]
    # A 4-epoch KD run has no 4-epoch baseline: no delta at all.
    records.append(_record("kd", 0, 0.99, 0.99, epochs=4, teacher_test_accuracy=0.9))
    records[-1]["history"] = {"test_accuracy": [0.5, 0.99, 0.99, 0.99]}
    # Another student's run is paired with its own baseline only.
    records += [
        _record("baseline", 0, 0.50, 0.50, student="mlp"),
        _record("baseline", 1, 0.60, 0.60, student="mlp"),
        _record("tfkd_reg", 0, 0.55, 0.45, student="mlp"),
        _record("tfkd_reg", 1, 0.80, 0.75, student="mlp", diverged=True),
    ]
    rows = study.summarize(records)
    kd = next(r for r in rows if r["method"] == "kd" and r["epochs"] == 2)
    assert kd["n"] == 3
    assert sorted(kd["delta_best_seeds"]) == pytest.approx([3.0, 3.0])
    assert sorted(kd["delta_final_seeds"]) == pytest.approx([1.0, 5.0])
    assert kd["delta_final_std"] == pytest.approx(math.sqrt(8.0))
    # The delta of the means: 87 (3 seeds) - 82 (the 2 baseline seeds).
    assert kd["delta_final"] == pytest.approx(5.0)
    long_kd = next(r for r in rows if r["method"] == "kd" and r["epochs"] == 4)
    assert long_kd["n"] == 1 and long_kd["best"] == pytest.approx(99.0)
    assert long_kd["delta_best"] is None and long_kd["delta_best_seeds"] == []
    assert long_kd["delta_best_std"] is None
    assert long_kd["curve"] == pytest.approx([50.0, 99.0, 99.0, 99.0])
    reg = _row(rows, "tfkd_reg", "mlp")
    assert reg["best"] == pytest.approx(67.5) and reg["final"] == pytest.approx(60.0)
    assert sorted(reg["delta_best_seeds"]) == pytest.approx([5.0, 20.0])
    assert sorted(reg["delta_final_seeds"]) == pytest.approx([-5.0, 15.0])
    assert reg["delta_final"] == pytest.approx(5.0)
    assert reg["delta_final_std"] == pytest.approx(math.sqrt(200.0))
    assert reg["diverged"] == 1


# ================================================= 2. a run that diverges
def _tiny_experiment(method, epochs=3):
    return experiments.get(method).replace(
        student="mlp", dataset="digits", epochs=epochs, batch_size=32
    )


@pytest.mark.gradients
@pytest.mark.parametrize("method", ["baseline/resnet18", "tfkd_reg/resnet18"])
def test_a_nan_loss_ends_the_run_with_diverged_and_stopped_at(tmp_path, method):
    """Adam at 1e30: batch 1 is finite, its step sends the weights to ~1e30,
    so the loss of batch 2 of epoch 1 is NaN (inf - inf in the softmax)."""
    dataset = data.load("digits", limit=200)
    config = runs_lib.TrainConfig(optimizer="adam", learning_rate=1e30)
    store = runs_lib.ResultsStore(tmp_path / runs_lib.RESULTS_FILE)
    lines = []
    record = runs_lib.train(
        _tiny_experiment(method),
        dataset,
        seed=0,
        output_dir=tmp_path,
        config=config,
        store=store,
        log=lines.append,
    )
    assert record["diverged"] is True
    stop = record["stopped_at"]
    assert (stop["epoch"], stop["batch"]) == (1, 2)
    assert not math.isfinite(stop["loss"])
    assert record["epochs_completed"] < 3 and record["steps_per_epoch"] == 7
    assert any("loss became nan at epoch 1, batch 2" in line for line in lines)
    notes = runs_lib.explain_accuracy(record)
    assert notes[0].startswith("diverged at epoch 1 (batch 2, loss nan)")
    # The same fields reach results.json.
    (saved,) = json.loads((tmp_path / runs_lib.RESULTS_FILE).read_text())
    assert saved["key"] == record["key"] and saved["diverged"] is True
    assert (saved["stopped_at"]["epoch"], saved["stopped_at"]["batch"]) == (1, 2)
    rows = study.summarize([dict(saved, seed=0)])
    assert rows[0]["diverged"] == 1


def test_a_run_diverged_before_any_accuracy_is_not_called_near_chance():
    record = _record("baseline", 0, None, float("nan"), epochs=3)
    record.update(
        diverged=True,
        stopped_at={"epoch": 1, "batch": 2, "loss": float("nan")},
        epochs_completed=1,
        experiment="baseline/resnet18",
    )
    notes = runs_lib.explain_accuracy(record)
    assert notes[0].startswith("diverged at epoch 1 (batch 2, loss nan)")
    assert len(notes) == 1, notes


@pytest.mark.gradients
def test_a_finite_run_is_not_diverged(tmp_path):
    dataset = data.load("digits", limit=200)
    config = runs_lib.TrainConfig(optimizer="adam", learning_rate=1e-2)
    record = runs_lib.train(
        _tiny_experiment("tfkd_reg/resnet18", epochs=2),
        dataset,
        seed=0,
        output_dir=tmp_path,
        config=config,
        log=lambda m: None,
    )
    assert record["diverged"] is False and "stopped_at" not in record
    assert record["epochs_completed"] == 2
    assert all(math.isfinite(v) for v in record["history"]["loss"])
    assert 0.2 < record["best_test_accuracy"] <= 1.0


# ================================================== 3. config validation
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"optimizer": "sgd"}, "optimizer"),
        ({"optimizer": "Adam"}, "optimizer"),
        ({"learning_rate": 1e-3}, "learning_rate"),  # reference optimiser
        ({"optimizer": "adam", "learning_rate": 0}, "learning_rate"),
        ({"optimizer": "adam", "learning_rate": -1e-3}, "learning_rate"),
        ({"optimizer": "adam", "learning_rate": float("nan")}, "learning_rate"),
        ({"optimizer": "adam", "learning_rate": float("inf")}, "learning_rate"),
        ({"optimizer": "adam", "learning_rate": "1e-3"}, "learning_rate"),
        ({"optimizer": "adam", "lr_schedule": "linear"}, "lr_schedule"),
        ({"lr_schedule": "cosine"}, "lr_schedule"),  # reference optimiser
    ],
)
def test_train_config_rejects_each_bad_field_by_name(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`") as info:
        runs_lib.TrainConfig(**kwargs)
    assert f"{field}=" in str(info.value)  # ... and shows the value given


def test_train_config_valid_values_and_their_hyperparameters():
    assert runs_lib.TrainConfig().hyperparameters() == {"optimizer": "reference"}
    assert runs_lib.TrainConfig(optimizer="adam").hyperparameters() == {
        "optimizer": "adam",
        "learning_rate": 1e-3,
    }
    config = runs_lib.TrainConfig(
        optimizer="adam",
        learning_rate=0.01,
        lr_schedule="cosine",
        augment=False,
        drop_remainder=True,
    )
    assert config.hyperparameters() == {
        "optimizer": "adam",
        "learning_rate": 0.01,
        "lr_schedule": "cosine",
        "augment": False,
        "drop_remainder": True,
    }


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"methods": ()}, "methods"),
        ({"seeds": ()}, "seeds"),
        ({"seeds": (0, "1")}, "seeds"),
        ({"seeds": (0, 1.0)}, "seeds"),
        ({"seeds": (True,)}, "seeds"),
        ({"seeds": (1, 1)}, "seeds"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.0}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "64"}, "batch_size"),
        ({"dekd_teacher_epochs": 0}, "dekd_teacher_epochs"),
        ({"epochs": 3, "dekd_teacher_epochs": 3}, "dekd_teacher_epochs"),
        ({"epochs": 1, "dekd_teacher_fraction": 0.3}, "dekd_teacher_fraction"),
        ({"epochs": 1, "dekd_teacher_fraction": 1}, "dekd_teacher_fraction"),
        ({"student": "cnn_small", "teacher": "cnn_small"}, "student"),
    ],
)
def test_study_config_rejects_each_bad_field_by_name(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        study.StudyConfig(**kwargs)


def test_study_config_unknown_method_and_normalised_values():
    with pytest.raises(experiments.UnknownNameError, match="'nope'") as info:
        study.StudyConfig(methods=("baseline", "nope"))
    assert isinstance(info.value, ValueError)
    assert info.value.name == "nope" and "tfkd_reg" in info.value.valid
    # Lists become tuples; one-model methods need no distinct teacher.
    config = study.StudyConfig(
        seeds=[3, 1], methods=["baseline", "lsr"], student="mlp", teacher="mlp"
    )
    assert config.seeds == (3, 1) and config.methods == ("baseline", "lsr")
    train = config.train_config()
    assert (train.optimizer, train.lr_schedule, train.learning_rate) == (
        "adam",
        "cosine",
        1e-2,
    )
    assert train.drop_remainder is True


# ============================================= 4. the virtual teacher's logits
def _labels():
    return np.array([2, 0, 3, 3, 1], "int32")


@pytest.mark.parametrize("a", [0.9, 0.99, 1.0])
def test_virtual_teacher_log_probabilities_are_log_p_d(a):
    y, k = _labels(), 4
    p_d = ref.virtual_teacher(y, k, a)
    teacher = teachers.VirtualTeacher(k, correct_prob=a, logits="log_probabilities")
    logits = _np(teacher(None, labels=y))
    assert logits.dtype == np.float32 and logits.shape == (5, k)
    assert np.all(np.isfinite(logits))  # never -inf, even where p_d is 0
    if a < 1:
        np.testing.assert_allclose(logits, np.log(p_d), rtol=1e-6, atol=1e-6)
    else:  # log 0 is replaced by -1e4: exp(-1e4) underflows to exactly 0
        np.testing.assert_array_equal(logits, np.where(p_d > 0, 0.0, -1e4))
    np.testing.assert_allclose(ref.softmax(logits), p_d, rtol=1e-6, atol=1e-6)
    # One-hot and (N, 1) labels give the same logits as integer labels.
    for labels in (ref.one_hot(y, k).astype("float32"), y[:, None]):
        np.testing.assert_array_equal(_np(teacher(None, labels=labels)), logits)


@pytest.mark.parametrize("form", ["probabilities", "log_probabilities"])
def test_virtual_teacher_with_correct_prob_1(form):
    y, k = _labels(), 4
    teacher = teachers.VirtualTeacher(k, correct_prob=1, logits=form)
    assert teacher.distribution() == (1.0, 0.0)
    logits = _np(teacher(None, labels=y))
    if form == "probabilities":  # the reference: the logits are p_d itself
        np.testing.assert_array_equal(logits, ref.one_hot(y, k))
        want = ref.softmax(ref.one_hot(y, k) / 20.0)  # softened at T = 20
        soft = keras.activations.softmax(ops.convert_to_tensor(logits / 20.0))
        np.testing.assert_allclose(_np(soft), want, rtol=1e-6)
    else:
        np.testing.assert_array_equal(
            _np(keras.activations.softmax(ops.convert_to_tensor(logits))),
            ref.one_hot(y, k),
        )
    again = teachers.VirtualTeacher.from_config(teacher.get_config())
    assert (again.correct_prob, again.logits_form) == (1.0, form)
    np.testing.assert_array_equal(_np(again(None, labels=y)), logits)


@pytest.mark.gradients
def test_one_hot_log_probability_teacher_makes_kl_equal_to_ce():
    """KL(one_hot || p_s) = -log p_s[y]: with alpha = 1 the loss is the CE."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 4, 16).astype("int32")
    student = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    teacher = teachers.VirtualTeacher(4, correct_prob=1.0, logits="log_probabilities")
    distiller = Distiller(
        student=student,
        teacher=teacher,
        soft_loss=losses.SoftTargetKL(temperature=1.0),
        alpha=1.0,
    )
    z = distiller(x)
    got = float(_np(distiller.compute_loss(x, y, z)))
    # Within the 1e-3 that `kl_divergence_with_logits` promises: its value form
    # loses ~3e-4 relative to the -1e4 stand-in for log 0 (float32 ulp at 1e4).
    assert got == pytest.approx(ref.ce(_np(z), y), rel=1e-3)


# ================================================== 5. .keras round trips
def _linear(seed, k=K, d=6):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((d,)), keras.layers.Dense(k)], name=f"linear{seed}"
    )


def _xy(n=32, d=6, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.integers(0, K, n)


def _loss(model, x, y):
    return float(_np(model.compute_loss(x, y, model(x))))


@pytest.mark.gradients
def test_cached_teacher_distiller_survives_a_keras_round_trip(tmp_path):
    x, y = _xy()
    teacher_model = _linear(7)
    cached = teachers.CachedTeacher.from_model(teacher_model, x)
    distiller = Distiller(
        student=_linear(0),
        teacher=cached,
        soft_loss=losses.SoftTargetKL(temperature=4.0),
        alpha=0.6,
    )
    distiller.compile(optimizer="sgd")
    packed = cached.attach(x)
    distiller.fit(packed, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "cached.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, Distiller)
    assert isinstance(loaded.teacher, teachers.CachedTeacher)
    assert loaded.teacher.num_classes == K and loaded.alpha == pytest.approx(0.6)
    assert loaded.soft_losses[0].get_config() == distiller.soft_losses[0].get_config()
    want = distiller.predict(x, verbose=0)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-6)
    np.testing.assert_allclose(loaded.predict(packed, verbose=0), want, rtol=1e-6)
    # The same loss, from the logits fed with the batch; it is the NumPy KD.
    loaded.compile(optimizer="sgd")
    got = _loss(loaded, packed, y)
    assert got == pytest.approx(_loss(distiller, packed, y), rel=1e-6)
    z_s, z_t = _np(loaded(x)), cached.logits.astype("float64")
    kl = ref.kl_per_sample(ref.softmax(z_t / 4), ref.log_softmax(z_s / 4)).mean()
    assert got == pytest.approx(0.4 * ref.ce(z_s, y) + 0.6 * 16 * kl, rel=1e-5)


@pytest.mark.gradients
def test_uniform_teacher_distiller_survives_a_keras_round_trip(tmp_path):
    x, y = _xy()
    distiller = Distiller(
        student=_linear(0),
        teacher=teachers.UniformTeacher(K),
        soft_loss=losses.SoftTargetKL(temperature=2.0),
        alpha=0.3,
    )
    distiller.compile(optimizer="adam")
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "uniform.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.teacher, teachers.UniformTeacher)
    assert loaded.teacher.num_classes == K and loaded.alpha == pytest.approx(0.3)
    assert loaded.teacher_temperature == pytest.approx(2.0)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6
    )
    loaded.compile(optimizer="sgd")
    got = _loss(loaded, x, y)
    assert got == pytest.approx(_loss(distiller, x, y), rel=1e-6)
    z_s = _np(loaded(x))
    u = np.full((len(x), K), 1.0 / K)
    kl = ref.kl_per_sample(u, ref.log_softmax(z_s / 2)).mean()
    assert got == pytest.approx(0.7 * ref.ce(z_s, y) + 0.3 * 4 * kl, rel=1e-5)


# ============================================ 6. compile(loss=...) is the hard loss
class TwiceCrossEntropy(keras.losses.Loss):
    """2 x sparse CE on logits (a name TF accepts as a name scope)."""

    def call(self, y_true, y_pred):
        return 2.0 * keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=True
        )


@pytest.mark.gradients
def test_compile_loss_replaces_the_hard_loss():
    x, y = _xy()
    distiller = Distiller(student=_linear(0), teacher=_linear(7), alpha=0.0)
    distiller.compile(optimizer="sgd")
    z = _np(distiller(x))
    ce = ref.ce(z, y)
    assert _loss(distiller, x, y) == pytest.approx(ce, rel=1e-5)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=TwiceCrossEntropy(),
    )
    assert _loss(distiller, x, y) == pytest.approx(2 * ce, rel=1e-5)
    # fit minimises it too: train_on_batch logs the loss before its step.
    distiller.reset_metrics()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(2 * ce, rel=1e-5)
    assert logs["hard_loss"] == pytest.approx(2 * ce, rel=1e-5)
    # With alpha > 0 the soft term is added to (1 - alpha) * the new hard loss.
    distiller.alpha = 0.25
    z_s = _np(distiller(x))
    z_t = _np(distiller.teacher(x))
    kl = ref.kl_per_sample(ref.softmax(z_t), ref.log_softmax(z_s)).mean()
    want = 0.75 * 2 * ref.ce(z_s, y) + 0.25 * kl
    assert _loss(distiller, x, y) == pytest.approx(want, rel=1e-5)


@pytest.mark.gradients
def test_compile_loss_with_one_hot_labels_and_a_saved_hard_loss(tmp_path):
    x, y = _xy()
    distiller = Distiller(student=_linear(0), alpha=0.0)
    distiller.compile(
        optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    one_hot = ref.one_hot(y, K).astype("float32")
    z = _np(distiller(x))
    assert _loss(distiller, x, one_hot) == pytest.approx(ref.ce(z, y), rel=1e-5)
    smoothing = losses.LabelSmoothingCrossEntropy(0.2)
    distiller.compile(optimizer="sgd", loss=smoothing)
    assert _loss(distiller, x, y) == pytest.approx(ref.lsr(z, y, 0.2), rel=1e-5)
    distiller.save(tmp_path / "lsr.keras")
    loaded = keras.saving.load_model(tmp_path / "lsr.keras", safe_mode=True)
    assert isinstance(loaded.hard_loss, losses.LabelSmoothingCrossEntropy)
    loaded.compile(optimizer="sgd")  # no loss given: the saved hard loss stays
    assert _loss(loaded, x, y) == pytest.approx(ref.lsr(z, y, 0.2), rel=1e-5)


# ======================================== 7. `keras-tfkd run --lr-schedule ...`
def _main(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_cli_adam_learning_rate_follows_the_schedule(tmp_path, monkeypatch, schedule):
    made = []

    class RecordingAdam(keras.optimizers.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(keras.optimizers, "Adam", RecordingAdam)
    lr, epochs = 0.02, 2
    code, _ = _main(
        [
            "run",
            "--experiment",
            "baseline/resnet18",
            "--dataset",
            "digits",
            "--student",
            "mlp",
            "--epochs",
            str(epochs),
            "--limit",
            "200",
            "--batch-size",
            "32",
            "--optimizer",
            "adam",
            "--learning-rate",
            str(lr),
            "--lr-schedule",
            schedule,
            "--seed",
            "1",
            "--quiet",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    (record,) = json.loads((tmp_path / runs_lib.RESULTS_FILE).read_text())
    hp = record["hyperparameters"]
    assert (hp["optimizer"], hp["learning_rate"]) == ("adam", lr)
    assert hp.get("lr_schedule") == (None if schedule == "constant" else "cosine")
    steps = record["steps_per_epoch"]
    assert steps == 7  # ceil(200 / 32): the last batch is kept
    assert len(made) == 1, "the run did not build one keras.optimizers.Adam"
    (optimizer,) = made
    assert int(_np(optimizer.iterations)) == epochs * steps
    rate = optimizer._learning_rate  # a float/variable, or the schedule
    if schedule == "constant":
        assert not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule)
        assert float(_np(optimizer.learning_rate)) == pytest.approx(lr)
        return
    assert isinstance(rate, keras.optimizers.schedules.CosineDecay)
    assert rate.initial_learning_rate == pytest.approx(lr)
    assert rate.decay_steps == epochs * steps  # decays over the whole run
    for step, factor in ((0, 1.0), (steps, 0.5), (epochs * steps, 0.0)):
        value = float(_np(rate(step)))
        assert value == pytest.approx(lr * factor, abs=1e-7), step
    # After the run the optimizer sits at the end of its cosine: rate 0.
    assert float(_np(optimizer.learning_rate)) == pytest.approx(0.0, abs=1e-7)
