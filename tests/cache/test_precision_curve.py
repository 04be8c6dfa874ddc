"""Precision/recall points and the threshold chosen for a target precision."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.cache.precision_curve import curve, sample, threshold_for


def test_points_run_from_the_strictest_threshold_and_ties_are_accepted_together() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.5, 0.0], dtype=np.float32)
    labels = np.array([True, True, False, True, True])
    points = curve(scores, labels)
    assert [(p.threshold, p.accepted) for p in points] == [
        (pytest.approx(0.9), 1),
        (pytest.approx(0.8), 3),
        (pytest.approx(0.5), 4),
    ]
    # A pair scored 0 (never a candidate) is never accepted, but counts against recall.
    assert [(p.precision, p.recall) for p in points] == [(1.0, 0.25), (2 / 3, 0.5), (0.75, 0.75)]


def test_the_threshold_is_the_most_permissive_one_that_meets_the_target() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
    labels = np.array([True, False, True, True, False])
    points = curve(scores, labels)
    chosen = threshold_for(points, 0.75)
    assert chosen is not None and chosen.threshold == pytest.approx(0.6)
    assert threshold_for(points, 1.0) is not None  # the first point alone is perfect
    assert threshold_for(curve(scores, ~labels), 0.99) is None


def test_a_sample_keeps_both_ends() -> None:
    scores = np.linspace(1, 0.01, 100).astype(np.float32)
    points = curve(scores, np.ones(100, dtype=bool))
    kept = sample(points, 10)
    assert len(kept) == 10 and kept[0] == points[0] and kept[-1] == points[-1]
