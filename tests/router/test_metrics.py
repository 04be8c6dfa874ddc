"""Routing curves, APGR and the strong share needed for a quality target."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.router.metrics import apgr, curve, figures, oracle_curve, random_curve

# Four prompts: the strong model helps on the first two only.
WEAK = np.array([0.0, 0.0, 1.0, 1.0])
STRONG = np.array([1.0, 1.0, 1.0, 0.0])


def test_a_perfect_router_is_the_oracle_and_a_reversed_one_is_worse_than_random() -> None:
    perfect = curve(np.array([0.9, 0.8, 0.1, 0.0]), WEAK, STRONG)
    assert (
        perfect.quality.tolist() == oracle_curve(WEAK, STRONG).quality.tolist() == [0.5, 0.75, 1.0, 1.0, 0.75]
    )
    reversed_ = curve(np.array([0.0, 0.1, 0.8, 0.9]), WEAK, STRONG)
    assert reversed_.quality.tolist() == [0.5, 0.25, 0.25, 0.5, 0.75]
    assert (
        apgr(reversed_, WEAK, STRONG) < apgr(random_curve(WEAK, STRONG), WEAK, STRONG) == pytest.approx(0.5)
    )
    assert apgr(perfect, WEAK, STRONG) > 1.0  # the oracle beats the strong model alone here


def test_the_share_for_a_target_is_the_least_that_reaches_it() -> None:
    result = figures(np.array([0.9, 0.8, 0.1, 0.0]), WEAK, STRONG, quality_target=0.95, weak_cost=0.0)
    # 95% of the strong mean (0.75) is 0.7125: reached with one of four calls to the strong model.
    assert result.share_at_target == 0.25
    assert result.random_share_at_target == 1.0
    assert result.oracle_share_at_target == 0.25
    assert result.cost_saved_at_target == 0.75
    assert (result.weak, result.strong, result.oracle) == (0.5, 0.75, 1.0)
    never = figures(np.zeros(4), WEAK, np.zeros(4) + 2, quality_target=1.1, weak_cost=0.5)
    assert never.share_at_target is None and never.cost_saved_at_target is None
