"""The own-traffic router on synthetic recorded outcomes: where the labels follow the prompts, both
models beat random on the later, held-out requests (with a small permutation p-value) and the better one
is kept as the next version with its card; where they are noise, neither does, and the figures say so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.router.guard import read_card
from gateway.router.loading import load_router
from gateway.router.own_traffic import LEAST_ROWS, evaluate, split_by_time, write_kept
from gateway.router.recorded import RecordedOutcome


def outcomes(count: int, learnable: bool, seed: int = 1) -> list[RecordedOutcome]:
    generator = np.random.default_rng(seed)
    rows = []
    for n in range(count):
        vector = generator.normal(size=16).astype(np.float32)
        vector /= np.linalg.norm(vector)
        hard = vector[0] > 0.1 if learnable else generator.random() < 0.4
        counts = np.zeros(5)
        rows.append(RecordedOutcome(float(n), "search", agree=not hard, vector=vector, counts=counts))
    return rows


def test_labels_that_follow_the_prompts_are_learned_and_the_winner_kept(tmp_path: Path) -> None:
    retrained, state = evaluate(outcomes(400, learnable=True))
    assert retrained.fitted == 280 and retrained.kept.requests == 120
    for result in retrained.results:
        assert result.apgr > result.random_apgr + 0.15 and result.p_value < 0.01
        assert result.apgr_low <= result.apgr <= result.apgr_high
        assert result.share_at_target is not None and result.random_share_at_target is not None
        assert result.share_at_target < result.random_share_at_target
    first = write_kept(retrained, state, tmp_path / "search")
    second = write_kept(retrained, state, tmp_path / "search")
    assert (first.name, second.name) == ("v1.npz", "v2.npz")
    card = read_card(second)
    assert card is not None and card["team"] == "search" and card["model"] == retrained.kept.model
    model = load_router(second)
    hard, easy = np.eye(16, dtype=np.float32)[0], -np.eye(16, dtype=np.float32)[0]
    assert model.score(hard, "") > model.score(easy, "")


def test_noise_is_not_mistaken_for_a_router() -> None:
    # Five noise sets, two models each: about one in twenty tests comes out "significant" by chance.
    results = [result for seed in range(2, 7) for result in evaluate(outcomes(400, False, seed))[0].results]
    assert sum(result.p_value < 0.05 for result in results) <= 1
    assert abs(float(np.mean([result.gain for result in results]))) < 0.03


def test_the_split_is_by_time_and_needs_enough_on_both_sides() -> None:
    rows = outcomes(100, learnable=True)
    fit, held = split_by_time(list(reversed(rows)))
    assert max(row.at for row in fit) < min(row.at for row in held)
    with pytest.raises(ValueError, match=f"at least {LEAST_ROWS}"):
        evaluate(outcomes(40, learnable=True))
