"""The cache's judge: its probability rises with both model scores and falls when the texts name
different numbers, a rule's max_error maps to the table's stricter neighbour (never a looser one), and
its file is refused when it is not a judge's."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cache.pair_judge import DEFAULT_PATH, FEATURES, JudgeMissing, PairJudge, pair_features

# Bias; cosine, verifier log-odds, overlap, numbers differ, length ratio, questions, questions x odds.
JUDGE = PairJudge((-20.0, 15.0, 1.0, 1.0, -3.0, -1.0, 0.0, 0.5), {"0.02": 0.9, "0.05": 0.7, "0.1": 0.5})
A, B = "How do I learn Python in 30 days?", "What is the way to learn Python in 30 days?"


def test_the_probability_rises_with_both_scores_and_falls_for_different_numbers() -> None:
    low = JUDGE.probability(A, B, 0.8, 0.5)
    assert JUDGE.probability(A, B, 0.95, 0.5) > low
    assert JUDGE.probability(A, B, 0.8, 0.99) > low
    assert JUDGE.probability(A, B.replace("30", "60"), 0.8, 0.5) < low
    assert JUDGE.probability(A, B, 0.8, 1.0) < 1.0 and JUDGE.probability(A, B, -1.0, 0.0) < 1e-20


def test_the_features_say_what_they_are() -> None:
    features = dict(zip(FEATURES, pair_features(A, B, 0.9, 0.5), strict=True))
    assert features["cosine"] == 0.9 and features["verifier_log_odds"] == 0.0
    assert features["numbers_differ"] == 0.0 and features["questions"] == 1.0
    assert 0 < features["word_overlap"] < 1
    statements = dict(
        zip(FEATURES, pair_features("The cat sat.", "A cat sat on 2 mats.", 0.9, 0.5), strict=True)
    )
    assert statements["questions"] == 0.0 and statements["numbers_differ"] == 1.0


def test_max_error_takes_the_threshold_of_the_largest_rate_not_above_it() -> None:
    assert JUDGE.threshold_for(0.05) == 0.7
    assert JUDGE.threshold_for(0.07) == 0.7  # between 0.05 and 0.1: held to 0.05's
    assert JUDGE.threshold_for(0.5) == 0.5
    assert JUDGE.threshold_for(0.01) == 1.0  # stricter than the table: nothing is accepted


def test_a_judge_file_comes_back_as_written_and_others_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "judge.json"
    JUDGE.write(path)
    assert PairJudge.read(path) == JUDGE
    path.write_text('{"format": "something-else/1"}')
    with pytest.raises(JudgeMissing, match="not gateway-cache-judge"):
        PairJudge.read(path)
    with pytest.raises(JudgeMissing, match="cannot be read"):
        PairJudge.read(tmp_path / "missing.json")


def test_the_shipped_judge_loads_and_holds_every_rate_it_lists() -> None:
    shipped = PairJudge.read(DEFAULT_PATH)
    assert shipped.trained_on and "0.05" in shipped.thresholds
    # A stricter rate never accepts more.
    rates = sorted(shipped.thresholds, key=float)
    assert [shipped.thresholds[rate] for rate in rates] == sorted(
        (shipped.thresholds[rate] for rate in rates), reverse=True
    )
