"""How sure a router's figures on held-out prompts are: APGR with a bootstrap 95 % interval (prompts
resampled), and a permutation test against random routing (the share of random orderings of the same
prompts whose APGR is at least the router's). Seeded: the same scores give the same figures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.router.metrics import RouterFigures, apgr, curve, figures

BOOTSTRAP = 300
PERMUTATIONS = 500
SEED = 0
SIGNIFICANCE = 0.05

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Judged:
    figures: RouterFigures
    apgr_low: float
    apgr_high: float
    p_value: float

    @property
    def beats_random(self) -> bool:
        return self.p_value < SIGNIFICANCE and self.figures.apgr > self.figures.random_apgr


def judge(scores: Floats, weak: Floats, strong: Floats, target: float, weak_cost: float = 0.0) -> Judged:
    result = figures(scores, weak, strong, target, weak_cost)
    generator = np.random.default_rng(SEED)
    boot = []
    for _ in range(BOOTSTRAP):
        pick = generator.integers(0, len(weak), len(weak))
        w, s = weak[pick], strong[pick]
        if s.mean() > w.mean():
            boot.append(apgr(curve(scores[pick], w, s), w, s))
    beaten = sum(
        apgr(curve(generator.permutation(scores), weak, strong), weak, strong) >= result.apgr
        for _ in range(PERMUTATIONS)
    )
    low, high = np.percentile(boot, [2.5, 97.5]) if boot else (float("nan"), float("nan"))
    return Judged(result, float(low), float(high), (1 + beaten) / (1 + PERMUTATIONS))
