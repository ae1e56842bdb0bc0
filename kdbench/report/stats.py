"""Statistics for reports: Student's t distribution and the paired t-test across seeds.

No SciPy: the t distribution's CDF for integer degrees of freedom has a closed form
(Abramowitz & Stegun 26.7.3 and 26.7.4), which is all a paired test over seeds needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["PairedTest", "mean_std", "paired_ttest", "t_cdf", "t_two_sided_p"]


def _t_central_prob(t: float, df: int) -> float:
    """A(t|ν) = P(|T| < |t|) for Student's t with ν = `df` degrees of freedom.

    Abramowitz & Stegun 26.7.3 (ν odd) and 26.7.4 (ν even), with θ = atan(|t|/√ν).
    The series have ν/2 terms, so this is exact up to rounding for any integer ν.
    """
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    if df % 2 == 1:
        # 26.7.3: (2/π)[θ + sinθ(cosθ + (2/3)cos³θ + … + (2·4…(ν−3))/(1·3…(ν−2)) cos^(ν−2)θ)]
        if df == 1:
            return 2.0 * theta / math.pi
        term, total = c, c
        for k in range(1, (df - 3) // 2 + 1):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + s * total)
    # 26.7.4: sinθ(1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + … + (1·3…(ν−3))/(2·4…(ν−2)) cos^(ν−2)θ)
    term, total = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def _check_df(df: int) -> None:
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value P(|T| ≥ |t|) of Student's t with integer `df` ≥ 1.

    `t = ±inf` gives 0 and `t = nan` gives nan.
    """
    _check_df(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return min(1.0, max(0.0, 1.0 - _t_central_prob(t, df)))


def t_cdf(t: float, df: int) -> float:
    """The CDF P(T ≤ t) of Student's t with integer `df` ≥ 1."""
    _check_df(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    half_tail = 0.5 * t_two_sided_p(t, df)
    return 1.0 - half_tail if t >= 0 else half_tail


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


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired t-test of `a − b`.

    `mean_diff` and `std_diff` describe the paired differences (std with ddof=1);
    `t`, `df` and `p` are nan / 0 when the test cannot run (fewer than 2 pairs).
    """

    n: int
    mean_diff: float
    std_diff: float
    t: float
    df: int
    p: float

    @property
    def testable(self) -> bool:
        """Whether there were enough pairs (≥ 2) for a test."""
        return self.n >= 2

    def mark(self, alpha: float) -> str:
        """`"↑"` if a is significantly better than b at two-sided level `alpha`, `"↓"` if worse, else `""`."""
        if not self.testable or math.isnan(self.p) or self.p >= alpha:
            return ""
        return "↑" if self.mean_diff > 0 else "↓"


# Differences smaller than this (in accuracy points) count as zero: accuracies are
# ratios of counts, and float noise must not turn "identical" into "significant".
_ZERO = 1e-9


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> PairedTest:
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
        return PairedTest(n=n, mean_diff=mean, std_diff=std, t=math.nan, df=0, p=math.nan)
    df = n - 1
    if std <= _ZERO:
        if abs(mean) <= _ZERO:
            return PairedTest(n=n, mean_diff=mean, std_diff=0.0, t=0.0, df=df, p=1.0)
        return PairedTest(n=n, mean_diff=mean, std_diff=0.0, t=math.copysign(math.inf, mean), df=df, p=0.0)
    t = mean / (std / math.sqrt(n))
    return PairedTest(n=n, mean_diff=mean, std_diff=std, t=t, df=df, p=t_two_sided_p(t, df))
