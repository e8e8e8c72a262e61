"""The validation split of a study: `data.holdout` and the epoch it selects."""

import numpy as np
import pytest

from keras_tfkd import data
from keras_tfkd.cli import main
from keras_tfkd.runs.loop import _selected

# Backend-independent (the split and the epoch it selects; training is covered
# on every backend elsewhere): one session.
pytestmark = pytest.mark.one_backend


def test_holdout_is_stratified_seeded_and_disjoint():
    full = data.load("digits")
    ds = data.holdout(full, 0.1, seed=0)
    held, kept = ds.validation, ds
    n = full.num_examples("train")
    assert kept.num_examples("train") + held.num_examples("test") == n
    assert held.num_examples("test") == 136  # round(0.1 * n_c) in each class
    # Per class, the held-out share is the fraction (stratified).
    counts = np.bincount(held.labels("test"), minlength=10)
    totals = np.bincount(full.labels("train"), minlength=10)
    np.testing.assert_array_equal(counts, np.round(0.1 * totals).astype(int))
    # Disjoint, and together the original training split (as multisets of rows).
    rows = {tuple(x.ravel()) for x in held.images("test")}
    assert not rows & {tuple(x.ravel()) for x in kept.images("train")}
    # The test split and the statistics are untouched; the same seed, the same
    # split; another seed, another.
    np.testing.assert_array_equal(kept.images("test"), full.images("test"))
    assert (kept.mean, kept.std) == (full.mean, full.std)
    again = data.holdout(full, 0.1, seed=0).validation
    np.testing.assert_array_equal(again.images("test"), held.images("test"))
    other = data.holdout(full, 0.1, seed=1).validation
    assert not np.array_equal(other.images("test"), held.images("test"))


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_holdout_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match="fraction"):
        data.holdout(data.load("digits"), fraction)
    with pytest.raises(TypeError, match="fraction"):
        data.holdout(data.load("digits"), "0.1")


def test_selected_epoch_is_the_last_best_validation_epoch():
    history = {
        "val_accuracy": [0.5, 0.8, 0.8, float("nan")],
        "test_accuracy": [0.4, 0.7, 0.9, 0.95],
        "test_ece": [0.3, 0.2, 0.1, 0.05],
    }
    out = _selected(history, 4)
    assert out["selected_epoch"] == 3  # the last of the two 0.8 (NaN is never best)
    assert out["selected_test_accuracy"] == 0.9
    assert out["selected_test_ece"] == 0.1
    assert out["selected_val_accuracy"] == 0.8
    assert _selected({"test_accuracy": [0.5]}, 1) == {}  # no validation split
    assert _selected(history, 1)["selected_epoch"] == 1  # only the epochs run


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1", "x"])
def test_cli_bad_validation_fraction_is_one_line(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["study", "--validation-fraction", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "--validation-fraction: must be a number in [0, 1)" in err
