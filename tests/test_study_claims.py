"""The study's paired statistics: intervals, verdicts, the claims table, the plot.

Constructed records only (no training), so backend-independent and fast.
"""

import math

import numpy as np
import pytest
import scipy.stats

from keras_tfkd import study
from keras_tfkd.study import stats
from keras_tfkd.study.report import claims

# Backend-independent (reports and statistics on constructed records): one session.
pytestmark = pytest.mark.one_backend

SEEDS = (0, 1, 2)


# --------------------------------------------------------------- intervals
@pytest.mark.parametrize("confidence", [0.95, 0.9, 0.99])
@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_interval_matches_scipy(n, confidence):
    d = np.random.RandomState(n).normal(0.5, 1.3, size=n)
    r = stats.paired_interval(d, confidence)
    low, high = scipy.stats.t.interval(
        confidence, n - 1, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(n)
    )
    assert r["n"] == n and r["dropped"] == 0
    assert r["mean"] == pytest.approx(d.mean())
    assert r["sd"] == pytest.approx(d.std(ddof=1))
    assert (r["low"], r["high"]) == pytest.approx((low, high))
    assert r["improved"] == int((d > 0).sum())
    assert r["confidence"] == confidence


def test_interval_hand_computed():
    # 1, 3, 2: mean 2, sd 1, t_{0.975, 2} = 4.302653 -> 2 -+ 4.302653 / sqrt(3).
    r = stats.paired_interval([1.0, 3.0, 2.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert r["mean"] == pytest.approx(2.0) and r["sd"] == pytest.approx(1.0)
    assert r["low"] == pytest.approx(2 - half) == pytest.approx(-0.484138)
    assert r["high"] == pytest.approx(2 + half) == pytest.approx(4.484138)
    assert (r["n"], r["improved"]) == (3, 3)
    # -1, 1: mean 0, sd sqrt(2), t_{0.975, 1} = 12.7062 -> 0 -+ 12.7062.
    r = stats.paired_interval([-1.0, 1.0])
    assert (r["low"], r["high"]) == pytest.approx((-12.706205, 12.706205))
    assert r["improved"] == 1


def test_one_seed_and_none_have_no_interval():
    r = stats.paired_interval([0.7])
    assert (r["mean"], r["low"], r["high"], r["sd"]) == (0.7, None, None, None)
    assert (r["n"], r["improved"]) == (1, 1)
    assert stats.verdict(r) == stats.verdict(r, "comparable") == "inconclusive"
    r = stats.paired_interval([])
    assert (r["mean"], r["low"], r["n"], r["improved"]) == (None, None, 0, 0)
    assert stats.verdict(r) == "inconclusive"


def test_nan_and_none_are_dropped_and_counted():
    r = stats.paired_interval([1.0, float("nan"), 2.0, None, 3.0])
    clean = stats.paired_interval([1.0, 2.0, 3.0])
    assert (r["n"], r["dropped"], r["improved"]) == (3, 2, 3)
    assert (r["mean"], r["low"], r["high"]) == pytest.approx(
        (clean["mean"], clean["low"], clean["high"])
    )
    # NaN and one value: one difference left, no interval.
    r = stats.paired_interval([float("nan"), -0.5])
    assert (r["n"], r["dropped"], r["low"], r["improved"]) == (1, 1, None, 0)


def test_all_equal_differences_give_a_zero_width_interval():
    r = stats.paired_interval([0.5, 0.5, 0.5])
    assert r["sd"] == 0.0 and r["low"] == r["high"] == pytest.approx(0.5)
    assert stats.verdict(r) == "supported"
    zero = stats.paired_interval([0.0, 0.0, 0.0])
    assert zero["low"] == zero["high"] == 0.0 and zero["improved"] == 0
    assert stats.verdict(zero) == "inconclusive"  # 0 is in [0, 0]
    assert stats.verdict(zero, "comparable") == "supported"
    assert stats.verdict(stats.paired_interval([-2.0] * 3)) == "not supported"


def test_bad_arguments():
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_interval([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="claim"):
        stats.verdict(stats.paired_interval([1.0, 2.0]), "beats")
    with pytest.raises(ValueError, match="margin"):
        stats.verdict(stats.paired_interval([1.0, 2.0]), "comparable", margin=0)


# ---------------------------------------------------------------- verdicts
def _iv(low, high, n=3):
    return {"mean": (low + high) / 2, "low": low, "high": high, "n": n}


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.1, 2.0, "supported"),
        (-0.1, 2.0, "inconclusive"),
        (0.0, 2.0, "inconclusive"),  # the low end must be > 0
        (-2.0, -0.1, "not supported"),
        (-2.0, 0.0, "inconclusive"),
    ],
)
def test_verdict_improves(low, high, expected):
    assert stats.verdict(_iv(low, high)) == expected


@pytest.mark.parametrize(
    ("low", "high", "margin", "expected"),
    [
        (-0.5, 0.8, 1.0, "supported"),
        (-1.0, 1.0, 1.0, "supported"),  # the band's edges are in
        (-0.5, 1.2, 1.0, "inconclusive"),  # straddles +margin
        (-3.0, 3.0, 1.0, "inconclusive"),  # wider than the band
        (1.1, 3.0, 1.0, "not supported"),  # wholly above the band
        (-3.0, -1.1, 1.0, "not supported"),  # wholly below
        (-0.5, 1.2, 2.0, "supported"),  # a wider band
        (1.1, 3.0, 0.5, "not supported"),
    ],
)
def test_verdict_comparable(low, high, margin, expected):
    assert stats.verdict(_iv(low, high), "comparable", margin) == expected


def _flips_by_hand(d, claim="improves", margin=1.0):
    """Leave-one-out by hand: scipy's interval of each n - 1 subset."""
    out = []
    for i in range(len(d)):
        rest = np.delete(np.asarray(d, "float64"), i)
        low, high = scipy.stats.t.interval(
            0.95, len(rest) - 1, loc=rest.mean(), scale=scipy.stats.sem(rest)
        )
        out.append(
            stats.verdict({"n": len(rest), "low": low, "high": high}, claim, margin)
        )
    return out


@pytest.mark.parametrize(
    "d, claim",
    [
        ([1.0, 0.2, 0.3, 0.4, 0.2], "improves"),  # supported; a 0.2 out: not
        ([1.0, 1.2, 0.9, 1.1, 1.0], "improves"),  # every subset supports it
        ([-0.9, -0.6, -1.0, -0.4, -0.7, -0.8], "improves"),  # worse, stably
        ([0.3, -0.5, 0.8, 0.1], "improves"),  # inconclusive
        ([0.1, -0.2, 0.0, 0.2, 0.1], "comparable"),
        ([0.9, 0.4, 1.3, 0.6], "comparable"),  # straddles the band's edge
    ],
)
def test_stability_leaves_each_seed_out_and_finds_the_seeds_needed(d, claim):
    r = stats.stability(d, claim)
    assert r["verdict"] == stats.verdict(stats.paired_interval(d), claim)
    assert r["fragile"] == any(v != r["verdict"] for v in _flips_by_hand(d, claim))
    # seeds_needed is the first n where (t + sqrt 2) sd / sqrt n clears the edge.
    m, sd = np.mean(d), np.std(d, ddof=1)
    edge = abs(m) if claim == "improves" else abs(1.0 - abs(m))
    n = r["seeds_needed"]
    assert n is not None and n >= 2

    def clears(k):
        t = scipy.stats.t.ppf(0.975, k - 1)
        return (t + np.sqrt(2)) * sd / np.sqrt(k) < edge

    assert clears(n) and (n == 2 or not clears(n - 1))


def test_stability_marks_the_cases_it_cannot_judge():
    one = stats.stability([0.5])
    assert one == {
        **stats.paired_interval([0.5]),
        "verdict": "inconclusive",
        "fragile": None,
        "seeds_needed": None,
    }
    assert one["n"] == 1 and one["low"] is None
    # No effect at all: no number of seeds settles it.
    assert stats.stability([0.5, -0.5, 0.0])["seeds_needed"] is None
    # No spread: two seeds show it (and NaN seeds are left out as elsewhere).
    same = stats.stability([0.4, 0.4, float("nan"), 0.4])
    assert same["seeds_needed"] == 2 and same["fragile"] is False and same["n"] == 3
    # An inconclusive claim: a study of `seeds_needed` seeds with the same mean
    # and spread supports it, with its low end above one sd of a rerun's mean.
    d = [0.6, -0.4, 0.9, 0.2, -0.1]
    r = stats.stability(d)
    assert r["verdict"] == "inconclusive"
    n = r["seeds_needed"]
    z = np.linspace(-1.0, 1.0, n)
    z = (z - z.mean()) / z.std(ddof=1)
    wider = np.mean(d) + np.std(d, ddof=1) * z
    interval = stats.paired_interval(wider)
    assert stats.verdict(interval) == "supported"
    assert interval["low"] > np.sqrt(2) * np.std(d, ddof=1) / np.sqrt(n)


def test_verdict_needs_two_seeds_whatever_the_bounds():
    assert stats.verdict(_iv(1.0, 2.0, n=1)) == "inconclusive"
    assert stats.verdict(_iv(-0.1, 0.1, n=1), "comparable") == "inconclusive"


# ------------------------------------------------------------------ claims
def _record(method, student, teacher, seed, final, best=None, **extra):
    """A result record with the fields the report reads (as in
    tests/test_study_report.py)."""
    best = final if best is None else best
    role = extra.pop("role", None)
    record = {
        "key": f"{method}/{student}/{teacher}/seed{seed}/{role}",
        "method": method,
        "student": student,
        "teacher": teacher,
        "dataset": "digits",
        "num_classes": 10,
        "seed": seed,
        "epochs": 2,
        "experiment": study.STUDY_SOURCES.get(method, "baseline/mobilenet_v2"),
        "hyperparameters": {
            "batch_size": 64,
            "test_examples": 450,
            "train_examples": 1347,
            **extra.pop("hyperparameters", {}),
        },
        "best_test_accuracy": best,
        "test_accuracy": final,
        "best_epoch": 1,
        "history": {"test_accuracy": [best, final]},
        "kl_note": "batch-mean KL, multiplier 0.01; weight 3.8",
        "diverged": False,
    }
    if role:
        record["role"] = role
    record.update(extra)
    return record


#: Final test accuracies per seed; the per-seed differences in points:
#: rekd - baseline(cnn_small) +1, +1.5, +2 (supported); dekd - baseline -5 each
#: (not supported, sd 0); tfkd_self - baseline +1, -1, +0.5 (inconclusive);
#: tfkd_reg - kd +0.2, +0.1, -0.1 (comparable: supported), tfkd_reg - baseline
#: +3.2, +3.1, +2.9; pskd - tfkd_reg +1.8, +1.9, +2.1, pskd - baseline +5 each;
#: cskd - tfkd_reg -3 each, cskd - baseline +0.2, +0.1, -0.1 (inconclusive).
FINAL = {
    ("baseline", "cnn_tiny"): [0.90, 0.91, 0.92],
    ("baseline", "cnn_small"): [0.96, 0.96, 0.96],
    ("kd", "cnn_tiny"): [0.93, 0.94, 0.95],
    ("rekd", "cnn_small"): [0.97, 0.975, 0.98],
    ("dekd", "cnn_tiny"): [0.85, 0.86, 0.87],
    ("tfkd_self", "cnn_tiny"): [0.91, 0.90, 0.925],
    ("tfkd_reg", "cnn_tiny"): [0.932, 0.941, 0.949],
    ("pskd", "cnn_tiny"): [0.95, 0.96, 0.97],
    ("cskd", "cnn_tiny"): [0.902, 0.911, 0.919],
}
TEACHERS = {
    "kd": "cnn_small",
    "rekd": "cnn_tiny",
    "dekd": "cnn_small",
    "tfkd_self": "cnn_tiny",
}


def _records(seeds=SEEDS, skip=()):
    records = []
    for (method, student), values in FINAL.items():
        if (method, student) in skip:
            continue
        for i, seed in enumerate(seeds):
            best = values[i]
            if method == "tfkd_self":  # best: +2, +1, +1.5 (supported)
                best = FINAL[("baseline", "cnn_tiny")][i] + [0.02, 0.01, 0.015][i]
            extra = (
                {"hyperparameters": {"teacher_epochs": 1}} if method == "dekd" else {}
            )
            records.append(
                _record(
                    method,
                    student,
                    TEACHERS.get(method),
                    seed,
                    values[i],
                    best,
                    **extra,
                )
            )
    for seed in seeds:  # the De-KD teacher: a baseline run never paired with
        records.append(
            _record("baseline", "cnn_small", None, seed, 0.5, role="teacher")
        )
    return records


def _by_claim(items):
    return {c["claim"]: c for c in items}


EXPECTED = {
    "Re-KD improves the strong model": (
        "Re-KD vs Baseline (cnn_small)",
        1.5,
        "supported",
    ),
    "De-KD improves the student": (
        "De-KD vs Baseline (cnn_tiny)",
        -5.0,
        "not supported",
    ),
    "Tf-KD_self improves over the baseline": (
        "Tf-KD_self vs Baseline (cnn_tiny)",
        0.5 / 3,
        "inconclusive",
    ),
    "Tf-KD_reg improves over the baseline": (
        "Tf-KD_reg vs Baseline (cnn_tiny)",
        (3.2 + 3.1 + 2.9) / 3,
        "supported",
    ),
    "Tf-KD_reg is comparable to normal KD": (
        "Tf-KD_reg vs KD (cnn_tiny)",
        0.2 / 3,
        "supported",
    ),
    "PS-KD improves over Tf-KD_reg": (
        "PS-KD vs Tf-KD_reg (cnn_tiny)",
        5.8 / 3,
        "supported",
    ),
    "PS-KD improves over the baseline": (
        "PS-KD vs Baseline (cnn_tiny)",
        5.0,
        "supported",
    ),
    "CS-KD improves over Tf-KD_reg": (
        "CS-KD vs Tf-KD_reg (cnn_tiny)",
        -3.0,
        "not supported",
    ),
    "CS-KD improves over the baseline": (
        "CS-KD vs Baseline (cnn_tiny)",
        0.2 / 3,
        "inconclusive",
    ),
}


def test_claims_on_constructed_records_give_the_expected_verdicts():
    items = claims(_records())
    assert [c["claim"] for c in items] == list(EXPECTED)  # OLS, DKD: not run
    for claim in items:
        comparison, mean, verdict = EXPECTED[claim["claim"]]
        assert claim["comparison"] == comparison
        assert claim["mean"] == pytest.approx(mean, abs=1e-9), claim["claim"]
        assert claim["verdict"] == verdict, claim["claim"]
        assert claim["n"] == 3 and claim["field"] == "test_accuracy"
        assert claim["note"] is None
    by = _by_claim(items)
    rekd = by["Re-KD improves the strong model"]
    assert rekd["student"] == "cnn_small" and rekd["improved"] == 3
    assert rekd["differences"] == pytest.approx([1.0, 1.5, 2.0])
    low, high = scipy.stats.t.interval(0.95, 2, loc=1.5, scale=0.5 / math.sqrt(3))
    assert (rekd["low"], rekd["high"]) == pytest.approx((low, high))
    comparable = by["Tf-KD_reg is comparable to normal KD"]
    assert comparable["kind"] == "comparable" and comparable["margin"] == 1.0
    assert comparable["improved"] == 2
    # The same from the rows of `summarize`.
    from_rows = claims(study.summarize(_records()))
    assert [(c["claim"], c["verdict"], c["mean"]) for c in from_rows] == [
        (c["claim"], c["verdict"], c["mean"]) for c in items
    ]


def test_claims_on_another_field_is_one_argument():
    best = _by_claim(claims(_records(), "best_test_accuracy"))
    self_ = best["Tf-KD_self improves over the baseline"]
    assert self_["field"] == "best_test_accuracy"
    assert self_["differences"] == pytest.approx([2.0, 1.0, 1.5])
    assert self_["verdict"] == "supported"
    # A future field (say a validation-selected accuracy) needs no new code.
    records = _records()
    for r in records:
        r["selected_test_accuracy"] = r["test_accuracy"]
    selected = claims(records, "selected_test_accuracy")
    assert [c["verdict"] for c in selected] == [c["verdict"] for c in claims(records)]
    with pytest.raises(ValueError, match="no_such_accuracy"):
        claims(records, "no_such_accuracy")


def test_a_tighter_margin_makes_comparable_inconclusive():
    [c] = [
        c
        for c in claims(_records(), margin=0.2)
        if c["claim"] == "Tf-KD_reg is comparable to normal KD"
    ]
    assert c["margin"] == 0.2 and c["verdict"] == "inconclusive"


def test_rekd_without_the_strong_models_baseline_is_skipped_with_a_note():
    items = _by_claim(claims(_records(skip={("baseline", "cnn_small")})))
    rekd = items["Re-KD improves the strong model"]
    assert rekd["verdict"] == "skipped" and rekd["n"] == 0
    assert "no Baseline run of cnn_small" in rekd["note"]
    assert "strong model" in rekd["note"]
    assert items["De-KD improves the student"]["verdict"] == "not supported"


def test_claims_drop_nan_seeds_and_need_two():
    records = _records()
    for r in records:
        if r["method"] == "pskd" and r["seed"] == 1:
            r["test_accuracy"] = float("nan")
    pskd = _by_claim(claims(records))["PS-KD improves over the baseline"]
    assert (pskd["n"], pskd["dropped"]) == (2, 1)
    assert pskd["differences"][0] == pytest.approx(5.0)
    assert math.isnan(pskd["differences"][1])
    one = _by_claim(claims(_records(seeds=(0,))))
    assert {c["verdict"] for c in one.values()} == {"inconclusive"}
    assert all(c["n"] == 1 and c["low"] is None for c in one.values())


def test_no_records_no_claims():
    assert claims([]) == []
    base = [_record("baseline", "cnn_tiny", None, s, 0.9) for s in SEEDS]
    assert claims(base) == []


# ---------------------------------------------------------------- markdown
def _config(tmp_path, seeds=SEEDS):
    methods = (
        "baseline",
        "kd",
        "rekd",
        "dekd",
        "tfkd_self",
        "tfkd_reg",
        "pskd",
        "cskd",
    )
    return study.StudyConfig(
        output_dir=str(tmp_path), methods=methods, epochs=2, seeds=seeds
    )


def test_markdown_has_the_claims_section(tmp_path):
    rows = study.summarize(_records())
    markdown = study.format_markdown(rows, "header", _config(tmp_path))
    section = markdown.split("## Does it help? (paired over seeds)", 1)[1]
    assert markdown.index("| Baseline | cnn_small |") < markdown.index(
        "## Does it help?"
    )
    assert (
        "| claim | comparison | n | final: mean Δ [95% CI] | final: improved | "
        "final: verdict | final: leave-one-seed-out | final: seeds for a stable "
        "verdict | best: mean Δ [95% CI] | best: improved | best: verdict |"
    ) in section
    # Three seeds: leaving one out leaves two (t = 12.7), so a supported claim
    # is fragile; 4 seeds would clear 0 by one sd of a rerun's mean.
    assert (
        "| Re-KD improves the strong model | Re-KD vs Baseline (cnn_small) | 3 | "
        "+1.50 [+0.26, +2.74] | 3/3 | supported | **fragile** | 4 | "
        "+1.50 [+0.26, +2.74] | 3/3 | supported |"
    ) in section
    assert "| -5.00 [-5.00, -5.00] | 0/3 | not supported | holds | 2 |" in section
    assert "| De-KD improves the student | De-KD vs Baseline (cnn_tiny) | 3 | " in (
        section
    )
    line = next(x for x in section.splitlines() if "Tf-KD_self improves" in x)
    assert line.endswith(
        "| 2/3 | inconclusive | holds | 446 | +1.50 [+0.26, +2.74] | 3/3 | supported |"
    )
    assert "- leave-one-seed-out (of the final verdict): *fragile* when" in section
    assert "- Rule: *improves* is supported if the interval's low end is > 0" in section
    assert "within -1.00 .. +1.00 points" in section
    assert "n = 1" not in markdown
    assert markdown.rstrip().endswith("![results](results.png)")


def test_markdown_claims_with_one_seed_and_a_skipped_claim(tmp_path):
    rows = study.summarize(_records(seeds=(0,)))
    markdown = study.format_markdown(rows, "header", _config(tmp_path, (0,)))
    assert "## Does it help? (paired over seeds)" in markdown
    assert "±" not in markdown  # one seed: no spread anywhere
    assert "+1.00 (no interval) | 1/1 | inconclusive |  |  |" in markdown
    rows = study.summarize(_records(skip={("baseline", "cnn_small")}))
    markdown = study.format_markdown(rows, "header", _config(tmp_path))
    assert (
        "| Re-KD improves the strong model | Re-KD vs Baseline (cnn_small) | 0 |  |"
        "  | skipped: no Baseline run of cnn_small (the strong model, which Re-KD "
        "trains as the student) |  |  |"
    ) in markdown


# -------------------------------------------------------------------- plot
@pytest.mark.parametrize("seeds", [SEEDS, (0,)])
def test_plot_has_an_interval_panel(tmp_path, seeds):
    rows = study.summarize(_records(seeds=seeds))
    if len(seeds) > 1:  # one PNG is enough (the writing is the slow part)
        path = study.plot(rows, tmp_path / "results.png", title="title")
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000

    fig = study.figure._figure(rows, "title")
    absolute, delta, curves, intervals = fig.axes[:4]
    assert any(list(line.get_xdata()) == [0, 0] for line in intervals.get_lines())
    labels = [t.get_text() for t in intervals.get_yticklabels()]
    assert "Re-KD cnn_small <- cnn_tiny" in labels
    assert not any(label.startswith("Baseline") for label in labels)
    assert "points" in intervals.get_xlabel()
    bars = [c for c in intervals.containers if hasattr(c, "has_xerr")]
    assert len(bars) == 2 * len(labels)  # final and best per method
    assert [c.has_xerr for c in bars] == [len(seeds) > 1] * len(bars)
    # The 95% interval of Re-KD's final accuracy, as drawn.
    rekd = bars[labels.index("Re-KD cnn_small <- cnn_tiny") * 2]
    if len(seeds) > 1:
        x0, x1 = rekd.lines[2][0].get_segments()[0][:, 0]
        assert (x0, x1) == pytest.approx((0.2578, 2.7422), abs=1e-3)
    title = intervals.get_title()
    assert ("95% Student t interval" in title) == (len(seeds) > 1)


def test_markdown_has_the_calibration_table(tmp_path):
    """Final-epoch ECE/NLL/Brier per row and the paired ECE difference."""
    records = _records()
    ece = {"baseline": [0.10, 0.12, 0.11], "tfkd_reg": [0.06, 0.07, 0.08]}
    for r in records:
        if r["student"] == "cnn_tiny" and r["method"] in ece:
            i = SEEDS.index(r["seed"])
            r.update(test_ece=ece[r["method"]][i], test_nll=0.5, test_brier=0.25)
    rows = study.summarize(records)
    markdown = study.format_markdown(rows, "header", _config(tmp_path))
    section = markdown.split("## Calibration (test set, after the last epoch)", 1)[1]
    diffs = [-4.0, -5.0, -3.0]
    mean = np.mean(diffs)
    half = scipy.stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / np.sqrt(3)
    assert "| Baseline | cnn_tiny | 11.00 ± 1.00 | 0.500 ± 0.000 |" in section
    assert (
        f"| Tf-KD_reg | cnn_tiny | 7.00 ± 1.00 | 0.500 ± 0.000 | 0.2500 ± 0.0000 | "
        f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] | 3/3 |"
    ) in section
    # Runs without calibration fields (older results.json) show a dash.
    assert "| KD | cnn_tiny | - | - | - | - | - |" in section
    # No calibration anywhere: no section.
    plain = study.format_markdown(
        study.summarize(_records()), "header", _config(tmp_path)
    )
    assert "## Calibration" not in plain
