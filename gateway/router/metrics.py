"""How good a router is, as the RouteLLM paper measures it, plus the figures the issue asks for.

A router gives each prompt a score (the probability the strong model is needed). Sending the share
`c` of prompts with the highest scores to the strong model and the rest to the weak one gives a
quality `q(c)`: the mean of the strong model's score on the routed prompts and the weak model's on
the others. Over `c` from 0 to 1 that is the router's curve; random routing is the straight line from
the weak model's mean to the strong model's, and the oracle sends exactly the prompts where the strong
model does better.

- PGR(c), the performance gap recovered: (q(c) - weak) / (strong - weak); APGR is its mean over c.
- The strong share needed for 95%: the least c with q(c) >= 0.95 x the strong model's mean.
- Cost saved there: the share of calls not sent to the strong model, priced with the weak model at
  `weak_cost` times the strong model's cost per call (0: a local model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float64]
# Points on the curve: every prompt count from 0 to all, so the curve is exact, not sampled.


@dataclass(frozen=True, slots=True)
class RoutingCurve:
    shares: Scores
    quality: Scores

    def share_for(self, target: float) -> float | None:
        """The least strong share whose quality reaches `target` (None if none does)."""
        reached = np.flatnonzero(self.quality >= target - 1e-12)
        return float(self.shares[reached[0]]) if reached.size else None


def curve(scores: Scores, weak: Scores, strong: Scores) -> RoutingCurve:
    """Quality when the top-k prompts by score go to the strong model, for every k (ties broken by
    position, so equal scores are routed in a fixed order)."""
    order = np.argsort(-scores, kind="stable")
    gain = (strong - weak)[order]
    quality = (weak.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / len(weak)
    shares = np.arange(len(weak) + 1) / len(weak)
    return RoutingCurve(shares, quality)


def oracle_curve(weak: Scores, strong: Scores) -> RoutingCurve:
    return curve(strong - weak, weak, strong)


def random_curve(weak: Scores, strong: Scores) -> RoutingCurve:
    shares = np.arange(len(weak) + 1) / len(weak)
    return RoutingCurve(shares, weak.mean() + shares * (strong.mean() - weak.mean()))


def apgr(routed: RoutingCurve, weak: Scores, strong: Scores) -> float:
    gap = strong.mean() - weak.mean()
    if gap <= 0:
        return float("nan")
    recovered = (routed.quality - weak.mean()) / gap
    return float(np.trapezoid(recovered, routed.shares))


@dataclass(frozen=True, slots=True)
class RouterFigures:
    prompts: int
    weak: float
    strong: float
    oracle: float
    # Strong-call share needed for `quality_target` x the strong model's score (None: never reached).
    share_at_target: float | None
    random_share_at_target: float | None
    oracle_share_at_target: float | None
    apgr: float
    random_apgr: float
    cost_saved_at_target: float | None


def figures(
    scores: Scores, weak: Scores, strong: Scores, quality_target: float, weak_cost: float
) -> RouterFigures:
    routed, rand, best = curve(scores, weak, strong), random_curve(weak, strong), oracle_curve(weak, strong)
    target = quality_target * strong.mean()
    share = routed.share_for(target)
    return RouterFigures(
        prompts=len(weak),
        weak=float(weak.mean()),
        strong=float(strong.mean()),
        oracle=float(np.maximum(weak, strong).mean()),
        share_at_target=share,
        random_share_at_target=rand.share_for(target),
        oracle_share_at_target=best.share_for(target),
        apgr=apgr(routed, weak, strong),
        random_apgr=apgr(rand, weak, strong),
        cost_saved_at_target=None if share is None else (1 - share) * (1 - weak_cost),
    )
