"""Wilson's interval against values computed by hand (and by statsmodels' `proportion_confint`)."""

from __future__ import annotations

import pytest

from gateway.intervals import wilson


def test_wilson_matches_known_values() -> None:
    eight_of_ten = wilson(8, 10)
    assert eight_of_ten.share == 0.8
    assert (eight_of_ten.low, eight_of_ten.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    none = wilson(0, 10)
    assert none.low == 0.0 and none.high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10).high == pytest.approx(1.0) and wilson(10, 10).low == pytest.approx(0.7225, abs=1e-4)


def test_an_empty_sample_says_nothing() -> None:
    empty = wilson(0, 0)
    assert (empty.low, empty.high, empty.trials) == (0.0, 1.0, 0)


def test_more_trials_narrow_the_interval() -> None:
    small, large = wilson(95, 100), wilson(9500, 10000)
    assert small.share == large.share
    assert large.high - large.low < (small.high - small.low) / 5
