"""Confidence intervals for a share measured on a sample (the cache's precision, a router's win rate):
Wilson's score interval, which stays inside [0, 1] and behaves at small samples and at shares near 0 or
1, where the normal approximation does not. A pure function."""

from __future__ import annotations

import math
from dataclasses import dataclass

# The normal quantile for a two-sided 95 % interval.
Z95 = 1.959964


@dataclass(frozen=True, slots=True)
class Interval:
    share: float
    low: float
    high: float
    trials: int

    def text(self) -> str:
        return f"{self.share:.3f} [{self.low:.3f}, {self.high:.3f}] n={self.trials:,}"


def wilson(successes: int, trials: int, z: float = Z95) -> Interval:
    """The share `successes / trials` with its Wilson interval; with no trials, [0, 1]."""
    if trials <= 0:
        return Interval(0.0, 0.0, 1.0, 0)
    share = successes / trials
    z2 = z * z
    centre = (share + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return Interval(share, max(0.0, centre - half), min(1.0, centre + half), trials)
