"""The t distribution and the paired t-test in kdbench.stats (no SciPy at run time)."""

import math

import pytest

from kdbench.report import stats

# Two-sided p-values computed offline with scipy 1.17.1: 2 * scipy.stats.t.sf(|t|, df).
SCIPY_TWO_SIDED = [
    (1.0, 1, 0.5000000000000001),
    (0.3, 1, 0.8144528418445154),
    (0.5, 3, 0.651447964848151),
    (2.0, 5, 0.10193947882985835),
    (3.0, 7, 0.019942126131992536),
    (1.5, 10, 0.16450732644544014),
    (2.5, 29, 0.018325344338426086),
    (-2.0, 6, 0.09242631153167512),
    (5.0, 2, 0.037749551350623724),
    (10.0, 9, 3.578237431924736e-06),
    (2.0, 60, 0.05003304365145747),
    (1.96, 200, 0.051384840845813295),
    (0.0, 3, 1.0),
]


@pytest.mark.parametrize("t, df", [(4.303, 2), (2.776, 4), (12.706, 1), (2.571, 5), (2.228, 10), (2.045, 29)])
def test_textbook_critical_values_give_p_005(t, df):
    assert stats.t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-4)


@pytest.mark.parametrize("t, df, expected", SCIPY_TWO_SIDED)
def test_matches_scipy(t, df, expected):
    assert stats.t_two_sided_p(t, df) == pytest.approx(expected, rel=1e-9, abs=1e-14)


def test_cdf_is_symmetric_and_matches_scipy():
    assert stats.t_cdf(0.0, 4) == 0.5
    assert stats.t_cdf(-2.0, 6) == pytest.approx(0.04621315576583756, rel=1e-9)
    assert stats.t_cdf(0.5, 3) == pytest.approx(0.6742760175759245, rel=1e-9)
    for df in (1, 2, 3, 8):
        assert stats.t_cdf(1.3, df) + stats.t_cdf(-1.3, df) == pytest.approx(1.0)
    assert stats.t_cdf(math.inf, 3) == 1.0 and stats.t_cdf(-math.inf, 3) == 0.0


def test_bad_df_rejected():
    for df in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            stats.t_two_sided_p(1.0, df)


def test_paired_ttest_matches_scipy_ttest_rel():
    # scipy.stats.ttest_rel([76.1, 76.5, 76.3], [75.2, 75.9, 75.4]) -> t = 8.0, p = 0.01526807216533814
    r = stats.paired_ttest([76.1, 76.5, 76.3], [75.2, 75.9, 75.4])
    assert (r.n, r.df) == (3, 2)
    assert r.t == pytest.approx(8.0)
    assert r.p == pytest.approx(0.01526807216533814, rel=1e-9)
    assert r.mean_diff == pytest.approx(0.8)
    assert r.mark(0.05) == "↑"
    # scipy.stats.ttest_rel([76.1, 76.5, 76.3, 75.9], [76.0, 76.6, 76.1, 76.0]) -> p = 0.7608203755144866
    r = stats.paired_ttest([76.1, 76.5, 76.3, 75.9], [76.0, 76.6, 76.1, 76.0])
    assert r.p == pytest.approx(0.7608203755144866, rel=1e-9)
    assert r.mark(0.05) == ""


def test_paired_ttest_worse_is_down():
    assert stats.paired_ttest([75.2, 75.9, 75.4], [76.1, 76.5, 76.3]).mark(0.05) == "↓"


def test_zero_variance_of_differences():
    same = stats.paired_ttest([70.0, 71.0, 72.0], [70.0, 71.0, 72.0])
    assert same.p == 1.0 and same.mark(0.05) == ""
    shifted = stats.paired_ttest([70.3, 71.3, 72.3], [70.0, 71.0, 72.0])
    assert shifted.p == 0.0 and shifted.t == math.inf and shifted.mark(0.05) == "↑"


def test_one_pair_is_not_testable():
    r = stats.paired_ttest([70.0], [60.0])
    assert not r.testable and math.isnan(r.p) and r.mark(0.05) == ""
    assert r.mean_diff == 10.0 and math.isnan(r.std_diff)


def test_mean_std():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    m, s, n = stats.mean_std([5.0])
    assert (m, n) == (5.0, 1) and math.isnan(s)
    assert stats.mean_std([])[2] == 0
