"""The language-modelling study: fortunes loader, causal LMs, preset, smoke study.

The loader and the smoke study read a few synthetic fortune files written to
a temporary folder (the format of Debian's ``fortunes`` package), so they run
without the package; one test reads the installed package when it is there.
"""

import contextlib
import io
import json

import keras
import numpy as np
import pytest

from keras_tfkd import models, presets, search_spaces, study
from keras_tfkd.cli import main
from keras_tfkd.data import DatasetNotFoundError, text
from keras_tfkd.study import lm, lm_config, lm_report, tune

WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls sing".split()


def _fortune(i):
    r = np.random.default_rng(i)
    return " ".join(r.choice(WORDS, size=int(r.integers(5, 30)))) + f" #{i}."


@pytest.fixture
def fortunes_dir(tmp_path):
    """Three fortune files of 40 fortunes each, one fortune in two files,
    plus an index (.dat) and a .u8 link that the loader must skip."""
    folder = tmp_path / "fortunes"
    folder.mkdir()
    for f in range(3):
        items = [_fortune(40 * f + i) for i in range(40)]
        if f == 2:
            items[0] = _fortune(0)  # a duplicate of the first file's first fortune
        (folder / f"file{f}").write_text("\n%\n".join(items) + "\n%\n")
    (folder / "file0.dat").write_bytes(b"\x00\x01binary index")
    (folder / "file0.u8").symlink_to(folder / "file0")
    return folder


# ------------------------------------------------------------------- loader
def test_fortunes_are_read_once_each_and_index_files_skipped(fortunes_dir):
    fortunes = text.read_fortunes(fortunes_dir)
    assert len(fortunes) == 119  # 120 fortunes, one of them twice
    assert len(set(fortunes)) == len(fortunes)
    assert fortunes[0] == _fortune(0).encode()
    assert not any(b"binary index" in f for f in fortunes)


def test_splits_are_disjoint_by_fortune_and_deterministic(fortunes_dir):
    a = text.load_fortunes(fortunes_dir, sequence_length=16)
    b = text.load_fortunes(fortunes_dir, sequence_length=16)
    for split in text.SPLITS:
        for u, v in zip(a.split(split), b.split(split)):
            np.testing.assert_array_equal(u, v)
    parts = text.split_fortunes(text.read_fortunes(fortunes_dir))
    sets = {k: set(v) for k, v in parts.items()}
    assert sets["train"].isdisjoint(sets["validation"])
    assert sets["train"].isdisjoint(sets["test"])
    assert sets["validation"].isdisjoint(sets["test"])
    assert sum(map(len, sets.values())) == 119
    assert (len(sets["validation"]), len(sets["test"])) == (12, 12)
    assert a.fortunes == {"train": 95, "validation": 12, "test": 12}


def test_windows_are_next_token_pairs_with_a_padding_mask(fortunes_dir):
    data = text.load_fortunes(fortunes_dir, sequence_length=16)
    x, y, w = data.split("train")
    assert x.shape == y.shape == w.shape and x.shape[1] == 16
    assert x.dtype == y.dtype == np.int32 and w.dtype == np.float32
    real = w > 0
    # inside a window, the label at l is the input at l + 1
    inner = real[:, :-1] & real[:, 1:]
    np.testing.assert_array_equal(y[:, :-1][inner], x[:, 1:][inner])
    assert np.all(y[~real] == text.PAD_ID) and np.all(x[~real] == text.PAD_ID)
    assert 0 < (~real).sum() < real.sum()  # some padding, mostly text
    assert np.all(y < text.VOCABULARY_SIZE) and np.all(x >= 0)
    first = x[0][real[0]]
    assert first[0] == text.BOS_ID
    # the text of the training split comes back from its windows
    assert data.num_tokens("train") == int(w.sum())
    assert text.decode(first[1:])[:5] in text.decode(
        b"".join(text.split_fortunes(text.read_fortunes(fortunes_dir))["train"])
    )


def test_limit_takes_the_first_windows_of_each_split(fortunes_dir):
    full = text.load_fortunes(fortunes_dir, sequence_length=16)
    small = text.load_fortunes(fortunes_dir, sequence_length=16, limit=(20, 5))
    assert [small.num_windows(s) for s in text.SPLITS] == [20, 5, 5]
    np.testing.assert_array_equal(small.split("train")[0], full.split("train")[0][:20])


def test_missing_fortune_files_name_the_debian_package(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install fortunes") as e:
        text.load_fortunes(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.dat").write_bytes(b"\x00")
    with pytest.raises(DatasetNotFoundError, match="fortunes"):
        text.read_fortunes(tmp_path / "empty")


@pytest.mark.skipif(
    not text._fortune_files(text.FORTUNES_DIR), reason="Debian's fortunes not installed"
)
def test_the_installed_package_splits_without_shared_text():
    parts = text.split_fortunes(text.read_fortunes())
    train = set(parts["train"])
    assert len(train) > 10_000
    assert train.isdisjoint(parts["validation"]) and train.isdisjoint(parts["test"])


# ------------------------------------------------------------------- models
@pytest.mark.parametrize("name", sorted(models.LANGUAGE_MODELS))
def test_language_models_map_token_ids_to_causal_logits(name):
    lm_model = models.get_model(name, text.VOCABULARY_SIZE, input_shape=(16,))
    assert lm_model.output_shape == (None, 16, text.VOCABULARY_SIZE)
    ids = np.random.default_rng(0).integers(0, 256, size=(2, 16)).astype("int32")
    changed = ids.copy()
    changed[:, 9] = (ids[:, 9] + 1) % 256
    z = np.asarray(lm_model.predict(np.concatenate([ids, changed]), verbose=0))
    before, after = z[:2], z[2:]
    # a later token changes no earlier logit, and does change its own
    np.testing.assert_allclose(before[:, :9], after[:, :9], rtol=1e-5, atol=1e-5)
    assert np.abs(before[:, 9:] - after[:, 9:]).max() > 1e-4


def test_language_models_check_their_input_shape():
    with pytest.raises(ValueError, match=r"input_shape.*\(sequence_length,\)"):
        models.get_model("lm_tiny", 258, input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="num_heads"):
        models.lm.causal_lm(10, 4, width=10, num_layers=1, num_heads=3)


def test_the_teacher_is_larger_than_the_student():
    tiny = models.get_model("lm_tiny", 258, input_shape=(64,))
    small = models.get_model("lm_small", 258, input_shape=(64,))
    assert models.count_parameters(small) > 3 * models.count_parameters(tiny)


# ------------------------------------------------------------------- preset
def test_the_preset_is_a_valid_language_modelling_study():
    config = study.StudyConfig.from_preset("fortunes_lm")
    assert lm_config.is_text_dataset(config.dataset)
    assert config.methods == lm_config.LM_METHODS
    assert set(lm_config.LM_HYPERPARAMETERS) == set(lm_config.LM_METHODS)
    assert {config.student, config.teacher} <= set(models.LANGUAGE_MODELS)
    assert config.seeds == (0, 1, 2) and config.validation_fraction > 0
    assert presets.preset("fortunes_lm").cost


def test_a_language_modelling_study_refuses_image_only_methods():
    with pytest.raises(ValueError, match="does not run method 'dkd'"):
        study.StudyConfig.from_preset("fortunes_lm", methods=("baseline", "dkd"))
    with pytest.raises(ValueError, match="need a teacher"):
        lm.run_lm_study(
            study.StudyConfig.from_preset(
                "fortunes_lm", teacher=None, methods=("baseline", "reverse_kl")
            )
        )


def test_token_metrics_are_the_masked_means():
    class Fixed:
        def __init__(self, z):
            self.z = z

        def predict(self, x, batch_size=None, verbose=0):
            return self.z[: len(x)]

    r = np.random.default_rng(0)
    z = r.normal(size=(3, 4, 5)).astype("float32")
    y = r.integers(0, 5, size=(3, 4))
    w = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], "float32")
    scores = lm.evaluate_tokens(Fixed(z), np.zeros((3, 4)), y, w)
    keep = w > 0
    log_p = z[keep] - np.log(np.exp(z[keep]).sum(-1, keepdims=True))
    nll = -log_p[np.arange(keep.sum()), y[keep]].mean()
    assert scores["nll"] == pytest.approx(nll, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(np.exp(nll), rel=1e-5)
    assert scores["accuracy"] == pytest.approx((z[keep].argmax(-1) == y[keep]).mean())
    from keras_tfkd import metrics

    ece = metrics.expected_calibration_error(z[keep], y[keep])
    assert scores["ece"] == pytest.approx(ece, rel=1e-5)


def _record(method, seed, ppl, acc, ece=0.05, role="student"):
    return {
        "key": f"{role}/{method}/{seed}",
        "role": role,
        "method": method,
        "student": "lm_small" if role == "teacher" else "lm_tiny",
        "teacher": None,
        "seed": seed,
        "selected_epoch": 2,
        "selected_test_perplexity": ppl,
        "selected_test_nll": float(np.log(ppl)),
        "selected_test_accuracy": acc,
        "selected_test_ece": ece,
    }


def test_the_report_pairs_each_method_with_the_baseline_of_its_seed():
    base = {0: 5.0, 1: 6.0, 2: 7.0}
    records = [_record("baseline", s, p, 0.40) for s, p in base.items()]
    # KD: 0.5, 0.7, 0.6 lower perplexity than the baseline of the same seed
    records += [
        _record("kd", s, base[s] - d, 0.41) for s, d in zip(base, (0.5, 0.7, 0.6))
    ]
    records += [_record("lsr", s, base[s] + 0.1 * (s - 1), 0.40) for s in base]
    records.append(_record("baseline", 0, 4.0, 0.45, role="teacher"))
    rows = {(r["role"], r["method"]): r for r in lm_report.summarize(records)}
    kd = rows[("student", "kd")]
    assert kd["n"] == 3
    assert kd["perplexity"][0] == pytest.approx(6.0 - 0.6)
    delta = kd["delta_perplexity"]
    assert delta["mean"] == pytest.approx(-0.6)
    assert delta["sd"] == pytest.approx(0.1)
    assert delta["high"] < 0 and kd["verdict_perplexity"] == "supported"
    assert kd["delta_accuracy"]["mean"] == pytest.approx(1.0)  # points
    lsr = rows[("student", "lsr")]
    assert lsr["verdict_perplexity"] == "inconclusive"
    assert rows[("teacher", "baseline")]["perplexity"] == (4.0, None)
    assert "delta_perplexity" not in rows[("student", "baseline")]
    table = lm_report.format_table(lm_report.summarize(records))
    assert "-0.600 [" in table


# ------------------------------------------------------------- smoke study
def _main(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def _small_study(fortunes_dir, out, *flags):
    """The preset's command on a few windows, one epoch, one seed."""
    return [
        "study",
        "--preset",
        "fortunes_lm",
        *flags,
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--limit",
        "64,32",
        "--batch-size",
        "32",
        "--data-dir",
        str(fortunes_dir),
        "--output-dir",
        str(out),
        "--backend",
        keras.backend.backend(),
    ]


@pytest.mark.one_backend  # the study's plumbing; the LM losses: test_sequences
def test_the_preset_runs_every_method_end_to_end(fortunes_dir, tmp_path):
    out = tmp_path / "study"
    argv = _small_study(fortunes_dir, out)
    code, output = _main(argv)
    assert code == 0, output
    records = json.loads((out / "results.json").read_text())
    students = {(r["method"], r["seed"]) for r in records if r["role"] == "student"}
    assert students == {(m, 0) for m in lm_config.LM_METHODS}
    teachers = [r for r in records if r["role"] == "teacher"]
    assert [(t["student"], t["seed"]) for t in teachers] == [("lm_small", 0)]
    for r in records:
        assert np.isfinite(r["selected_test_perplexity"]), r["key"]
        assert r["selected_test_perplexity"] == pytest.approx(
            np.exp(r["selected_test_nll"])
        )
        assert 0 <= r["selected_test_accuracy"] <= 1
        assert r["hyperparameters"]["sequence_length"] == 64
    kd = next(r for r in records if r["method"] == "kd")
    assert kd["teacher_key"] == teachers[0]["key"]
    markdown = (out / "results.md").read_text()
    assert "test perplexity" in markdown and "ECE" in markdown
    for label in lm_config.LM_METHOD_LABELS.values():
        assert label in markdown
    assert "Reverse KL" in output and "Δ ppl" in output
    # a rerun into the same folder trains nothing
    code, again = _main(argv)
    assert code == 0 and "..." not in again.replace("...]", "")
    assert again.count("skipped") == len(records)


@pytest.mark.one_backend  # the recipes check their values in Python
def test_the_search_spaces_hold_the_untuned_values_and_build():
    """Every LM method has a space; each grid holds its untuned value (the
    preset's learning rate for the baseline) and every point builds."""
    assert set(lm_config.LM_SEARCH_SPACES) == set(lm_config.LM_METHODS)
    rate = presets.preset("fortunes_lm").settings["learning_rate"]
    student = models.get_model("lm_tiny", 258, input_shape=(8,))
    teacher = models.get_model("lm_tiny", 258, input_shape=(8,))
    for method, space in lm_config.LM_SEARCH_SPACES.items():
        untuned = {**lm_config.LM_HYPERPARAMETERS[method], "learning_rate": rate}
        for field, values in space.items():
            assert untuned[field] in values, (method, field)
        for point in search_spaces.grid(method, lm_config.LM_SEARCH_SPACES):
            hp = lm._hyperparameters(_config(), method, _Data(), values=point)
            assert {k: hp[k] for k in point} == point
            # the recipe checks every value (a bad one raises)
            lm._build_distiller(method, student, teacher, 258, hp)


class _Data:
    name, vocabulary_size, sequence_length = "fortunes", 258, 8

    def num_windows(self, split):
        return 10


def _config(**kw):
    return study.StudyConfig.from_preset("fortunes_lm", **kw)


def _search(values, spaces_method="lsr"):
    """`tune.search_unit` over LSR's space with a perplexity per epsilon; the
    records hold test perplexities that would choose otherwise."""
    settings = tune.trial_values(
        spaces_method, {"epsilon": 0.1}, 4, 100, lm_config.LM_SEARCH_SPACES
    )

    def run_trial(point, label):
        ppl = values[point["epsilon"]]
        return _NoTestPeek(
            key=f"lsr/{point}",
            selected_val_perplexity=ppl,
            selected_test_perplexity=1 / ppl,
            selected_epoch=1,
        )

    return tune.search_unit(
        "lsr",
        "lsr",
        "lm_tiny",
        settings,
        run_trial,
        tune_seed=100,
        objective=tune.PERPLEXITY,
        log=lambda _: None,
    )


class _NoTestPeek(dict):
    def get(self, key, default=None):
        assert "test" not in key, f"the tuner read {key!r}"
        return super().get(key, default)


def test_lm_tuning_chooses_the_lowest_validation_perplexity_only():
    values = {0.02: 9.0, 0.05: 8.0, 0.1: 8.5, 0.2: 8.9}
    result = _search(values)
    assert result["values"] == {"epsilon": 0.05}
    assert [t["values"]["epsilon"] for t in result["trials"]][0] == 0.1
    assert all("val_perplexity" in t for t in result["trials"])


@pytest.mark.one_backend  # the study's plumbing; the LM losses: test_sequences
def test_a_tuned_lm_study_trains_every_run_at_the_baseline_s_rate(
    fortunes_dir, tmp_path
):
    out = tmp_path / "tuned"
    argv = _small_study(
        fortunes_dir, out, "--methods", "baseline", "tfkd_self", "kd", "--tune", "2"
    )
    code, output = _main(argv)
    assert code == 0, output
    records = json.loads((out / "results.json").read_text())
    trials = [r for r in records if "tuning_trial" in r]
    assert len(trials) == 6 and {r["seed"] for r in trials} == {100}
    runs = {
        r["method"]: r for r in records if r["seed"] == 0 and r["role"] == "student"
    }
    assert set(runs) == {"baseline", "tfkd_self", "kd"}
    chosen = runs["baseline"]["tuned"]["values"]["learning_rate"]
    assert {r["hyperparameters"]["learning_rate"] for r in runs.values()} == {chosen}
    assert {r["hyperparameters"]["learning_rate"] for r in trials[2:]} == {chosen}
    # Tf-KD_self learns from the tuned baseline of its seed, on the tuning
    # seed as on the study's
    assert runs["tfkd_self"]["teacher_key"] == runs["baseline"]["key"]
    by_key = {r["key"]: r for r in records}
    for r in trials:
        if r["method"] == "tfkd_self":
            teacher = by_key[r["teacher_key"]]
            assert teacher["seed"] == 100
            assert teacher["hyperparameters"]["learning_rate"] == chosen
    for method in ("tfkd_self", "kd"):
        mark = runs[method]["tuned"]
        got = {k: runs[method]["hyperparameters"][k] for k in mark["values"]}
        assert got == mark["values"]
    markdown = (out / "results.md").read_text()
    assert "## Tuning" in markdown and "Val. ppl." in markdown
    assert "validation perplexity" in markdown
    # an interrupted search resumes without repeating a finished trial
    code, again = _main(argv)
    assert code == 0 and "..." not in again.replace("...]", "")
