"""What seeds say about settings: confidence intervals, paired comparisons and how many seeds would tell.

One setting's accuracy over n seeds: the mean with a two-sided 95% Student t interval (the seeds are a
small sample; the t interval is what scipy.stats.ttest_1samp's confidence_interval gives). Two settings:
a paired t-test on the seeds both ran (the same seed gives both the same initialization and batch order,
so pairing removes most of the seed-to-seed noise); its interval is the t interval of the differences.
A Wilcoxon signed-rank test cannot reach p < 0.05 on fewer than 6 pairs, so the t-test it is.
"""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95
POWER = 0.8  # the seeds needed: enough for an 80% chance to tell the observed difference at CONFIDENCE
MAX_SEEDS_ESTIMATED = 1000
CI_METHOD = "two-sided 95% Student t interval"
TEST_METHOD = "paired t-test on common seeds, two-sided"


@dataclass(frozen=True)
class Estimate:
    """Mean of n values with its t interval (no interval for fewer than 2 values)."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.high is None else (self.high - self.low) / 2


def estimate(values: Sequence[float]) -> Estimate:
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(n, mean, None, None, None)
    sd = statistics.stdev(values)
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class Paired:
    """first − second over their common seeds: the mean difference, its interval, the test's p-value."""

    seeds: tuple
    difference: Estimate
    p_value: float | None
    seeds_needed: int | None  # None: already told apart, or no spread to estimate from

    @property
    def told_apart(self) -> bool:
        return self.p_value is not None and self.p_value < 1 - CONFIDENCE


def paired(first: dict, second: dict) -> Paired:
    """Compare two settings' values by seed ({seed: value}); only the seeds both have count."""
    common = tuple(sorted(set(first) & set(second), key=repr))
    differences = [first[seed] - second[seed] for seed in common]
    if not differences:
        return Paired(common, Estimate(0, math.nan, None, None, None), None, None)
    difference = estimate(differences)
    if difference.sd is None:
        return Paired(common, difference, None, None)
    if difference.sd == 0:
        p_value = 1.0 if difference.mean == 0 else 0.0
    else:
        t = difference.mean / (difference.sd / math.sqrt(difference.n))
        p_value = float(2 * stats.t.sf(abs(t), difference.n - 1))
    needed = None if p_value < 1 - CONFIDENCE else seeds_needed(difference.mean, difference.sd)
    return Paired(common, difference, p_value, needed)


def seeds_needed(mean_difference: float, sd: float) -> int | None:
    """The fewest paired seeds for an 80% chance that a paired t-test at 95% tells apart a true difference
    of this size with this spread (the usual normal approximation, with t quantiles); None when there is no
    difference to find or more than MAX_SEEDS_ESTIMATED would be needed."""
    if mean_difference == 0 or sd == 0:
        return None
    ratio = sd / abs(mean_difference)
    for n in range(2, MAX_SEEDS_ESTIMATED + 1):
        quantiles = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) + stats.t.ppf(POWER, n - 1)
        if quantiles * ratio <= math.sqrt(n):
            return n
    return None
