"""A router learned from a team's own traffic: outcome labels the gateway recorded (a shadow copy of a
request sent to the other route, labelled by whether the two answers agree: `routing/shadow_labels.py`,
or by a judge route), split by time — fitted on the earlier part, judged on the later — with two simple,
well-understood models over the embedding the gateway already computes: logistic regression (embedding
and text counts, as `gateway router train` fits) and nearest neighbours (`knn.py`). Whichever does
better on the held-out part is kept, as a new version, with a card saying how it did.

Quality as the router sees it: the cheaper route's answer is worth 1 where it agreed with the stronger
one and 0 where it did not; the stronger route's is worth 1. A router's curve is then the share of
requests answered as well as by the stronger route, against the share sent there; random routing is the
straight line. Figures: APGR with a bootstrap 95 % interval, the strong-call share for 95 % quality, and
a permutation test's p-value against random (the chance a random ordering of the held-out requests does
as well).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from gateway.router.guard import card_path
from gateway.router.knn import DEFAULT_K, nearest_share, save_knn
from gateway.router.metrics import curve, random_curve
from gateway.router.recorded import RecordedOutcome
from gateway.router.significance import judge

HELD_OUT_SHARE = 0.3
QUALITY_TARGET = 0.95
# Fewer labelled requests than this on either side: nothing to learn or judge from.
LEAST_ROWS = 20


@dataclass(frozen=True, slots=True)
class HeldOut:
    """How a router did on the later, held-out requests."""

    model: str
    requests: int
    agree_share: float
    apgr: float
    apgr_low: float
    apgr_high: float
    random_apgr: float
    p_value: float
    share_at_target: float | None
    random_share_at_target: float | None

    @property
    def gain(self) -> float:
        return self.apgr - self.random_apgr


@dataclass(frozen=True, slots=True)
class Retrained:
    team: str | None
    fitted: int
    fitted_until: float
    results: list[HeldOut]
    kept: HeldOut


def split_by_time(
    rows: Sequence[RecordedOutcome], held_out_share: float = HELD_OUT_SHARE
) -> tuple[list[RecordedOutcome], list[RecordedOutcome]]:
    ordered = sorted(rows, key=lambda row: row.at)
    cut = round(len(ordered) * (1 - held_out_share))
    return ordered[:cut], ordered[cut:]


def evaluate(
    rows: Sequence[RecordedOutcome], held_out_share: float = HELD_OUT_SHARE, k: int = DEFAULT_K
) -> tuple[Retrained, dict[str, Any]]:
    """Fit both models on the earlier rows, judge them on the later ones; the results, and what is
    needed to write the kept model (`write_kept`). ValueError when there are too few rows."""
    fit, held = split_by_time(rows, held_out_share)
    if len(fit) < LEAST_ROWS or len(held) < LEAST_ROWS:
        raise ValueError(
            f"{len(rows)} labelled requests: at least {LEAST_ROWS} are needed on each side of the time split"
        )
    needs = np.array([not row.agree for row in fit])
    held_needs = np.array([not row.agree for row in held])
    vectors = np.stack([row.vector for row in fit]).astype(np.float32)
    held_vectors = np.stack([row.vector for row in held]).astype(np.float32)
    counts = np.stack([row.counts for row in fit])
    held_counts = np.stack([row.counts for row in held])
    logistic = fit_logistic(vectors, counts, needs)
    scores = {
        "logistic": logistic.scores(held_vectors, held_counts),
        "knn": nearest_share(vectors, needs.astype(np.float32), held_vectors, k),
    }
    results = [_judge(name, score, held_needs) for name, score in scores.items()]
    kept = max(results, key=lambda result: result.apgr)
    retrained = Retrained(rows[0].team if rows else None, len(fit), fit[-1].at, results, kept)
    state = {
        "logistic": logistic, "vectors": vectors, "needs": needs, "k": k,
        "held_scores": scores, "held_needs": held_needs,
    }  # fmt: skip
    return retrained, state


CURVE_POINTS = 21


def write_kept(
    retrained: Retrained, state: dict[str, Any], directory: Path, curves: dict[str, Any] | None = None
) -> Path:
    """The kept model as the next version in `directory` (`v1.npz`, `v2.npz`, …) with its card."""
    directory.mkdir(parents=True, exist_ok=True)
    versions = [int(path.stem[1:]) for path in directory.glob("v*.npz") if path.stem[1:].isdigit()]
    path = directory / f"v{max(versions, default=0) + 1}.npz"
    trained_on = f"recorded traffic of {retrained.team or 'all teams'} until {retrained.fitted_until:.0f}"
    if retrained.kept.model == "knn":
        save_knn(path, state["vectors"], state["needs"], state["k"], trained_on)
    else:
        state["logistic"].save(path, trained_on, retrained.fitted)
    card = {
        "team": retrained.team, "model": retrained.kept.model, "fitted": retrained.fitted,
        "fitted_until": retrained.fitted_until, "held_out": asdict(retrained.kept),
        "compared": [asdict(result) for result in retrained.results],
    }  # fmt: skip
    if curves is not None:  # the kept model's and random routing's, a few points each, for the dashboard
        card["curve"] = {name: _points(curves[name]) for name in (retrained.kept.model, "random")}
    card_path(path).write_bytes(orjson.dumps(card, option=orjson.OPT_INDENT_2))
    return path


def print_table(retrained: Retrained, target: float = QUALITY_TARGET) -> None:
    print(
        f"own traffic of {retrained.team or 'all teams'}: fitted on the first {retrained.fitted:,} labelled"
        f" requests, judged on the {retrained.kept.requests:,} after them"
    )
    print(
        f"{'model':<10} {'APGR':>6} {'95% interval':>16} {'random':>7} {'p':>7}"
        f" {'strong for ' + format(target, '.0%'):>16} {'random':>8}"
    )
    for result in retrained.results:
        share = "never" if result.share_at_target is None else f"{result.share_at_target:.1%}"
        random_share = (
            "never" if result.random_share_at_target is None else f"{result.random_share_at_target:.1%}"
        )
        interval = f"[{result.apgr_low:.3f}, {result.apgr_high:.3f}]"
        print(
            f"{result.model:<10} {result.apgr:>6.3f} {interval:>16} {result.random_apgr:>7.3f}"
            f" {result.p_value:>7.3f} {share:>16} {random_share:>8}"
        )
    print(f"kept: {retrained.kept.model}", file=sys.stderr)


def plot(path: Path, retrained: Retrained, curves: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=110)
    colours = {"logistic": "#0072B2", "knn": "#CC79A7", "random": "#E69F00"}
    for name, drawn in curves.items():
        axes.plot(drawn.shares, drawn.quality, color=colours.get(name, "#999999"), label=name)
    axes.axhline(QUALITY_TARGET, color="#999999", linestyle="--", linewidth=1, label="95 % quality")
    axes.set_xlabel("share of requests sent to the stronger route")
    axes.set_ylabel("share answered as well as by it")
    axes.set_title(f"Routing on held-out own traffic ({retrained.kept.requests:,} requests)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def held_out_curves(state: dict[str, Any]) -> dict[str, Any]:
    """The held-out curves of both models (from the scores `evaluate` judged them by) and of random
    routing, for the plot and the card."""
    needs = state["held_needs"]
    weak, strong = (~needs).astype(np.float64), np.ones(len(needs))
    drawn: dict[str, Any] = {name: curve(score, weak, strong) for name, score in state["held_scores"].items()}
    drawn["random"] = random_curve(weak, strong)
    return drawn


def _points(drawn: Any) -> list[list[float]]:
    """(strong share, quality) at CURVE_POINTS evenly spaced shares."""
    picks = np.linspace(0, len(drawn.shares) - 1, CURVE_POINTS).round().astype(int)
    return [[round(float(drawn.shares[i]), 4), round(float(drawn.quality[i]), 4)] for i in picks]


def _judge(name: str, scores: npt.NDArray[np.float64], needs: npt.NDArray[np.bool_]) -> HeldOut:
    weak, strong = (~needs).astype(np.float64), np.ones(len(needs))
    judged = judge(scores, weak, strong, QUALITY_TARGET)
    result = judged.figures
    return HeldOut(
        name, len(needs), float(weak.mean()), result.apgr, judged.apgr_low, judged.apgr_high,
        result.random_apgr, judged.p_value, result.share_at_target, result.random_share_at_target,
    )  # fmt: skip


@dataclass
class Logistic:
    """The router's logistic model (`gateway router train`'s) over embeddings and standardised text
    counts; `model` is None when every fitted request had the same label (it then scores 0)."""

    model: Any
    mean: npt.NDArray[np.float64]
    spread: npt.NDArray[np.float64]

    def scores(
        self, vectors: npt.NDArray[np.float32], counts: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        from gateway.router.features import design

        if self.model is None:  # one class only in fitting
            return np.zeros(len(vectors))
        probabilities: npt.NDArray[np.float64] = self.model.predict_proba(
            design(vectors, counts, self.mean, self.spread)
        )[:, 1]
        return probabilities

    def save(self, path: Path, trained_on: str, prompts: int) -> None:
        from gateway.router.model import save_router

        if self.model is None:
            raise ValueError("every fitted request had the same label: there is no logistic model to keep")
        save_router(
            path,
            self.model.coef_[0],
            float(self.model.intercept_[0]),
            (self.mean, self.spread),
            trained_on,
            prompts,
        )


def fit_logistic(
    vectors: npt.NDArray[np.float32], counts: npt.NDArray[np.float64], needs: npt.NDArray[np.bool_]
) -> Logistic:
    from sklearn.linear_model import LogisticRegression

    from gateway.router.features import design, standardiser

    mean, spread = standardiser(counts)
    if needs.all() or not needs.any():
        return Logistic(None, mean, spread)
    model = LogisticRegression(C=1.0, max_iter=3000).fit(design(vectors, counts, mean, spread), needs)
    return Logistic(model, mean, spread)
