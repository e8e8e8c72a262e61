"""`keras_tfkd.compare` and ``keras-tfkd study`` on a user's own model and data.

The same protocol as the study (paired seeds, validation-selected epochs,
calibration, the claims table), resumable, with the model and data checked
before anything trains.
"""

import sys

import keras
import numpy as np
import pytest

import keras_tfkd
from keras_tfkd import cli, data, runs, study
from keras_tfkd.study.compare import model_name

# The protocol on a user's model and data (paired seeds, resume, the checks):
# one session; every method trains on every backend in its own tests.
pytestmark = pytest.mark.one_backend

BACKEND = keras.backend.backend()


def _toy(n=240, features=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + 2 * (x[:, 1] > 0).astype("int32")
    return x, y


def build_mlp(num_classes, input_shape):
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(num_classes),
        ]
    )


class TwoLayer(keras.Model):
    """A subclassed model with no get_config: loaded by building it again."""

    def __init__(self, k, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(k)

    def call(self, x):
        return self.out(self.hidden(x))


def build_subclassed(num_classes):
    return TwoLayer(num_classes)


def _quiet(lines):
    return lines.append


def test_compare_end_to_end_writes_the_study_outputs_and_resumes(tmp_path):
    x, y = _toy()
    lines = []
    kwargs = dict(
        train=(x[:180], y[:180]),
        test=(x[180:], y[180:]),
        methods=["baseline", "lsr", "tfkd_self"],
        seeds=[0, 1],
        epochs=2,
        batch_size=32,
        output_dir=tmp_path,
        log=_quiet(lines),
    )
    summary = keras_tfkd.compare(build_mlp, **kwargs)
    for name in ("results.json", "results.md", "results.png"):
        assert (tmp_path / name).stat().st_size > 0
    records = summary["records"]
    methods = sorted(r["method"] for r in records)
    assert methods == ["baseline"] * 2 + ["lsr"] * 2 + ["tfkd_self"] * 2
    name = model_name(build_mlp)
    for r in records:
        assert r["student"] == name and r["dataset"] == "arrays"
        hp = r["hyperparameters"]
        held = hp["validation_examples"]  # 10%, stratified: rounded per class
        assert 15 <= held <= 20 and hp["train_examples"] == 180 - held
        assert len(hp["data_fingerprint"]) == 16
        assert len(hp["student_fingerprint"]) == 16
        assert 0 <= r["selected_test_accuracy"] <= 1
        assert r["test_ece"] >= 0 and r["test_nll"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "Does it help?" in md
    assert "Tf-KD_self improves over the baseline" in md
    # How well the final baseline fits its own training split, recomputed.
    from keras_tfkd.metrics import accuracy
    from keras_tfkd.runs.teacher_cache import load_teacher

    held = data.holdout(data.from_arrays((x[:180], y[:180]), (x[180:], y[180:])), 0.1)
    base = [r for r in records if r["method"] == "baseline" and r["seed"] == 0][0]
    final = load_teacher(tmp_path / base["checkpoints"]["final"], held, model=name)
    train = data.pipeline(held, "train", 64, augment=False, shuffle=False)
    expected = accuracy(np.asarray(final.predict(train, verbose=0)), held.y_train)
    assert base["train_eval_accuracy"] == pytest.approx(expected, abs=1e-9)
    assert "Fit: Baseline" in md and "of its own training images" in md
    # Tf-KD_self's teacher is the student's own checkpoint: built again.
    self_runs = [r for r in records if r["method"] == "tfkd_self"]
    assert all(0 <= r["teacher_test_accuracy"] <= 1 for r in self_runs)

    # Rerun: every run is skipped, and the records are the same.
    lines.clear()
    again = keras_tfkd.compare(build_mlp, **kwargs)
    assert sum("skipped (already in results.json)" in s for s in lines) == 6
    assert [r["key"] for r in again["records"]] == [r["key"] for r in records]

    # One changed label: new keys (the data's fingerprint), nothing reused.
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 4
    lines.clear()
    changed = keras_tfkd.compare(
        build_mlp, **{**kwargs, "train": (x[:180], y2[:180]), "methods": ["baseline"]}
    )
    assert not any("skipped" in s for s in lines)
    assert {r["key"] for r in changed["records"]}.isdisjoint(r["key"] for r in records)


def _two_epochs(folder):
    """compare's settings for one seed of two epochs of batches of 40, quiet."""
    return dict(
        seeds=[0],
        epochs=2,
        batch_size=40,
        output_dir=folder,
        plot=False,
        log=_quiet([]),
    )


def test_compare_takes_a_validation_split_and_a_subclassed_model(tmp_path):
    x, y = _toy(200)
    summary = keras_tfkd.compare(
        build_subclassed,
        train=(x[:120], y[:120]),
        validation=(x[120:160], y[120:160]),
        test=(x[160:], y[160:]),
        methods=["baseline", "tfkd_self"],
        **_two_epochs(tmp_path),
    )
    for r in summary["records"]:
        hp = r["hyperparameters"]
        assert hp["validation_examples"] == 40 and hp["train_examples"] == 120
        assert len(r["history"]["val_accuracy"]) == 2
    teacher = [r for r in summary["records"] if r["method"] == "tfkd_self"][0]
    baseline = [r for r in summary["records"] if r["method"] == "baseline"][0]
    # The teacher loaded from the checkpoint is the baseline's best model.
    assert teacher["teacher_test_accuracy"] == pytest.approx(
        baseline["best_test_accuracy"]
    )


def build_wide(num_classes, input_shape):
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Dense(48, activation="relu"),
            keras.layers.Dense(num_classes),
        ]
    )


def test_compare_with_a_teacher_function_runs_the_teacher_methods(tmp_path):
    x, y = _toy(160)
    summary = keras_tfkd.compare(
        build_mlp,
        train=(x[:120], y[:120]),
        test=(x[120:], y[120:]),
        teacher=build_wide,
        methods=["baseline", "kd", "rekd", "dekd", "dkd"],
        **_two_epochs(tmp_path),
    )
    student, teacher = model_name(build_mlp), model_name(build_wide)
    by = {
        (r["method"], r["student"]): r
        for r in summary["records"]
        if r.get("role") != "teacher"  # not De-KD's early teacher
    }
    assert by[("kd", student)]["teacher"] == teacher
    assert by[("rekd", teacher)]["teacher"] == student  # the weak one teaches
    assert by[("dekd", student)]["teacher_checkpoint"].endswith("final.weights.h5")
    for method in ("kd", "dkd"):
        assert by[(method, student)]["teacher_test_accuracy"] == pytest.approx(
            by[("baseline", teacher)]["best_test_accuracy"]
        )
    assert (
        by[("baseline", teacher)]["hyperparameters"]["student_fingerprint"]
        != (by[("baseline", student)]["hyperparameters"]["student_fingerprint"])
    )


def build_images(num_classes, input_shape):
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(num_classes),
        ]
    )


def test_compare_takes_a_dataset_instead_of_arrays(tmp_path):
    digits = data.load("digits", limit=(200, 100))
    summary = keras_tfkd.compare(
        build_images,
        dataset=digits,
        methods=["baseline", "tfkd_reg"],
        seeds=[0],
        epochs=1,
        augment="shift",
        output_dir=tmp_path,
        plot=False,
        log=_quiet([]),
    )
    for r in summary["records"]:
        hp = r["hyperparameters"]
        assert r["dataset"] == "digits" and hp["augment"] == "shift"
        assert hp["train_examples"] + hp["validation_examples"] == 200
        assert "data_fingerprint" not in hp  # a named set: its name and sizes
    assert "augmentation shift" in (tmp_path / "results.md").read_text()


def test_compare_without_a_teacher_runs_the_teacher_free_methods():
    assert study.TEACHER_FREE_METHODS == (
        "baseline",
        "lsr",
        "tfkd_self",
        "tfkd_reg",
        "pskd",
        "cskd",
        "ols",
    )
    assert set(study.TEACHER_FREE_METHODS).isdisjoint(study.TEACHER_METHODS)


def _one_run(folder):
    """compare's arguments for one one-epoch baseline on 60 + 20 examples."""
    x, y = _toy(80)
    return dict(
        train=(x[:60], y[:60]),
        test=(x[60:], y[60:]),
        methods=["baseline"],
        seeds=[0],
        epochs=1,
        output_dir=folder,
        log=_quiet([]),
    )


def _softmax_model(num_classes, input_shape):
    return keras.Sequential(
        [keras.Input(input_shape), keras.layers.Dense(num_classes, "softmax")]
    )


def _three_classes():
    return keras.Sequential([keras.Input((12,)), keras.layers.Dense(3)])


def _wrong_input():
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])


def _needs_width(width):
    return build_mlp(4, (12,))


def _not_a_model():
    return "a model"


@pytest.mark.parametrize(
    "builder, error, words",
    [
        (_softmax_model, runs.ModelCheckError, "remove the final softmax"),
        (_three_classes, runs.ModelCheckError, "has K=4 classes"),
        (_wrong_input, runs.ModelCheckError, "cannot take the data's examples"),
        (_needs_width, TypeError, "needs argument(s) width"),
        (_not_a_model, runs.ModelCheckError, "returned str, not a keras.Model"),
    ],
)
def test_a_model_that_cannot_serve_is_refused_before_training(
    builder, error, words, tmp_path
):
    with pytest.raises(error) as info:
        keras_tfkd.compare(builder, **_one_run(tmp_path))
    assert words in str(info.value)
    assert not (tmp_path / "results.json").exists()  # nothing trained


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(test=None), TypeError, "test=(x, y)"),
        (dict(methods=["baseline", "kd"]), ValueError, "kd needs a teacher model"),
        (dict(train="x"), TypeError, "`train` must be a pair (x, y)"),
        (dict(dataset="digits"), TypeError, "not both"),
        (dict(seeds=[0, 0]), ValueError, "duplicates"),
    ],
)
def test_bad_compare_arguments_name_the_argument(kwargs, error, words, tmp_path):
    with pytest.raises(error) as info:
        keras_tfkd.compare(build_mlp, **{**_one_run(tmp_path), **kwargs})
    assert words in str(info.value)


def test_one_hot_labels_and_mismatched_splits_are_explained():
    x, y = _toy(40)
    with pytest.raises(ValueError, match=r"one-hot\? pass y.argmax\(axis=1\)"):
        data.from_arrays((x, np.eye(4)[y]), (x, y))
    with pytest.raises(ValueError, match="x has 40 examples but y has 39"):
        data.from_arrays((x, y[:-1]), (x, y))
    with pytest.raises(ValueError, match=r"`test`: examples of shape \(3,\)"):
        data.from_arrays((x, y), (x[:, :3], y))
    with pytest.raises(ValueError, match="class ids must be >= 0"):
        data.from_arrays((x, y - 1), (x, y))
    with pytest.raises(ValueError, match="NaN or infinite"):
        data.from_arrays((np.full_like(x, np.nan), y), (x, y))
    with pytest.raises(ValueError, match="transforms images"):
        data.pipeline(data.from_arrays((x, y), (x, y)), "train", 8, augment="cifar")


def test_arrays_reach_the_model_as_given():
    x, y = _toy(40)
    ds = data.from_arrays((x[:30], y[:30]), (x[30:], y[30:]))
    batch, labels = data.pipeline(ds, "train", 10, shuffle=False, engine="numpy")[0]
    np.testing.assert_allclose(batch, x[:10], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(labels, y[:10])
    assert ds.num_classes == 4 and ds.input_shape == (12,)
    # The fingerprint follows the arrays, not their identity.
    same = data.from_arrays((x[:30].copy(), y[:30].copy()), (x[30:], y[30:]))
    assert same.fingerprint == ds.fingerprint
    x2 = x.copy()
    x2[0, 0] += 1
    assert data.from_arrays((x2[:30], y[:30]), (x[30:], y[30:])).fingerprint != (
        ds.fingerprint
    )


def test_npz_files_load_and_say_what_is_missing(tmp_path):
    x, y = _toy(60)
    good = tmp_path / "mine.npz"
    np.savez(good, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    ds = data.load(str(good))
    assert ds.name == "mine" and ds.num_examples("train") == 40
    assert data.load(str(good), limit=(10, 5)).num_examples("test") == 5
    with_val = tmp_path / "val.npz"
    np.savez(with_val, x_train=x[:30], y_train=y[:30], x_test=x[40:], y_test=y[40:],
             x_val=x[30:40], y_val=y[30:40])  # fmt: skip
    assert data.load(str(with_val)).validation.num_examples("test") == 10
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=x, y_train=y)
    with pytest.raises(data.DatasetFormatError, match="missing x_test, y_test"):
        data.load(str(bad))
    with pytest.raises(data.DatasetNotFoundError, match="No data file"):
        data.load(str(tmp_path / "absent.npz"))


# ------------------------------------------------------------- command line
MODULE = """
import keras

def small(num_classes, input_shape):
    return keras.Sequential([keras.Input(input_shape),
                             keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(num_classes)])

def probabilities(num_classes, input_shape):
    return keras.Sequential([keras.Input(input_shape),
                             keras.layers.Dense(num_classes, activation="softmax")])
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with the user's module and .npz, as the current directory."""
    (tmp_path / "user_models_for_test.py").write_text(MODULE)
    x, y = _toy(120)
    np.savez(
        tmp_path / "mine.npz",
        x_train=x[:90],
        y_train=y[:90],
        x_test=x[90:],
        y_test=y[90:],
    )
    np.savez(tmp_path / "broken.npz", x_train=x, y_train=y)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("user_models_for_test", None)


def _study(argv, capsys):
    try:
        code = cli.main(["study", "--backend", BACKEND, *argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_study_command_on_your_module_and_npz(project, capsys):
    code, out, err = _study(
        [
            "--student",
            "user_models_for_test:small",
            "--dataset",
            "mine.npz",
            "--methods",
            "baseline",
            "tfkd_reg",
            "--seeds",
            "0,1",
            "--epochs",
            "1",
            "--output-dir",
            "out",
            "--no-plot",
        ],
        capsys,
    )
    assert code == 0, err
    records = runs.ResultsStore(project / "out" / "results.json").records
    assert {r["student"] for r in records} == {"user_models_for_test:small"}
    assert {r["dataset"] for r in records} == {"mine"}
    md = (project / "out" / "results.md").read_text()
    assert "Tf-KD_reg improves over the baseline" in md
    assert " <- " not in md.splitlines()[2]  # no teacher: none is named


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--student", "no_such_module_here:small"], "cannot import"),
        (["--student", "user_models_for_test:absent"], "has no function 'absent'"),
        (["--student", "user_models_for_test:probabilities"], "remove the final"),
        (["--student", "user_models_for_test:"], "write package.module:function"),
        (["--dataset", "broken.npz"], "missing x_test, y_test"),
        (["--dataset", "absent.npz"], "no such file"),
        (["--data-dir", "."], "drop --data-dir"),
        (["--methods", "baseline", "kd"], "kd needs a teacher model"),
        (["--teacher", "cnn_small", "--methods", "kd"], "It is the teacher of kd"),
    ],
)
def test_study_command_mistakes_are_one_or_two_lines(project, capsys, argv, words):
    defaults = {"--student": "user_models_for_test:small", "--dataset": "mine.npz"}
    for flag, value in defaults.items():
        if flag not in argv:
            argv = [*argv, flag, value]
    code, _, err = _study([*argv, "--output-dir", "out", "--epochs", "1"], capsys)
    assert code in (1, 2)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert err.startswith("keras-tfkd: error: ") and words in err, err


# ------------------------------------------------------------------ presets
def test_presets_name_studies_and_flags_win(monkeypatch, tmp_path, capsys):
    regime = study.StudyConfig.from_preset("fashion_mnist_regime")
    assert (regime.dataset, regime.student, regime.teacher) == (
        "fashion_mnist",
        "cnn5",
        "cnn_small",
    )
    assert regime.augment == "cifar" and regime.limit == (2000, 2000)
    assert study.StudyConfig.from_preset("digits") == study.StudyConfig(preset="digits")
    with pytest.raises(TypeError, match="no field 'epoch'"):
        study.StudyConfig.from_preset("digits", epoch=3)
    with pytest.raises(ValueError, match="valid presets: digits"):
        study.preset("nope")
    seen = {}
    monkeypatch.setattr(
        study,
        "run_study",
        lambda c, log=print, dataset=None: seen.update(c=c) or {"table": ""},
    )
    code, _, err = _study(
        ["--preset", "fashion_mnist_regime", "--epochs", "5", "--limit", "500,0",
         "--output-dir", str(tmp_path), "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    config = seen["c"]
    assert (config.preset, config.epochs, config.limit) == (
        "fashion_mnist_regime",
        5,
        (500, None),
    )
    assert config.augment == "cifar" and config.seeds == regime.seeds
    code, _, err = _study(["--preset", "nope"], capsys)
    assert code == 2 and "valid presets: digits" in err


def test_list_presets(capsys):
    assert cli.main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "fashion_mnist_regime", "fashion_mnist_full"):
        assert f"{name}: " in out


@pytest.mark.parametrize("bad", ["0", "1,2,3", "-5", "a,b"])
def test_limit_flag_is_n_or_train_test(bad, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["study", "--limit", bad])
    assert "must be N or TRAIN,TEST" in capsys.readouterr().err
