"""Paired comparison of two entries over the seeds they share: difference, its uncertainty, a t-test.

For per-seed values ``a_s`` and ``b_s`` on the ``n`` seeds both have (finite values only),
``d_s = a_s - b_s``:

* difference ``mean(d)``; its standard error ``SE = std(d, ddof=1) / sqrt(n)``;
* the 95 % confidence interval ``mean(d) +- t_{0.975, n-1} * SE`` (Student's t with n - 1 degrees of
  freedom);
* the two-sided paired t-test of ``mean(d) = 0`` (:func:`scipy.stats.ttest_rel`), whose p-value is
  below 0.05 exactly when that interval excludes zero.

Pairing by seed is what the suites allow: a seed fixes the initial weights and the data order for every
entry, so ``a_s - b_s`` removes the part of the seed-to-seed spread the two share. With n < 2 there is no SE,
interval or test; when every seed gives the same difference (up to rounding) the difference is exact: SE 0,
p = 0 (or 1 for a zero difference). With the handful of seeds a leaderboard has (3 in the quick profile) the
test is weak and only large differences are resolved. No correction for testing many entries against one reference is
applied; pages say so.

A verdict never calls a difference better or worse when its interval includes zero
(:func:`verdict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
EXACT = 1e-12  # a spread of the differences this small is rounding error
TEST_NAME = "two-sided paired t-test over seeds (scipy.stats.ttest_rel)"


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over the common seeds: mean, SE, 95 % CI and the paired t-test's p-value (NaN if n < 2)."""

    n: int
    mean: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the confidence interval lies entirely on one side of zero."""
        return self.n >= 2 and (self.ci_low > 0 or self.ci_high < 0)


def paired_difference(a: pd.Series, b: pd.Series) -> PairedDifference:
    """Compare per-seed values ``a`` and ``b`` (Series indexed by seed) on the seeds where both are finite."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").astype(np.float64)
    joined = joined.loc[np.isfinite(joined["a"]) & np.isfinite(joined["b"])]
    n = len(joined)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    d = (joined["a"] - joined["b"]).to_numpy()
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(n, mean, math.nan, math.nan, math.nan, math.nan)
    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * se
    if se <= EXACT * max(1.0, abs(mean)):  # no spread (up to rounding): the test is undefined, the difference exact
        se = 0.0
        half = 0.0
        p_value = 1.0 if abs(mean) <= EXACT else 0.0
    else:
        p_value = float(stats.ttest_rel(joined["a"], joined["b"]).pvalue)
    return PairedDifference(n, mean, se, mean - half, mean + half, p_value)


def verdict(difference: PairedDifference, higher_is_better: bool) -> str:
    """``"better"`` / ``"worse"`` only when the 95 % interval excludes zero, else why not."""
    if difference.n < 2:
        return f"n = {difference.n}: no test"
    if not difference.excludes_zero:
        return "no clear difference"
    return "better" if (difference.mean > 0) == higher_is_better else "worse"
