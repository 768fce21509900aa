"""bench.noise's statistics without scipy: the χ² quantile against closed forms and printed table values."""

import math

import pytest

from bench.noise import chi2_interval, chi2_quantile


@pytest.mark.parametrize("p", [0.025, 0.5, 0.975])
def test_chi2_quantile_with_two_degrees_of_freedom_is_the_exponential_one(p):
    # χ²(2) is the exponential distribution of mean 2: F(x) = 1 - exp(-x/2)
    assert chi2_quantile(p, 2) == pytest.approx(-2 * math.log1p(-p), rel=1e-12)


@pytest.mark.parametrize("p, df, table", [(0.975, 1, 5.023886), (0.025, 1, 0.000982069), (0.975, 4, 11.143287),
                                          (0.025, 4, 0.484419), (0.95, 10, 18.307038), (0.05, 29, 17.708366)])
def test_chi2_quantile_matches_the_printed_table(p, df, table):
    assert chi2_quantile(p, df) == pytest.approx(table, rel=2e-6)


def test_chi2_interval_brackets_the_estimate_and_narrows_with_more_degrees_of_freedom():
    lo4, hi4 = chi2_interval(1.0, 4)
    lo40, hi40 = chi2_interval(1.0, 40)
    assert lo4 < lo40 < 1.0 < hi40 < hi4
    assert hi4 == pytest.approx(math.sqrt(4 / 0.484419), rel=2e-6)


@pytest.mark.parametrize("p, df", [(0.0, 3), (1.0, 3), (0.5, 0)])
def test_chi2_quantile_refuses_what_has_no_quantile(p, df):
    with pytest.raises(ValueError, match="chi2_quantile needs 0 < p < 1 and df >= 1"):
        chi2_quantile(p, df)
