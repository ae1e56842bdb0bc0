"""kdbench's statistics against SciPy and statsmodels values stored in tests/fixtures/stats_golden.json.

The fixture is written by tests/fixtures/make_stats_golden.py (which needs scipy and
statsmodels; kdbench itself does not). Every value must match to 1e-6.
"""

import json
import math
from pathlib import Path

import pytest

from kdbench.report import distributions as dist
from kdbench.report import stats

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "stats_golden.json").read_text())
FAMILIES = {f["name"]: f for f in GOLDEN["families"]}
TOL = 1e-6


def close(ours, expected, tol=TOL):
    if expected is None:
        return ours is None or (isinstance(ours, float) and math.isnan(ours))
    if isinstance(expected, float) and math.isinf(expected):
        return ours == expected
    return ours == pytest.approx(expected, abs=tol, rel=tol)


def family_cases():
    for f in GOLDEN["families"]:
        for method in f["methods"]:
            yield pytest.param(f["name"], method, id=f"{f['name']}-{method}")


# ---------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("case", GOLDEN["distributions"]["t"], ids=lambda c: f"t={c['t']},df={c['df']}")
def test_t_distribution_matches_scipy(case):
    assert dist.t_cdf(case["t"], case["df"]) == pytest.approx(case["cdf"], abs=1e-12)
    assert dist.t_two_sided_p(case["t"], case["df"]) == pytest.approx(case["two_sided_p"], abs=1e-12)


@pytest.mark.parametrize("case", GOLDEN["distributions"]["t_ppf"], ids=lambda c: f"p={c['p']},df={c['df']}")
def test_t_quantile_matches_scipy(case):
    assert dist.t_ppf(case["p"], case["df"]) == pytest.approx(case["ppf"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("case", GOLDEN["distributions"]["nct"],
                         ids=lambda c: f"t={c['t']},df={c['df']},nc={c['nc']}")
def test_noncentral_t_matches_scipy(case):
    assert dist.nct_cdf(case["t"], case["df"], case["nc"]) == pytest.approx(case["cdf"], abs=1e-9)
    assert dist.nct_sf(case["t"], case["df"], case["nc"]) == pytest.approx(case["sf"], abs=1e-9)


@pytest.mark.parametrize("case", GOLDEN["distributions"]["power"],
                         ids=lambda c: f"d={c['effect']},n={c['n']},a={c['alpha']}")
def test_power_matches_scipy_and_statsmodels(case):
    ours = stats.paired_power(case["effect"], case["n"], case["alpha"])
    assert ours == pytest.approx(case["power"], abs=1e-9)
    if case["power_statsmodels"] is not None:
        assert ours == pytest.approx(case["power_statsmodels"], abs=TOL)


@pytest.mark.parametrize("t, df", [(4.303, 2), (2.776, 4), (12.706, 1), (2.571, 5), (2.228, 10), (2.045, 29)])
def test_textbook_critical_values_give_p_005(t, df):
    assert dist.t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-4)
    assert dist.t_ppf(0.975, df) == pytest.approx(t, abs=1e-3)


def test_distribution_edges():
    assert dist.t_cdf(0.0, 4) == 0.5 and dist.t_ppf(0.5, 7) == 0.0
    assert dist.t_cdf(math.inf, 3) == 1.0 and dist.t_cdf(-math.inf, 3) == 0.0
    assert dist.t_two_sided_p(math.inf, 3) == 0.0 and math.isnan(dist.t_two_sided_p(math.nan, 3))
    for df in (0, -1, True, math.inf):
        with pytest.raises(ValueError):
            dist.t_two_sided_p(1.0, df)
    with pytest.raises(ValueError):
        dist.t_ppf(1.0, 3)
    # The noncentral t with nc = 0 is Student's t; the CDF is monotone in t.
    for t in (-2.0, 0.3, 5.0):
        assert dist.nct_cdf(t, 6, 0.0) == pytest.approx(dist.t_cdf(t, 6), abs=1e-14)
    values = [dist.nct_cdf(t / 4, 3, 2.0) for t in range(-40, 41)]
    assert values == sorted(values)
    # A large noncentrality neither underflows nor loses its mass (more cases at nc = 120 in the fixture).
    assert dist.nct_cdf(250.0, 5000, 250.0) == pytest.approx(0.5, abs=0.02)


# ---------------------------------------------------------------------------- tests of one pair


@pytest.mark.parametrize("name, method", list(family_cases()))
def test_paired_test_interval_power_and_seeds_match(name, method):
    fam = FAMILIES[name]
    expected = fam["results"][method]
    ours_values, base_values = fam["methods"][method], fam["baseline"]
    shared = sorted(set(ours_values) & set(base_values))
    assert [int(s) for s in shared] == expected["seeds"]
    test = stats.paired_ttest([ours_values[s] for s in shared], [base_values[s] for s in shared])
    assert test.n == expected["n"]
    assert close(test.mean_diff, expected["mean_diff"])
    assert close(test.std_diff, expected["std_diff"])
    if expected["p"] is None:
        assert not test.testable
    else:
        assert close(test.t, expected["t"]) and close(test.p, expected["p"])
    low, high = test.interval(fam["alpha"])
    assert close(low, expected["ci_low"]) and close(high, expected["ci_high"])
    n, std = test.n, test.std_diff
    assert close(stats.min_detectable_difference(std, n, fam["alpha"]), expected["mdd"])
    needed = stats.seeds_needed(test.mean_diff, std, fam["alpha"])
    assert close(needed, expected["seeds_needed"])


@pytest.mark.parametrize("fam", GOLDEN["families"], ids=lambda f: f["name"])
def test_holm_matches_statsmodels(fam):
    methods = list(fam["methods"])
    raw = [fam["results"][m]["p"] for m in methods]
    adjusted = stats.holm([math.nan if p is None else p for p in raw])
    for m, ours in zip(methods, adjusted):
        assert close(ours, fam["results"][m]["p_holm"]), m


def test_holm_ties_and_order():
    # Equal p-values get the same adjusted value whatever their order; nan entries stay nan.
    assert stats.holm([0.01, 0.04, 0.04, math.nan]) == pytest.approx([0.03, 0.08, 0.08, math.nan], nan_ok=True)
    assert stats.holm([0.04, 0.01, 0.04]) == pytest.approx([0.08, 0.03, 0.08])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0] and stats.holm([]) == []


@pytest.mark.parametrize("case", GOLDEN["across_pairs"], ids=lambda c: f"{len(c['values'])} values")
def test_mean_interval_across_pairs(case):
    mean, low, high, n = stats.mean_interval(case["values"], case["alpha"])
    assert n == len(case["values"]) and close(mean, case["mean"])
    assert close(low, case["low"]) and close(high, case["high"])


@pytest.mark.parametrize("case", GOLDEN["welch"], ids=lambda c: f"{len(c['a'])}v{len(c['b'])}")
def test_welch_matches_scipy(case):
    test = stats.welch_ttest(case["a"], case["b"])
    assert not test.paired and close(test.t, case["t"]) and close(test.df, case["df"]) and close(test.p, case["p"])
    low, high = test.interval(case["alpha"])
    assert close(low, case["ci_low"]) and close(high, case["ci_high"])


def test_marks_follow_the_given_p_value():
    test = stats.paired_ttest([76.1, 76.5, 76.3], [75.2, 75.9, 75.4])  # scipy: t = 8.0, p = 0.015268
    assert test.mark(0.05) == "↑" and test.mark(0.05, p=0.06) == "" and test.mark(0.01) == ""
    assert stats.paired_ttest([75.2, 75.9, 75.4], [76.1, 76.5, 76.3]).mark(0.05) == "↓"


def test_zero_variance_and_one_pair():
    same = stats.paired_ttest([70.0, 71.0, 72.0], [70.0, 71.0, 72.0])
    assert same.p == 1.0 and same.mark(0.05) == "" and same.interval(0.05) == (0.0, 0.0)
    shifted = stats.paired_ttest([70.3, 71.3, 72.3], [70.0, 71.0, 72.0])
    assert shifted.p == 0.0 and shifted.t == math.inf and shifted.mark(0.05) == "↑" and shifted.zero_variance
    one = stats.paired_ttest([70.0], [60.0])
    assert not one.testable and math.isnan(one.p) and one.mark(0.05) == "" and one.mean_diff == 10.0
    assert all(math.isnan(x) for x in one.interval(0.05))
    with pytest.raises(ValueError):
        stats.paired_ttest([1.0, 2.0], [1.0])


def test_power_helpers_edges():
    assert math.isnan(stats.min_detectable_difference(0.0, 5)) and math.isnan(stats.min_detectable_difference(0.3, 1))
    assert math.isnan(stats.seeds_needed(0.5, 0.0)) and stats.seeds_needed(0.0, 0.3) == math.inf
    assert stats.seeds_needed(1e-4, 1.0, max_n=1000) == math.inf
    assert stats.seeds_needed(50.0, 1.0) == 2
    # The seeds needed reach the target power, one fewer does not.
    n = stats.seeds_needed(0.3, 0.5)
    assert stats.paired_power(0.6, n) >= 0.8 > stats.paired_power(0.6, n - 1)


def test_mean_std():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    m, s, n = stats.mean_std([5.0])
    assert (m, n) == (5.0, 1) and math.isnan(s)
    assert stats.mean_std([])[2] == 0
