"""Paired statistics over seeds: `paired_interval`, the `verdict` on a claim
and its `stability` (would a rerun keep it?), with its table cells.

A study runs every method with the same seeds as its reference (same seed,
same initial weights, same batches), so a method is judged on the per-seed
differences ``d_i = method_i - reference_i`` (in accuracy points), not on
the difference of two means with two independent spreads. NumPy and
`scipy.stats` only (no Keras).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CLAIMS", "paired_interval", "stability", "stability_cells", "verdict"]

#: The claim kinds `verdict` knows.
CLAIMS = ("improves", "comparable")

#: The most seeds `stability` looks for (``seeds_needed`` is None beyond).
MAX_SEEDS = 1000


def paired_interval(differences, confidence=0.95):
    """The Student t interval of the mean of paired (per-seed) differences.

    With the ``n`` finite differences ``d_1 .. d_n`` (NaN and None are left
    out, and counted in ``dropped``), their mean ``m`` and sample standard
    deviation ``s`` (``ddof=1``), the interval is::

        m - t * s / sqrt(n)  ..  m + t * s / sqrt(n),   t = t_{(1+c)/2, n-1}

    the ``(1 + confidence) / 2`` quantile of Student's t with ``n - 1``
    degrees of freedom (2.776 for 3 seeds at 95%). With fewer than two
    differences there is no spread, so no interval: ``low`` and ``high`` are
    None (and ``mean`` is None too with none at all). Differences that are
    all equal (``s = 0``) give the zero-width interval ``[m, m]``.

    Returns a dict: ``mean``, ``low``, ``high``, ``sd`` (``s``, None below two
    differences), ``n``, ``improved`` (how many differences are > 0),
    ``dropped`` (NaN/None left out) and ``confidence``.

    >>> r = paired_interval([1.0, 3.0, 2.0])  # mean 2, sd 1, t = 4.303 (n - 1 = 2)
    >>> round(r["mean"], 3), round(r["low"], 3), round(r["high"], 3)
    (2.0, -0.484, 4.484)
    >>> r["n"], r["improved"]
    (3, 3)
    >>> paired_interval([0.5, float("nan")])["low"] is None  # one left: no interval
    True
    """
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    values = [None if d is None else float(d) for d in differences]
    finite = np.asarray([d for d in values if d is not None and not math.isnan(d)])
    n = int(finite.size)
    result = {
        "mean": float(finite.mean()) if n else None,
        "low": None,
        "high": None,
        "sd": None,
        "n": n,
        "improved": int((finite > 0).sum()),
        "dropped": len(values) - n,
        "confidence": confidence,
    }
    if n >= 2:
        sd = float(finite.std(ddof=1))
        from scipy import stats as scipy_stats  # imported when needed: slow

        half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * sd
        half /= math.sqrt(n)
        result.update(sd=sd, low=result["mean"] - half, high=result["mean"] + half)
    return result


def verdict(interval, claim="improves", margin=1.0):
    """``"supported"``, ``"not supported"`` or ``"inconclusive"``: a claim on
    the interval of `paired_interval` (differences method - reference).

    * ``claim="improves"`` (the method beats the reference): *supported* if
      the interval's low end is > 0, *not supported* if its high end is < 0
      (the method is worse), else *inconclusive* (the interval holds 0).
    * ``claim="comparable"`` (the method is as good as the reference, within
      `margin` accuracy points, default 1.0): *supported* if the whole
      interval lies within the band, ``-margin <= low`` and
      ``high <= margin``; *not supported* if it lies wholly outside the
      band, ``low > margin`` or ``high < -margin``; else *inconclusive* (it
      straddles an edge of the band). With a 95% interval this is the
      two-one-sided-tests (TOST) rule at the 2.5% level each side.

    Either claim is *inconclusive* with fewer than two differences (no
    interval).

    >>> verdict(paired_interval([1.0, 1.5, 2.0]))
    'supported'
    >>> verdict(paired_interval([1.0, 3.0, 2.0]))  # [-0.48, 4.48] holds 0
    'inconclusive'
    >>> verdict(paired_interval([0.1, -0.2, 0.0, 0.2]), "comparable")
    'supported'
    >>> verdict(paired_interval([0.5]))
    'inconclusive'
    """
    if claim not in CLAIMS:
        raise ValueError(f"`claim` must be one of {CLAIMS}, got {claim!r}.")
    if not margin > 0:
        raise ValueError(f"`margin` must be > 0, got {margin!r}.")
    low, high = interval.get("low"), interval.get("high")
    if interval.get("n", 0) < 2 or low is None or high is None:
        return "inconclusive"
    if claim == "improves":
        if low > 0:
            return "supported"
        if high < 0:
            return "not supported"
        return "inconclusive"
    if -margin <= low and high <= margin:
        return "supported"
    if low > margin or high < -margin:
        return "not supported"
    return "inconclusive"


def stability(differences, claim="improves", margin=1.0, confidence=0.95):
    """Would a rerun keep the verdict? Leave-one-seed-out, and the seeds it needs.

    Two measures of the verdict of `verdict` on `paired_interval` of
    `differences` (per-seed, method - reference):

    * ``fragile``: True when leaving out some one seed gives another verdict
      (each of the ``n`` subsets of ``n - 1`` differences is judged by the
      same rule), False when no seed decides it, None with fewer than two
      differences. A verdict that one seed flips is one that a rerun on
      another machine, whose numbers differ a little, can flip too.
    * ``seeds_needed``: the fewest seeds ``n`` at which, at this mean ``m``
      and spread ``s``, the interval would clear the verdict's edge (0 for
      *improves*; the band's edge ``margin`` for *comparable*) by the typical
      gap between two such studies' means, ``sqrt(2) * s / sqrt(n)``::

          (t_{(1+c)/2, n-1} + sqrt(2)) * s / sqrt(n) < e,
          e = |m| (improves)  or  | margin - |m| | (comparable)

      So a rerun with fresh seeds keeps the verdict unless its mean moves
      by more than one standard deviation of that gap. For an inconclusive
      verdict it is the seeds that would settle it if the mean and spread
      held. None when ``e == 0`` (no number of seeds settles it), with
      fewer than two differences (no spread), or beyond `MAX_SEEDS`.

    Returns the dict of `paired_interval` (``mean``, ``low``, ``high``,
    ``n``, ...) with ``verdict``, ``fragile`` and ``seeds_needed`` added.

    >>> r = stability([1.0, 1.2, 0.9, 1.1, 1.0])  # every seed gains about 1 point
    >>> r["verdict"], r["fragile"], r["seeds_needed"]
    ('supported', False, 3)
    >>> r = stability([1.0, 0.2, 0.3, 0.4, 0.2])  # without a 0.2: inconclusive
    >>> r["verdict"], r["fragile"], r["seeds_needed"]
    ('supported', True, 9)
    """
    interval = paired_interval(differences, confidence)
    result = {
        **interval,
        "verdict": verdict(interval, claim, margin),
        "fragile": None,
        "seeds_needed": None,
    }
    n = interval["n"]
    if n < 2:
        return result
    finite = [
        float(d) for d in differences if d is not None and not math.isnan(float(d))
    ]
    result["fragile"] = any(
        verdict(
            paired_interval(finite[:i] + finite[i + 1 :], confidence), claim, margin
        )
        != result["verdict"]
        for i in range(n)
    )
    mean, sd = interval["mean"], interval["sd"]
    edge = abs(mean) if claim == "improves" else abs(margin - abs(mean))
    if edge == 0:
        return result
    if sd == 0:
        result["seeds_needed"] = 2
        return result
    from scipy import stats as scipy_stats  # imported when needed: slow

    sizes = np.arange(2, MAX_SEEDS + 1)
    t = scipy_stats.t.ppf((1 + confidence) / 2, sizes - 1)
    ok = np.nonzero((t + math.sqrt(2.0)) * sd / np.sqrt(sizes) < edge)[0]
    if ok.size:
        result["seeds_needed"] = int(sizes[ok[0]])
    return result


#: The two table columns of a verdict's `stability` (results.md, README).
LEAVE_ONE_OUT = "leave-one-seed-out"
SEEDS_NEEDED = "seeds for a stable verdict"


def stability_cells(claim):
    """The cells of `LEAVE_ONE_OUT` and `SEEDS_NEEDED` for one claim (or a
    `stability` result; None: two empty cells).

    >>> stability_cells(stability([1.0, 0.2, 0.3, 0.4, 0.2]))
    ['**fragile**', '9']
    >>> stability_cells(stability([0.5, -0.5, 0.0]))  # no effect: never settled
    ['holds', '> 1000']
    """
    if claim is None:
        return ["", ""]
    fragile, needed = claim.get("fragile"), claim.get("seeds_needed")
    robust = "" if fragile is None else ("**fragile**" if fragile else "holds")
    if claim["verdict"] == "skipped" or claim["n"] < 2:
        return [robust, ""]
    return [robust, f"> {MAX_SEEDS}" if needed is None else str(needed)]
