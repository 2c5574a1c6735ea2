"""Statistics over seeds: confidence intervals of a cell and paired tests of a difference.

Seeds of two configurations share data, gallery draws and initial weights, so a delta to the
baseline is computed PAIRED by seed. The 95 % confidence interval of a mean (or of a mean
paired difference) comes from the t distribution. Its p-value comes from the paired t-test,
except for small samples (n < SMALL_N), where the exact sign-flip permutation test is used: it
assumes only that the differences are symmetric around 0 under the null, not that they are
normal. A difference is called significant only when its CI excludes 0 AND p < ALPHA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
ALPHA = 1 - LEVEL
SMALL_N = 10
"""Below this many pairs the p-value is the exact sign-flip permutation test's."""
EXACT_LIMIT = 16
"""Largest n whose 2**n sign flips are enumerated (the permutation test is only used below SMALL_N)."""


@dataclass(frozen=True)
class Interval:
    mean: float
    std: float
    n: int
    low: float
    high: float


def mean_interval(values: np.ndarray, level: float = LEVEL) -> Interval:
    """Mean, sample std and the t-distribution CI of the mean (NaN bounds for n < 2)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, std, n, mean - half, mean + half)


def sign_flip_p(differences: np.ndarray) -> float:
    """Exact two-sided p of the sign-flip permutation test of mean(differences) = 0.

    Every one of the 2**n sign assignments is enumerated at once; p is the fraction whose
    |mean| reaches the observed |mean| (the observed assignment included).
    """
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan
    if n > EXACT_LIMIT:
        raise ValueError(f"exact sign-flip test enumerates 2**n assignments; n={n} is above {EXACT_LIMIT}")
    bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
    flipped = np.abs((1 - 2 * bits) @ d)
    observed = abs(d.sum())
    return float(np.mean(flipped >= observed - 1e-9 * max(1.0, observed)))


@dataclass(frozen=True)
class PairedDifference:
    mean: float       # mean of (a - b) over the shared seeds
    n: int            # number of pairs
    low: float        # 95 % CI (t distribution)
    high: float
    p: float
    test: str         # "paired t" | "sign-flip" | "" (n < 2)

    @property
    def significant(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0) and self.p < ALPHA


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> PairedDifference:
    """Difference a - b of two runs paired element by element (same seed at the same position)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    ci = mean_interval(d, level)
    if ci.n < 2:
        return PairedDifference(ci.mean, ci.n, math.nan, math.nan, math.nan, "")
    if ci.n < SMALL_N:
        return PairedDifference(ci.mean, ci.n, ci.low, ci.high, sign_flip_p(d), "sign-flip")
    if ci.std == 0:  # identical differences: the t statistic is 0/0 or infinite
        return PairedDifference(ci.mean, ci.n, ci.low, ci.high, 1.0 if ci.mean == 0 else 0.0, "paired t")
    return PairedDifference(ci.mean, ci.n, ci.low, ci.high, float(stats.ttest_1samp(d, 0.0).pvalue), "paired t")


def smallest_p(n: int) -> float:
    """The smallest p-value the test of `n` pairs can return: 2 / 2**n for the exact sign-flip test
    (n < SMALL_N: only the two all-same-sign assignments reach the observed |mean|), 0 for the
    paired t-test; 1 below two pairs (no test)."""
    if n < 2:
        return 1.0
    return 2.0 / 2 ** n if n < SMALL_N else 0.0


MIN_SIGNIFICANT_PAIRS = next(n for n in range(2, SMALL_N + 1) if smallest_p(n) < ALPHA)
"""Fewest pairs with which a difference can be significant (6: 2/2**6 = 0.031 < 0.05)."""


def pairs_caption(counts: Sequence[int]) -> str | None:
    """What the numbers of seeds `counts` (one per table row) allow to claim, or None when every row
    has enough for a significant difference."""
    counts = sorted({int(n) for n in counts if n > 0})
    if not counts or counts[0] >= MIN_SIGNIFICANT_PAIRS:
        return None
    top = counts[-1]
    if top < 2:
        return "Every row has n = 1: no CI, no significance claim; nothing is marked."
    if top < MIN_SIGNIFICANT_PAIRS:
        seeds = f"n = {top}" if len(counts) == 1 else f"n = {counts[0]}-{top}"
        return (f"With {seeds} seeds no difference can be significant: the exact sign-flip test's "
                f"smallest p with {top} pairs is 2/{2 ** top} = {smallest_p(top):.3g} and p < {ALPHA:.2f} needs at "
                f"least {MIN_SIGNIFICANT_PAIRS} pairs; nothing is marked.")
    return (f"Rows with fewer than {MIN_SIGNIFICANT_PAIRS} seeds cannot differ significantly from another row "
            f"(the exact sign-flip test needs at least {MIN_SIGNIFICANT_PAIRS} pairs for p < {ALPHA:.2f})" +
            ("; rows with n = 1 have no CI." if counts[0] < 2 else "."))


def significance_caption() -> str:
    """One sentence stating how deltas and their significance are computed."""
    return (f"Δ: difference to the baseline paired by seed; 95 % CI from the t distribution; p from the exact "
            f"sign-flip permutation test for fewer than {SMALL_N} pairs, else the paired t-test; * marks a Δ whose "
            f"CI excludes 0 and p < {ALPHA:.2f}.")


def pareto_front(points: np.ndarray, directions: tuple[str, ...] | None = None) -> np.ndarray:
    """Indices of the points no other point dominates (all objectives maximised unless
    `directions` says "min"/"minimize" for a column)."""
    pts = np.asarray(points, dtype=float)
    if directions is not None:
        pts = pts * np.array([-1.0 if d.startswith("min") else 1.0 for d in directions])
    at_least = (pts[None, :, :] >= pts[:, None, :]).all(-1)
    better = (pts[None, :, :] > pts[:, None, :]).any(-1)
    return np.flatnonzero(~(at_least & better).any(1))
