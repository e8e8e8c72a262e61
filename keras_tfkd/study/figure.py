"""results.png: `plot` draws the headline accuracies (val-selected, else the
best), their Δ vs baseline, the curves and each method's paired 95% interval
against its baseline.

A module of its own named ``figure``, not ``plot``: a submodule named like
the package's `plot` function would be shadowed by it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from keras_tfkd.study import stats
from keras_tfkd.study.report import _fmt, _fmt_delta, _spread_note, _teacher_epochs_text

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")


def _plot_label(row):
    name = f"{row['label']} {row['student']}"
    if row["teacher"]:
        name += f" <- {row['teacher']}"
        if row["teacher_epochs"]:
            name += _teacher_epochs_text(row["teacher_epochs"])
    return name


def plot(rows, path, title=""):
    """results.png: accuracies on their real scale, Δ vs baseline, curves, CIs.

    Four panels: the headline accuracy of every (method, student) as bars
    (the test accuracy at the epoch of best validation accuracy when the
    runs have a validation split, else the best test accuracy)
    on the full 0-100% axis, with chance (1/K) marked; its difference with
    the same student's baseline in accuracy points, around a zero line,
    with the per-seed (paired) differences as small marks and error bars of
    their sample std (none with one seed); and the mean test accuracy per
    epoch, one marker per epoch (so one epoch is one point), the legend
    outside the axes; and, for every method, the mean paired difference
    with its baseline of the final and of the best test accuracy, with the
    95% Student t interval over seeds (`stats.paired_interval`) as error
    bars around a zero line (no bars with one seed). Drawn on a
    `matplotlib.figure.Figure` with the Agg canvas, so it never touches
    pyplot's global backend.
    """
    fig = _figure(rows, title)
    fig.savefig(path, dpi=110)
    return Path(path)


def _figure(rows, title=""):
    """The `matplotlib.figure.Figure` of `plot`: axes absolute, delta, curves,
    intervals (in that order of ``fig.axes``; the intervals drawn above the
    curves)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spread = _spread_note(rows)
    rows = [r for r in rows if r["role"] == "run" and r["best"] is not None]
    compared = [r for r in rows if r["method"] != "baseline"]
    fig = Figure(figsize=(13, 14), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 2, height_ratios=[1, 0.25 + 0.75 * bool(compared), 1])
    absolute = fig.add_subplot(grid[0, 0])
    delta = fig.add_subplot(grid[0, 1], sharey=absolute)
    curves = fig.add_subplot(grid[2, :])
    intervals = fig.add_subplot(grid[1, :])
    colors = [_color(i) for i in range(len(rows))]
    classes = {r["num_classes"] for r in rows if r.get("num_classes")}
    chance = 100 / classes.pop() if len(classes) == 1 else None
    several = any(r["n"] > 1 for r in rows)
    field = _headline(rows)
    _accuracy_panel(absolute, rows, colors, chance, several, field)
    _delta_panel(delta, rows, colors, several, field)
    _curves_panel(curves, rows, colors, chance)
    _interval_panel(intervals, rows, colors, several)
    title = "\n".join(textwrap.wrap(title, 150)) if title else ""
    fig.suptitle("\n".join(t for t in (title, spread) if t), fontsize=10)
    return fig


#: The accuracy the first two panels show: its row field and its words.
_HEADLINES = {
    "selected": "val-selected test accuracy",
    "best": "best test accuracy",
}


def _headline(rows):
    """``"selected"`` (the test accuracy at the epoch of best validation
    accuracy, the headline) when the rows have it, else ``"best"``."""
    if rows and all(r.get("selected") is not None for r in rows):
        return "selected"
    return "best"


#: After matplotlib's ten default colours, the darkest shades of its
#: ``tab20b`` map: dark enough for the white value labels on the bars.
_MORE_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")


def _color(i):
    """A distinct colour for row `i` (15 before the cycle repeats)."""
    extra = len(_MORE_COLORS)
    i %= 10 + extra
    return f"C{i}" if i < 10 else _MORE_COLORS[i - 10]


def _accuracy_panel(ax, rows, colors, chance, several, field="best"):
    """The headline accuracy of every row as a bar, on the full 0-100 scale."""
    y = np.arange(len(rows))
    words = _HEADLINES[field]
    ax.barh(
        y,
        [r[field] for r in rows],
        xerr=[r[f"{field}_std"] or 0 for r in rows] if several else None,
        color=colors,
        height=0.65,
        capsize=3,
    )
    for yi, r in zip(y, rows):
        ax.text(
            1,
            yi,
            _fmt(r[field], r[f"{field}_std"]),
            va="center",
            ha="left",
            fontsize=8,
            color="white",
            fontweight="bold",
        )
    if chance is not None:
        ax.axvline(chance, color="black", ls=":", lw=1)
        ax.text(
            chance,
            0.005,
            f" chance (1/K = {chance:.0f}%)",
            fontsize=7,
            va="bottom",
            ha="left",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xlim(0, 100)
    ax.set_yticks(y, [_plot_label(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{words} (%)")
    ax.set_title(
        f"{words} (%), on the full 0-100 scale\n"
        + ("mean ± sample std over seeds" if several else "n = 1 seed: no spread"),
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)


def _delta_panel(ax, rows, colors, several, field="best"):
    """The difference of every row with its baseline, in accuracy points, around
    a zero line: the mean, the std of the paired differences, each seed."""
    reach = [1.0]
    delta = f"delta_{field}"
    for yi, r, color in zip(np.arange(len(rows)), rows, colors):
        if r["method"] == "baseline":
            ax.plot(0, yi, marker="D", mfc="none", color="grey", ms=7)
            ax.text(0, yi - 0.3, "baseline", fontsize=7, ha="center", color="grey")
            continue
        if r[delta] is None:
            ax.text(0, yi, "no baseline", fontsize=7, ha="center", va="center")
            continue
        std = r[f"{delta}_std"]
        seeds = r.get(f"{delta}_seeds") or []
        if len(seeds) > 1:
            ax.plot(
                seeds, [yi + 0.22] * len(seeds), "o", color=color, ms=3.5, alpha=0.7
            )
        ax.errorbar(
            r[delta],
            yi,
            xerr=std,
            fmt="o",
            color=color,
            ms=7,
            capsize=4,
            elinewidth=1.5,
        )
        ax.text(
            r[delta],
            yi - 0.3,
            _fmt_delta(r[delta], std),
            fontsize=7,
            ha="center",
        )
        reach += [abs(r[delta]) + (std or 0), *map(abs, seeds)]
    span = 1.2 * max(reach)
    ax.set_xlim(-span, span)
    ax.axvline(0, color="black", lw=1)
    ax.tick_params(labelleft=False)
    ax.grid(axis="x", alpha=0.3)
    tests = {r["test_examples"] for r in rows if r.get("test_examples")}
    image = f"; 1 test image = {100 / tests.pop():.2f}" if len(tests) == 1 else ""
    name = "val-selected" if field == "selected" else "best"
    ax.set_xlabel(f"Δ {name} vs the same student's baseline (accuracy points{image})")
    bars = (
        "bars: sample std of the per-seed differences; small dots: each seed"
        if several
        else "n = 1 seed: no error bars"
    )
    ax.set_title(f"difference with the baseline, in points\n{bars}", fontsize=10)


def _curves_panel(ax, rows, colors, chance):
    """The mean test accuracy after every epoch, one marker per epoch (dashed:
    students other than the most common one), the legend outside the axes."""
    from matplotlib.ticker import MaxNLocator

    values = []
    longest = max([len(r["curve"]) for r in rows] or [0])
    students = [r["student"] for r in rows]
    main = max(students, key=students.count) if students else None
    dodge = 0.25 / max(1, len(rows) - 1) if longest <= 3 else 0.0
    for i, (r, color) in enumerate(zip(rows, colors)):
        if not r["curve"]:
            continue
        epochs = np.arange(1, len(r["curve"]) + 1) + dodge * (i - (len(rows) - 1) / 2)
        ax.plot(
            epochs,
            r["curve"],
            color=color,
            marker=_MARKERS[i % len(_MARKERS)],
            ms=6,
            lw=1.4,
            ls="-" if r["student"] == main else "--",
            label=_plot_label(r),
        )
        values += r["curve"]
    if values:
        low, high = min(values), max(values)
        if chance is not None and chance < low:
            ax.axhline(chance, color="black", ls=":", lw=1, label="chance (1/K)")
            low = chance
        pad = max(1.0, 0.05 * (high - low))
        ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad) + 0.5)
        ax.set_xlim(0.5, longest + 0.5)
        ax.legend(
            fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
        )
    if 0 < longest <= 20:
        ax.set_xticks(range(1, longest + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"test accuracy after every epoch (mean over seeds; dashed: students "
        f"other than {main}"
        + ("; points moved sideways to be seen" if dodge else "")
        + ")",
        fontsize=10,
    )
    ax.grid(alpha=0.3)


#: The fields of the interval panel: (row key of the per-seed differences,
#: legend name, marker, filled); the first is the headline (final).
_INTERVAL_FIELDS = (
    ("delta_final_seeds", "final test accuracy (headline)", "o", True),
    ("delta_best_seeds", "best test accuracy (best epoch)", "s", False),
)
#: The same with a validation split: the val-selected accuracy is the headline.
_SELECTED_FIELDS = (
    ("delta_selected_seeds", "val-selected test accuracy (headline)", "o", True),
    ("delta_best_seeds", "best test accuracy (selected on test)", "s", False),
)


def _interval_panel(ax, rows, colors, several):
    """Every method's mean paired difference with its baseline, final and best,
    with the 95% t interval over seeds as error bars, around a zero line."""
    pairs = [(r, c) for r, c in zip(rows, colors) if r["method"] != "baseline"]
    rows = [r for r, _ in pairs]
    fields = (
        _SELECTED_FIELDS
        if any(r.get("delta_selected_seeds") for r in rows)
        else _INTERVAL_FIELDS
    )
    headline = "val-selected" if fields is _SELECTED_FIELDS else "final"
    y = np.arange(len(rows))
    reach = [1.0]
    dodge = 0.17
    labelled = set()
    for yi, (r, color) in zip(y, pairs):
        if not (r.get("delta_final_seeds") or r.get("delta_best_seeds")):
            ax.text(0, yi, "no baseline", fontsize=7, ha="center", va="center")
            continue
        for j, (key, name, marker, filled) in enumerate(fields):
            ci = stats.paired_interval(r.get(key) or [])
            if ci["mean"] is None:
                continue
            yj = yi + dodge * (2 * j - 1)
            err = None
            if ci["low"] is not None:
                err = [[ci["mean"] - ci["low"]], [ci["high"] - ci["mean"]]]
                reach += [abs(ci["low"]), abs(ci["high"])]
            reach.append(abs(ci["mean"]))
            ax.errorbar(
                ci["mean"],
                yj,
                xerr=err,
                fmt=marker,
                color=color,
                mfc=color if filled else "white",
                ms=6,
                capsize=3,
                elinewidth=1.4,
                label=None if name in labelled else name,
            )
            labelled.add(name)
            text = f"{ci['mean']:+.2f}"
            if ci["low"] is not None:
                text += f" [{ci['low']:+.2f}, {ci['high']:+.2f}]"
                text += f"  {ci['improved']}/{ci['n']}"
            ax.annotate(
                text,
                (ci["high"] if ci["high"] is not None else ci["mean"], yj),
                xytext=(6, 0),
                textcoords="offset points",
                fontsize=7,
                va="center",
                color=color,
            )
    span = 1.15 * max(reach)
    ax.set_xlim(-span, 1.45 * span)  # room on the right for the labels
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y, [_plot_label(r) for r in rows], fontsize=8)
    ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)
    if not rows:
        ax.text(0, 0, "no method but the baseline", fontsize=8, ha="center")
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("mean over seeds of (method − same seed's baseline), accuracy points")
    bars = (
        "bars: 95% Student t interval over seeds; text: mean [interval]  "
        "seeds improved / n"
        if several
        else "n = 1 seed: no interval"
    )
    ax.set_title(
        f"paired difference with the baseline, {headline} and best\n{bars}",
        fontsize=10,
    )
    if labelled:
        ax.legend(
            fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
        )
