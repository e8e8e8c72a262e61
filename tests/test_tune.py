"""Tuning inside the protocol: search spaces, the choice on validation, resume.

``compare(..., tune=N)`` / ``keras-tfkd study --tune N`` try N settings of
each method's space (`keras_tfkd.search_spaces`) on a tuning seed, choose by
validation accuracy only, and run the choice on every seed.
"""

import json
import sys

import keras
import numpy as np
import pytest
from test_compare import _study, _toy, build_mlp  # the same data, model, command

import keras_tfkd
from keras_tfkd import experiments, runs, search_spaces
from keras_tfkd.study import tune
from keras_tfkd.study.config import StudyConfig, _study_experiment, plan

# Backend-independent (the tuning protocol; the recipes it builds train on every
# backend in their own tests): one session.
pytestmark = pytest.mark.one_backend


def _dense(k=3, features=6, name=None):
    return keras.Sequential(
        [keras.Input((features,)), keras.layers.Dense(k)], name=name
    )


# ------------------------------------------------------------ the spaces
def test_every_method_has_a_space_in_the_names_the_user_sees():
    assert set(search_spaces.SEARCH_SPACES) == set(experiments.METHODS)
    user_names = set(experiments.RUN_FIELDS) | set(search_spaces.TRAIN_FIELDS)
    for method, fields in search_spaces.SEARCH_SPACES.items():
        assert 1 <= len(fields) <= 2, method
        assert set(fields) <= user_names, (method, fields)
        for values in fields.values():
            assert len(values) >= 2 and len(set(values)) == len(values), method


@pytest.mark.parametrize("method", experiments.METHODS)
def test_every_value_of_a_space_is_accepted_by_the_methods_recipe(method):
    config = StudyConfig()
    exp = _study_experiment(config, method)
    train_config = config.train_config()
    default = tune.default_values(exp, train_config)
    if method != "baseline":  # the untuned setting is a point of the grid
        assert default in search_spaces.grid(method), (method, default)
    for field, values in search_spaces.space(method).items():
        for value in values:
            t_exp, t_config = tune.apply(exp, train_config, {field: value})
            if field in search_spaces.TRAIN_FIELDS:
                assert getattr(t_config, field) == value
                keras.optimizers.Adam(t_config.learning_rate)
                continue
            assert getattr(t_exp, field) == value
            teacher = _dense(name="t") if t_exp.teacher_source else None
            distiller = t_exp.build(_dense(), teacher, num_examples=32)
            assert isinstance(distiller, keras_tfkd.Distiller)


def test_trials_start_untuned_and_the_same_seed_draws_the_same_ones():
    default = {"nckd_weight": 8.0, "warmup_fraction": 0.0833}
    first = tune.trial_values("dkd", default, 5, seed=100)
    assert first == tune.trial_values("dkd", default, 5, seed=100)
    assert first[0] == default and len(first) == 5
    grid = search_spaces.grid("dkd")
    assert all(p in grid for p in first)
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 5
    assert first != tune.trial_values("dkd", default, 5, seed=101)
    # More trials than the grid holds: each point once.
    assert len(tune.trial_values("ols", {"alpha": 0.5}, 10, seed=0)) == 3
    assert tune.trial_values("ols", {"alpha": 0.5}, 1, seed=0) == [{"alpha": 0.5}]


def test_choose_keeps_the_earliest_of_ties_and_never_a_diverged_trial():
    trials = [
        {"val_accuracy": 0.5},
        {"val_accuracy": 0.7},
        {"val_accuracy": 0.7},
        {"val_accuracy": 0.9, "diverged": True},
        {"val_accuracy": float("nan")},
        {"val_accuracy": None},
    ]
    assert tune.choose(trials) == 1
    assert tune.choose([{"val_accuracy": None, "diverged": True}]) == 0


class _NoTestPeek(dict):
    """A run's record that fails the test if the tuner reads a test metric."""

    def _check(self, key):
        assert "test" not in str(key), f"the tuner read {key!r}"

    def __getitem__(self, key):
        self._check(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._check(key)
        return super().get(key, default)


def test_the_choice_reads_validation_only(tmp_path):
    config = StudyConfig(
        methods=("baseline", "lsr"), tune=4, seeds=(0,), output_dir=str(tmp_path)
    )
    jobs = plan(config)
    # Validation and test disagree: the test split would choose otherwise.
    val = {0.003: 0.9, 0.01: 0.6, 0.001: 0.5, 0.03: 0.4, 0.05: 0.5, 0.1: 0.6}
    val.update({0.2: 0.95, 0.3: 0.3})
    calls = []

    def run_one(exp, seed, train_config, label):
        assert seed == config.tune_seed
        knob = exp.epsilon if exp.method == "lsr" else train_config.learning_rate
        calls.append((exp.method, knob))
        return _NoTestPeek(
            key=f"{exp.method}/{knob}",
            selected_val_accuracy=val[knob],
            selected_epoch=1,
            selected_test_accuracy=1.0 - val[knob],
            test_accuracy=1.0 - val[knob],
            diverged=False,
        )

    result = tune.search(
        config,
        jobs,
        run_one=run_one,
        train_config=config.train_config(),
        log=lambda line: None,
    )
    chosen = {r["method"]: r["values"] for r in result.values()}
    tried = {m: [k for mm, k in calls if mm == m] for m in ("baseline", "lsr")}
    for method, field in (("baseline", "learning_rate"), ("lsr", "epsilon")):
        best = max(tried[method], key=val.get)
        assert chosen[method] == {field: best}
        assert best != min(tried[method], key=val.get)  # test would differ
    assert tried["baseline"][0] == 0.01 and tried["lsr"][0] == 0.1  # untuned first
    assert len(calls) == 8


def test_the_baseline_is_tuned_first_and_its_rate_is_every_later_run_s(tmp_path):
    """A method and the baseline of a seed differ only in the method: the
    learning rate the baseline chose is every other trial's and run's."""
    config = StudyConfig(
        methods=("lsr", "baseline"), tune=3, seeds=(0, 1), output_dir=str(tmp_path)
    )
    jobs = plan(config)
    rates = {0.01: 0.5, 0.03: 0.9, 0.003: 0.4, 0.001: 0.3}
    seen = []

    def run_one(exp, seed, train_config, label):
        seen.append((exp.method, train_config.learning_rate))
        score = rates[train_config.learning_rate] if exp.method == "baseline" else 0.5
        return {"key": f"{exp.method}/{label}", tune.SCORE: score, "selected_epoch": 1}

    train_config = config.train_config()
    result = tune.search(
        config, jobs, run_one=run_one, train_config=train_config, log=lambda _: None
    )
    assert [m for m, _ in seen] == ["baseline"] * 3 + ["lsr"] * 3
    chosen = max((r for m, r in seen if m == "baseline"), key=rates.get)
    assert chosen != train_config.learning_rate  # the case tests something
    assert {r for m, r in seen if m == "lsr"} == {chosen}
    jobs_at = tune.tuned_jobs(jobs, result, train_config)
    assert {c.learning_rate for _, _, c, _ in jobs_at} == {chosen}
    assert len(jobs_at) == len(jobs)


def test_the_settings_line_states_the_rate_the_runs_trained_at():
    from keras_tfkd.data import from_arrays
    from keras_tfkd.study.report import _header

    x, y = _toy()
    dataset = from_arrays((x, y), (x, y))
    config = StudyConfig(learning_rate=0.01)
    assert "Adam lr 0.01 (cosine)" in _header(config, dataset)
    assert "Adam lr 0.01 (cosine)" in _header(config, dataset, 0.01)
    tuned = _header(config, dataset, 0.03)
    assert "Adam lr 0.03 (the tuned baseline's; untuned 0.01)" in tuned


def test_the_perplexity_objective_chooses_the_lowest():
    trials = [
        {"val_perplexity": 9.0},
        {"val_perplexity": 7.5},
        {"val_perplexity": 7.5},
        {"val_perplexity": 3.0, "diverged": True},
        {"val_perplexity": float("nan")},
    ]
    assert tune.choose(trials, tune.PERPLEXITY) == 1
    assert tune.choose(trials, tune.ACCURACY) == 0  # reads val_accuracy: none
    assert tune.PERPLEXITY.text(7.5) == "7.500"
    assert tune.ACCURACY.text(0.975) == "97.50%"
    assert tune.ACCURACY.text(None, diverged=True) == "diverged"


# ------------------------------------------------------------ real runs


def _compare(folder):
    x, y = _toy()
    return keras_tfkd.compare(
        build_mlp,
        train=(x[:180], y[:180]),
        test=(x[180:], y[180:]),
        methods=["baseline", "lsr"],
        seeds=[0],
        epochs=1,
        batch_size=32,
        tune=2,
        output_dir=folder,
        plot=False,
        log=lambda line: None,
    )


class _Stop(Exception):
    pass


def test_an_interrupted_search_resumes_without_repeating_trials(tmp_path, monkeypatch):
    execute = runs.execute
    trained = []

    def counting(plan, dataset, store=None, **kwargs):
        if store.get(plan.key) is None:
            if len(trained) == stop_after[0]:
                raise _Stop
            trained.append(plan.key)
        return execute(plan, dataset, store=store, **kwargs)

    monkeypatch.setattr(runs, "execute", counting)
    stop_after = [3]  # 2 x 2 trials: interrupted before LSR's second
    with pytest.raises(_Stop):
        _compare(tmp_path / "a")
    first = list(trained)
    stop_after[0] = 99
    resumed = _compare(tmp_path / "a")
    again = trained[len(first) :]
    assert len(first) == 3 and not set(first) & set(again)
    # 4 trials on the tuning seed (100) + 2 runs on seed 0, each trained once.
    assert len(first) + len(again) == 4 + 2
    # The same seeds give the same choices in a fresh folder.
    fresh = _compare(tmp_path / "b")
    pick = {
        u: (r["values"], [t["val_accuracy"] for t in r["trials"]])
        for u, r in resumed["tuning"].items()
    }
    assert pick == {
        u: (r["values"], [t["val_accuracy"] for t in r["trials"]])
        for u, r in fresh["tuning"].items()
    }
    # Where it is written: the trials and the choice in results.json and .md.
    records = runs.ResultsStore(tmp_path / "a" / "results.json").records
    marks = [r["tuning_trial"] for r in records if "tuning_trial" in r]
    assert len(marks) == 4
    tuned = [r for r in records if "tuned" in r and r["seed"] == 0]
    assert {r["method"] for r in tuned} == {"baseline", "lsr"}
    assert all(len(r["tuned"]["trials"]) == 2 for r in tuned)
    assert [r["seed"] for r in resumed["records"]] == [0, 0]
    md = (tmp_path / "a" / "results.md").read_text()
    assert "## Tuning" in md and "no test metric was read" in md
    assert "| LSR " in md and "epsilon=" in md


def test_tuning_needs_a_validation_split(tmp_path):
    x, y = _toy()
    out = tmp_path / "never_written"
    with pytest.raises(tune.NoValidationError, match="validation split"):
        keras_tfkd.compare(
            build_mlp,
            train=(x[:180], y[:180]),
            test=(x[180:], y[180:]),
            methods=["baseline"],
            validation_fraction=0,
            tune=2,
            output_dir=out,
            log=lambda line: None,
        )
    assert not out.exists()  # refused before any folder was made


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_study_config_refuses_a_bad_tune(bad):
    with pytest.raises(ValueError, match="`tune` must be an integer >= 0"):
        StudyConfig(tune=bad)


# ------------------------------------------------------------ the command
@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "tune_models_for_test.py").write_text(
        "import keras\n\n"
        "def small(num_classes, input_shape):\n"
        "    return keras.Sequential([keras.Input(input_shape),\n"
        "                             keras.layers.Dense(num_classes)])\n"
    )
    x, y = _toy(120)
    np.savez(
        tmp_path / "mine.npz",
        x_train=x[:90],
        y_train=y[:90],
        x_test=x[90:],
        y_test=y[90:],
    )
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("tune_models_for_test", None)


_BASE = [
    "--student",
    "tune_models_for_test:small",
    "--dataset",
    "mine.npz",
    "--epochs",
    "1",
    "--output-dir",
    "out",
    "--no-plot",
]


def test_study_command_tunes_and_writes_the_choice(project, capsys):
    argv = [
        *_BASE,
        "--methods",
        "baseline",
        "lsr",
        "--seeds",
        "0",
        "--tune",
        "2",
        "--tune-seed",
        "7",
        "--quiet",
    ]
    code, _, err = _study(argv, capsys)
    assert code == 0, err
    records = runs.ResultsStore(project / "out" / "results.json").records
    seeds = {r["seed"] for r in records if "tuning_trial" in r}
    assert seeds == {7}
    assert "## Tuning" in (project / "out" / "results.md").read_text()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--tune", "-1"], "--tune: must be an integer >= 0, got '-1'"),
        (["--tune", "two"], "--tune: must be an integer >= 0, got 'two'"),
        (["--tune-seed", "x"], "--tune-seed: must be an integer >= 0"),
        (["--tune", "2", "--validation-fraction", "0"], "validation split"),
    ],
)
def test_study_command_tune_mistakes_are_one_or_two_lines(project, capsys, argv, words):
    code, _, err = _study([*_BASE, *argv], capsys)
    assert code in (1, 2)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert words in err, err


def test_the_rows_pair_with_the_tuned_baseline_not_its_untuned_teacher_twin():
    """Tf-KD_self's teacher is the untuned baseline of the same student and
    seed; with tuning only the tuned baseline is the baseline row."""
    from test_study_claims import _record

    from keras_tfkd.study import summarize

    tuned = {"values": {"learning_rate": 0.03}, "trial": 2, "tune_seed": 100}
    records = []
    for seed in (0, 1, 2):
        records.append(_record("baseline", "cnn_tiny", None, seed, 0.9, tuned=tuned))
        records.append(_record("baseline", "cnn_tiny", None, seed, 0.5, role="untuned"))
        records.append(_record("tfkd_self", "cnn_tiny", "cnn_tiny", seed, 0.95))
    for r in records:
        r.pop("role", None)  # the untuned twin is a plain run, as in a study
    rows = {r["method"]: r for r in summarize(tune.reported(records))}
    assert rows["baseline"]["n"] == 3
    assert rows["baseline"]["final"] == pytest.approx(90.0)
    assert rows["tfkd_self"]["delta_final"] == pytest.approx(5.0)
    # Without the filter both baselines are one row of six (the defect).
    assert {r["method"]: r for r in summarize(records)}["baseline"]["n"] == 6
