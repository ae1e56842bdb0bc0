"""The distributions the report's statistics need, in plain Python: normal, Student's t and noncentral t.

- Student's t CDF: for integer degrees of freedom up to 1000, the closed forms of
  Abramowitz & Stegun 26.7.3 (ν odd) and 26.7.4 (ν even); otherwise (Welch's fractional
  df, or very large ν) through the regularized incomplete beta function, A&S 26.5.27 and
  26.7.1, evaluated by its continued fraction (A&S 26.5.8) with the modified Lentz method
  (Press et al., *Numerical Recipes*, 3rd ed., §6.4).
- Quantiles: the CDF inverted by Newton steps kept inside a bisection bracket.
- Noncentral t CDF: the Poisson mixture of incomplete beta functions of Lenth (1989,
  *Applied Statistics* 38:185–189, algorithm AS 243), summed outwards from the Poisson
  mode as Benton & Krishnamoorthy (2003, *Computational Statistics & Data Analysis*
  43:249–267) do, so that large noncentralities neither underflow nor lose terms.

The test suite checks every function against SciPy values stored in
`tests/fixtures/stats_golden.json` (the script that wrote them is beside it).
"""

from __future__ import annotations

import math

__all__ = ["betainc", "normal_cdf", "nct_cdf", "nct_sf", "t_cdf", "t_pdf", "t_ppf", "t_sf", "t_two_sided_p"]

_EPS = 1e-16
_CLOSED_FORM_MAX_DF = 1000  # the closed forms sum ν/2 terms: beyond this the continued fraction is faster
_NEGLIGIBLE = 1e-25  # absolute: a noncentral t term below this does not move a probability


def normal_cdf(x: float) -> float:
    """Φ(x), the standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (A&S 26.5.8) by the modified Lentz method."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _check_df(df: float) -> None:
    if isinstance(df, bool) or not isinstance(df, (int, float)) or not df > 0 or math.isinf(df):
        raise ValueError(f"degrees of freedom must be a positive number, got {df!r}")


def _closed_form(df: float) -> bool:
    """Whether the closed forms (integer ν up to `_CLOSED_FORM_MAX_DF`) give A(t|ν)."""
    return float(df).is_integer() and df <= _CLOSED_FORM_MAX_DF


def _central_prob(t: float, df: float) -> float:
    """A(t|ν) = P(|T| < |t|) for Student's t with ν = `df` degrees of freedom."""
    if _closed_form(df):
        return _central_prob_closed(abs(t), int(df))
    return betainc(0.5, df / 2.0, t * t / (df + t * t)) if t else 0.0  # A&S 26.7.1 with 26.5.27


def _central_prob_closed(t: float, df: int) -> float:
    # A&S 26.7.3 (ν odd) and 26.7.4 (ν even) with θ = atan(|t|/√ν); ν/2 terms, exact up to rounding.
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    if df % 2 == 1:
        # (2/π)[θ + sinθ(cosθ + (2/3)cos³θ + … + (2·4…(ν−3))/(1·3…(ν−2)) cos^(ν−2)θ)]
        if df == 1:
            return 2.0 * theta / math.pi
        term, total = c, c
        for k in range(1, (df - 3) // 2 + 1):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + s * total)
    # sinθ(1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + … + (1·3…(ν−3))/(2·4…(ν−2)) cos^(ν−2)θ)
    term, total = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value P(|T| ≥ |t|) of Student's t with `df` > 0 degrees of freedom (`t = ±inf` gives 0)."""
    _check_df(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    if abs(t) > 1.0 and not _closed_form(df):
        # The upper tail directly (A&S 26.7.1 with 26.5.27): no cancellation in 1 − A for large |t|.
        return min(1.0, betainc(df / 2.0, 0.5, df / (df + t * t)))
    return min(1.0, max(0.0, 1.0 - _central_prob(t, df)))


def t_sf(t: float, df: float) -> float:
    """The survival function P(T > t) of Student's t."""
    _check_df(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    half_tail = 0.5 * t_two_sided_p(t, df)
    return half_tail if t >= 0 else 1.0 - half_tail


def t_cdf(t: float, df: float) -> float:
    """The CDF P(T ≤ t) of Student's t: P(T > −t), by symmetry."""
    _check_df(df)
    return t_sf(-t, df)


def t_pdf(t: float, df: float) -> float:
    """The density of Student's t."""
    _check_df(df)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))


def t_ppf(p: float, df: float) -> float:
    """The quantile of Student's t: the t with P(T ≤ t) = `p`, for 0 < p < 1."""
    _check_df(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -_upper_quantile(p, df)
    if p == 0.5:
        return 0.0
    return _upper_quantile(1.0 - p, df)


def _upper_quantile(q: float, df: float) -> float:
    """The t > 0 with P(T > t) = q (q < 1/2): Newton steps inside a bisection bracket."""
    if df == 1:
        return math.tan(math.pi * (0.5 - q))
    if df == 2:
        return (1 - 2 * q) / math.sqrt(2 * q * (1 - q))
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > q:
        lo, hi = hi, hi * 2.0
    t = 0.5 * (lo + hi)
    for _ in range(200):
        f = t_sf(t, df) - q
        if f > 0:
            lo = t
        else:
            hi = t
        step = f / t_pdf(t, df)  # sf' = −pdf, so Newton adds f/pdf
        new = t + step
        if not lo < new < hi:
            new = 0.5 * (lo + hi)
        if abs(new - t) <= 1e-15 * max(1.0, abs(t)):
            return new
        t = new
    return t


def nct_cdf(t: float, df: float, nc: float) -> float:
    """P(T ≤ t) for the noncentral t with `df` degrees of freedom and noncentrality `nc`."""
    _check_df(df)
    if math.isnan(t) or math.isnan(nc):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    if t < 0:
        return min(1.0, max(0.0, 1.0 - _nct_cdf_nonneg(-t, df, -nc)))
    return min(1.0, max(0.0, _nct_cdf_nonneg(t, df, nc)))


def nct_sf(t: float, df: float, nc: float) -> float:
    """P(T > t) for the noncentral t."""
    if t >= 0:
        return min(1.0, max(0.0, 1.0 - nct_cdf(t, df, nc)))
    return min(1.0, max(0.0, _nct_cdf_nonneg(-t, df, -nc)))


def _nct_cdf_nonneg(t: float, df: float, nc: float) -> float:
    """F(t; ν, δ) for t ≥ 0: Φ(−δ) + ½ Σ_j [P_j I_x(j + ½, ν/2) + Q_j I_x(j + 1, ν/2)], x = t²/(t² + ν).

    P_j = e^(−δ²/2) (δ²/2)^j / j! and Q_j = e^(−δ²/2) (δ²/2)^j δ / (√2 Γ(j + 3/2)) (AS 243).
    The sum starts at the Poisson mode k and walks down to 0 and up until the terms vanish.
    """
    base = normal_cdf(-nc)
    if t == 0.0:
        return base
    x = t * t / (t * t + df)
    b = df / 2.0
    half_lambda = nc * nc / 2.0
    k = int(half_lambda)
    log_x, log_1mx = math.log(x), math.log1p(-x)

    def log_poisson(j: int) -> float:
        return -half_lambda + (j * math.log(half_lambda) if j else 0.0) - math.lgamma(j + 1)

    def log_q(j: int) -> float:  # log |Q_j|
        if nc == 0.0:
            return -math.inf
        return (-half_lambda + (j * math.log(half_lambda) if j else 0.0) + math.log(abs(nc))
                - 0.5 * math.log(2.0) - math.lgamma(j + 1.5))

    def log_g(a: float) -> float:  # log of Γ(a+b)/(Γ(a+1)Γ(b)) x^a (1−x)^b: I_x(a,b) − I_x(a+1,b)
        return math.lgamma(a + b) - math.lgamma(a + 1) - math.lgamma(b) + a * log_x + b * log_1mx

    sign = 1.0 if nc >= 0 else -1.0
    p_k, q_k = math.exp(log_poisson(k)), sign * math.exp(log_q(k))
    i_odd_k, i_even_k = betainc(k + 0.5, b, x), betainc(k + 1.0, b, x)
    g_odd_k, g_even_k = math.exp(log_g(k + 0.5)), math.exp(log_g(k + 1.0))

    total = p_k * i_odd_k + q_k * i_even_k
    # Every I lies in [0, 1], so a term is at most P_j + |Q_j|: the walk stops, in each
    # direction, once those weights are negligible (a Poisson tail: O(√k) steps from the mode).
    # Downwards: I grows as j falls (I(a−1) = I(a) + g(a−1)).
    p, q, i_odd, i_even, g_odd, g_even = p_k, q_k, i_odd_k, i_even_k, g_odd_k, g_even_k
    for j in range(k, 0, -1):
        p *= j / half_lambda
        q *= (j + 0.5) / half_lambda
        g_odd *= (j + 0.5) / (x * (j - 0.5 + b))  # g(a−1) = g(a)·a / (x (a+b−1)), a = j + ½
        g_even *= (j + 1.0) / (x * (j + b))       # a = j + 1
        i_odd, i_even = min(i_odd + g_odd, 1.0), min(i_even + g_even, 1.0)
        total += p * i_odd + q * i_even
        if p + abs(q) < _NEGLIGIBLE:
            break
    # Upwards: the Poisson weights and I both fall.
    p, q, i_odd, i_even, g_odd, g_even = p_k, q_k, i_odd_k, i_even_k, g_odd_k, g_even_k
    j = k
    while True:
        i_odd, i_even = max(i_odd - g_odd, 0.0), max(i_even - g_even, 0.0)
        g_odd *= x * (j + 0.5 + b) / (j + 1.5)   # g(a+1) = g(a)·x (a+b) / (a+1)
        g_even *= x * (j + 1.0 + b) / (j + 2.0)
        j += 1
        p *= half_lambda / j
        q *= half_lambda / (j + 0.5)
        total += p * i_odd + q * i_even
        if (p + abs(q)) * max(i_odd, i_even) < _NEGLIGIBLE or p + abs(q) < _NEGLIGIBLE:
            break
    return base + 0.5 * total
