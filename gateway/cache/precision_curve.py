"""Precision and recall of a cache's accept rule (score at least a threshold) over labelled pairs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class CurvePoint:
    threshold: float
    precision: float
    recall: float
    # Pairs accepted at this threshold.
    accepted: int


def curve(scores: npt.NDArray[np.float32], labels: npt.NDArray[np.bool_]) -> list[CurvePoint]:
    """One point per distinct positive score, highest threshold first (pairs scoring 0 are never hits)."""
    order = np.argsort(-scores, kind="stable")
    ranked, truth = scores[order], labels[order]
    positives = max(int(labels.sum()), 1)
    true_hits = np.cumsum(truth)
    points = []
    # The last index of each run of equal scores: accepting at that score accepts the whole run.
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    for end in ends.tolist():
        if ranked[end] <= 0:
            break
        accepted = end + 1
        hits = int(true_hits[end])
        points.append(CurvePoint(float(ranked[end]), hits / accepted, hits / positives, accepted))
    return points


def threshold_for(points: list[CurvePoint], precision: float) -> CurvePoint | None:
    """The most permissive point whose precision is at least `precision` (None when none is)."""
    reaching = [point for point in points if point.precision >= precision]
    return max(reaching, key=lambda point: point.recall) if reaching else None


def sample(points: list[CurvePoint], count: int = 20) -> list[CurvePoint]:
    """About `count` points spread evenly over recall, for a printed table."""
    if len(points) <= count:
        return points
    wanted = np.linspace(0, len(points) - 1, count).round().astype(int)
    return [points[i] for i in sorted(set(wanted.tolist()))]
