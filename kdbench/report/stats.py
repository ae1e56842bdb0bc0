"""Statistics for reports: t-tests with confidence intervals, Holm's correction, and power.

- `paired_ttest`: the paired two-sided t-test across seeds (runs paired by seed), with
  the t confidence interval of the mean difference; `welch_ttest` when seeds don't pair.
- `holm`: Holm–Bonferroni adjusted p-values (Holm 1979, *Scandinavian Journal of
  Statistics* 6:65–70), for the methods compared with one baseline.
- `mean_interval`: the mean of some values with its t interval (the mean gain over pairs).
- `paired_power`, `min_detectable_difference`, `seeds_needed`: the exact power of the
  paired t-test from the noncentral t distribution.

No SciPy: the distributions are in `distributions.py`, checked against SciPy in the tests.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

from kdbench.report.distributions import nct_cdf, nct_sf, t_ppf, t_two_sided_p

__all__ = [
    "TTest", "detectable_effect", "holm", "mean_interval", "mean_std", "min_detectable_difference", "paired_power", "paired_ttest",
    "seeds_needed", "welch_ttest",
]

# Differences smaller than this (in accuracy points) count as zero: accuracies are
# ratios of counts, and float noise must not turn "identical" into "significant".
_ZERO = 1e-9


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """`(mean, sample std with ddof=1, n)` of `values`; std is nan when n < 2, mean nan when n = 0."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, math.nan, n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var), n


def _half_width(se: float, df: float, alpha: float) -> float:
    return t_ppf(1 - alpha / 2, df) * se


@dataclass(frozen=True)
class TTest:
    """A two-sided t-test of a difference `a − b`, paired or Welch's.

    `n` is the number of pairs (paired) or of runs in `a` and `b` together (Welch).
    `std_diff` is the std of the paired differences (ddof = 1; nan for Welch), `se` the
    standard error of `mean_diff`. `t`, `df` and `p` are nan / 0 when the test cannot run.
    """

    n: int
    mean_diff: float
    std_diff: float
    se: float
    t: float
    df: float
    p: float
    paired: bool = True

    @property
    def testable(self) -> bool:
        """Whether there was enough data for a test (≥ 2 pairs, or ≥ 2 runs on each side)."""
        return self.df > 0 and not math.isnan(self.p)

    @property
    def zero_variance(self) -> bool:
        """Whether the differences had no spread at all (the test is then decided without dividing by 0)."""
        return self.testable and self.se == 0.0

    def interval(self, alpha: float) -> tuple[float, float]:
        """The (1 − alpha) confidence interval of `mean_diff`; one point under zero variance."""
        if not self.testable:
            return math.nan, math.nan
        if self.se == 0.0:
            return self.mean_diff, self.mean_diff
        half = _half_width(self.se, self.df, alpha)
        return self.mean_diff - half, self.mean_diff + half

    def mark(self, alpha: float, p: float | None = None) -> str:
        """`"↑"` if a is significantly better than b at level `alpha`, `"↓"` if worse, else `""`.

        `p` replaces the test's own p-value (e.g. a Holm-adjusted one).
        """
        p = self.p if p is None else p
        if not self.testable or math.isnan(p) or p >= alpha:
            return ""
        return "↑" if self.mean_diff > 0 else "↓"


def _degenerate(n: int, mean: float, df: float, paired: bool, std: float) -> TTest:
    """Zero variance: every seed agrees. Equal means: t = 0, p = 1; otherwise t = ±inf, p = 0."""
    if abs(mean) <= _ZERO:
        return TTest(n=n, mean_diff=mean, std_diff=std, se=0.0, t=0.0, df=df, p=1.0, paired=paired)
    return TTest(n=n, mean_diff=mean, std_diff=std, se=0.0, t=math.copysign(math.inf, mean), df=df, p=0.0,
                 paired=paired)


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Paired two-sided t-test of H0: mean(a − b) = 0, with df = n − 1.

    `a[i]` and `b[i]` must come from the same unit (here: the same pair and seed).
    Zero variance of the differences is decided without dividing by zero: if every
    difference is the same nonzero number, t = ±inf and p = 0 (every seed agrees, so the
    difference is treated as significant); if every difference is zero, t = 0 and p = 1.
    """
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    mean, std, n = mean_std(diffs)
    if n < 2:
        return TTest(n=n, mean_diff=mean, std_diff=std, se=math.nan, t=math.nan, df=0, p=math.nan)
    df = n - 1
    if std <= _ZERO:
        return _degenerate(n, mean, df, True, 0.0)
    se = std / math.sqrt(n)
    t = mean / se
    return TTest(n=n, mean_diff=mean, std_diff=std, se=se, t=t, df=df, p=t_two_sided_p(t, df))


def welch_ttest(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Welch's two-sided t-test of H0: mean(a) = mean(b), for runs that do not pair.

    df is the Welch–Satterthwaite approximation (Welch 1947, *Biometrika* 34:28–35);
    zero variance on both sides is decided as in `paired_ttest`.
    """
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    mean = ma - mb
    if na < 2 or nb < 2:
        return TTest(n=na + nb, mean_diff=mean, std_diff=math.nan, se=math.nan, t=math.nan, df=0, p=math.nan,
                     paired=False)
    va, vb = sa * sa / na, sb * sb / nb
    if sa <= _ZERO and sb <= _ZERO:
        return _degenerate(na + nb, mean, na + nb - 2, False, math.nan)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    t = mean / se
    return TTest(n=na + nb, mean_diff=mean, std_diff=math.nan, se=se, t=t, df=df, p=t_two_sided_p(t, df),
                 paired=False)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order; nan entries stay nan and do not count.

    With the m finite p-values sorted, p_(1) ≤ … ≤ p_(m), the adjusted value of p_(i) is
    max_{j ≤ i} min(1, (m − j + 1) p_(j)); a hypothesis is rejected at level α when its
    adjusted value is below α. Ties keep their input order, which does not change the values.
    """
    finite = sorted((i for i, p in enumerate(p_values) if not math.isnan(p)), key=lambda i: p_values[i])
    m = len(finite)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def mean_interval(values: Sequence[float], alpha: float) -> tuple[float, float, float, int]:
    """`(mean, low, high, n)`: the mean of `values` with its (1 − alpha) t interval (df = n − 1).

    The interval is nan with fewer than 2 values and one point when they are all equal.
    """
    mean, std, n = mean_std(values)
    if n < 2:
        return mean, math.nan, math.nan, n
    if std <= _ZERO:
        return mean, mean, mean, n
    half = _half_width(std / math.sqrt(n), n - 1, alpha)
    return mean, mean - half, mean + half, n


def paired_power(effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with `n` pairs when the true mean difference is `effect` stds.

    With df = n − 1, the critical value c = t_(1−α/2, df) and the noncentrality
    δ = effect·√n: power = P(T' > c) + P(T' < −c), T' noncentral t(df, δ).
    """
    if n < 2:
        return math.nan
    df = n - 1
    c = t_ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    return nct_sf(c, df, nc) + nct_cdf(-c, df, nc)


def min_detectable_difference(std_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference that the paired t-test with `n` pairs detects with `power`.

    In the units of `std_diff` (the std of the paired differences). nan when n < 2 or the
    std is not a positive number.
    """
    if n < 2 or not math.isfinite(std_diff) or std_diff <= _ZERO:
        return math.nan
    return detectable_effect(n, alpha, power) * std_diff


@functools.lru_cache(maxsize=256)
def detectable_effect(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The effect (mean difference / std of differences) that the paired t-test with `n` pairs detects with `power`."""
    def gap(effect: float) -> float:
        return paired_power(effect, n, alpha) - power

    lo, hi = 0.0, 1.0
    f_lo, f_hi = gap(lo), gap(hi)
    while f_hi < 0:
        lo, f_lo, hi = hi, f_hi, 2.0 * hi
        f_hi = gap(hi)
    # Regula falsi with the Illinois modification (power grows with the effect): superlinear,
    # and the root stays bracketed.
    side = 0
    for _ in range(200):
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        f_mid = gap(mid)
        if f_mid == 0 or hi - lo <= 1e-13 * hi:
            return mid
        if f_mid < 0:
            lo, f_lo = mid, f_mid
            if side == -1:
                f_hi /= 2
            side = -1
        else:
            hi, f_hi = mid, f_mid
            if side == 1:
                f_lo /= 2
            side = 1
        if abs(f_mid) < 1e-14:
            return mid
    return mid


def seeds_needed(mean_diff: float, std_diff: float, alpha: float = 0.05, power: float = 0.8,
                 max_n: int = 100_000) -> float:
    """The fewest pairs (seeds) with which the paired t-test detects `mean_diff` with `power`.

    Takes the observed difference and std of differences as the truth. Returns nan when
    the std is not a positive number, and inf when even `max_n` pairs are not enough (a
    zero difference never is).
    """
    if not (math.isfinite(std_diff) and std_diff > _ZERO and math.isfinite(mean_diff)):
        return math.nan
    effect = abs(mean_diff) / std_diff
    if effect == 0.0:
        return math.inf
    if paired_power(effect, 2, alpha) >= power:
        return 2
    lo, hi = 2, 4  # power(lo) < target; power grows with n
    while paired_power(effect, hi, alpha) < power:
        if hi >= max_n:
            return math.inf
        lo, hi = hi, min(2 * hi, max_n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if paired_power(effect, mid, alpha) < power:
            lo = mid
        else:
            hi = mid
    return hi
