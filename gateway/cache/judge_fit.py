"""`gateway cache calibrate --train SET… --test SET…`: fit the cache's judge (`pair_judge.py`) on
labelled pairs of some sources, choose its threshold for each tolerated wrong-hit rate, and judge it on
pairs it was not fitted on — per source, beside plain cosine and the verifier alone, with 95 % intervals.

A SET is `PATH[:SPLIT]`: a JSON-lines file of pairs (`text_a`, `text_b`, `label`) and which side of its
fixed group split (`pairs.split_pairs`): `train`, `held-out`, `all` (the default), or the verifier's
own `validation` slice of the train side (pairs the shipped verifier was not fitted on). Its source is
named by the file's folder and name (`qqp/pairs`).

Scores (each pair's cosine, as the index computes it, and the verifier's probability where the cosine
passes the candidate floor) are the slow part — a few milliseconds a pair — and are kept under
`--scores-dir`, keyed by the file's content, the split and the models, so a second run is instant.

Thresholds: for a rate r, each calibration source gives the lowest judge threshold at which the upper
end of the 95 % Wilson interval of its wrong-hit rate (wrong among accepted) is at most r, with at least
`MIN_ACCEPTED` pairs accepted; the judge takes the highest of those (every source must hold).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from gateway.cache.pair_judge import DEFAULT_PATH as JUDGE_PATH
from gateway.cache.pair_judge import FEATURES, PairJudge, pair_features
from gateway.cache.pair_scores import candidate_cosines, verified_scores
from gateway.cache.pairs import Pair, read_pairs, split_pairs
from gateway.cache.semantic_index import CANDIDATE_FLOOR
from gateway.cache.verifier import DEFAULT_PATH as VERIFIER_PATH
from gateway.intervals import Interval, wilson

RATES = (0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2)
MIN_ACCEPTED = 30
# The recall at which the three scorers' precision is compared.
COMPARED_RECALL = 0.20
SPLIT_NAMES = ("train", "held-out", "all", "validation")

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ScoredSet:
    name: str
    pairs: list[Pair]
    labels: npt.NDArray[np.bool_]
    cosines: Floats
    verified: Floats

    def features(self) -> npt.NDArray[np.float64]:
        return np.array([
            pair_features(pair.text_a, pair.text_b, float(cosine), float(verified))
            for pair, cosine, verified in zip(self.pairs, self.cosines, self.verified, strict=True)
        ])  # fmt: skip

    def judged(self, judge: PairJudge) -> Floats:
        """The judge's probability per pair; 0 where the cosine misses the candidate floor (never a hit)."""
        scores = np.array([judge.of_features(tuple(row)) for row in self.features()])
        scores[self.cosines < CANDIDATE_FLOOR] = 0.0
        return scores


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", nargs="+", metavar="SET", help="PATH[:SPLIT] to fit the judge on")
    parser.add_argument("--test", nargs="+", metavar="SET", help="PATH[:SPLIT] to judge it on")
    parser.add_argument("--max-error", type=float, default=0.05, help="the wrong-hit rate to report at")
    parser.add_argument("--output", type=Path, help=f"write the fitted judge here (shipped: {JUDGE_PATH})")
    parser.add_argument("--scores-dir", type=Path, default=Path(".gateway/pair-scores"))


def pairs_of(spec: str) -> tuple[str, list[Pair]]:
    """The source name and pairs a SET names."""
    path_text, _, split = (
        spec.rpartition(":") if spec.rpartition(":")[2] in SPLIT_NAMES else (spec, "", "all")
    )
    path = Path(path_text)
    pairs = read_pairs(path)
    if split == "validation":
        chosen = split_pairs(split_pairs(pairs, "train"), "held-out", held_out_share=0.1, salt="validation")
    else:
        chosen = split_pairs(pairs, split)  # type: ignore[arg-type]
    return f"{path.parent.name}/{path.stem}:{split}", chosen


def score_set(
    spec: str, scores_dir: Path, embedder: Callable[[], Any], verifier: Callable[[], Any], models: str
) -> ScoredSet:
    """A SET's pairs scored (from `scores_dir` when scored before with the same models)."""
    name, pairs = pairs_of(spec)
    digest = hashlib.sha256(models.encode())
    for pair in pairs:
        digest.update(f"{pair.text_a}\0{pair.text_b}\0{int(pair.same)}\n".encode())
    kept = scores_dir / f"{digest.hexdigest()[:24]}.npz"
    labels = np.array([pair.same for pair in pairs])
    if kept.is_file():
        saved = np.load(kept)
        return ScoredSet(
            name, pairs, labels, saved["cosines"].astype(np.float64), saved["verified"].astype(np.float64)
        )
    print(f"scoring {name}: {len(pairs):,} pairs", file=sys.stderr)
    cosines = candidate_cosines(pairs, embedder())
    verified = verified_scores(pairs, cosines, verifier().score)
    scores_dir.mkdir(parents=True, exist_ok=True)
    np.savez(kept, cosines=cosines, verified=verified)
    return ScoredSet(name, pairs, labels, cosines.astype(np.float64), verified.astype(np.float64))


def fit(sets: Sequence[ScoredSet]) -> tuple[float, ...]:
    """The judge's weights: a logistic model of same-intent on the pair's features (`pair_features`),
    fitted on the candidate pairs (cosine at least the floor) of all `sets`, each source weighted
    equally."""
    from sklearn.linear_model import LogisticRegression

    features, labels, weights = [], [], []
    for scored in sets:
        candidate = scored.cosines >= CANDIDATE_FLOOR
        count = int(candidate.sum())
        if count == 0:
            continue
        features.append(scored.features()[candidate])
        labels.append(scored.labels[candidate])
        weights.append(np.full(count, 1.0 / count))
    model = LogisticRegression(C=10.0, max_iter=1000)
    model.fit(np.vstack(features), np.concatenate(labels), sample_weight=np.concatenate(weights) * 1000)
    return (float(model.intercept_[0]), *(float(value) for value in model.coef_[0]))


def accepted_at(scores: Floats, labels: npt.NDArray[np.bool_], threshold: float) -> tuple[int, int]:
    """(pairs accepted, wrong among them) at `threshold`."""
    accepted = scores >= threshold
    return int(accepted.sum()), int((accepted & ~labels).sum())


def lowest_threshold(scores: Floats, labels: npt.NDArray[np.bool_], rate: float) -> float:
    """The lowest threshold at which the upper end of the 95 % interval of the wrong-hit rate (wrong
    among all pairs accepted at it) is at most `rate`, with at least MIN_ACCEPTED accepted; 1.0: none."""
    order = np.argsort(-scores, kind="stable")
    ranked, wrong = scores[order], np.cumsum(~labels[order])
    best = 1.0
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    for end in ends.tolist():
        if ranked[end] <= 0:
            break
        accepted = end + 1
        if accepted >= MIN_ACCEPTED and wilson(int(wrong[end]), accepted).high <= rate:
            best = float(ranked[end])
    return best


def thresholds(sets: Sequence[ScoredSet], weights: tuple[float, ...]) -> dict[str, float]:
    judge = PairJudge(weights, {})
    judged = [(scored.judged(judge), scored.labels) for scored in sets]
    return {
        f"{rate:g}": max(lowest_threshold(scores, labels, rate) for scores, labels in judged)
        for rate in RATES
    }


def precision_at_recall(scores: Floats, labels: npt.NDArray[np.bool_], recall: float) -> Interval:
    """Precision (with its interval) at the strictest threshold that reaches `recall`."""
    positives = max(int(labels.sum()), 1)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(labels[order])
    reached = np.flatnonzero((hits / positives >= recall) & (ranked > 0))
    if reached.size == 0:
        return Interval(0.0, 0.0, 0.0, 0)
    end = int(reached[0])
    # Accepting at that score accepts every pair tied with it.
    while end + 1 < len(ranked) and ranked[end + 1] == ranked[end]:
        end += 1
    return wilson(int(hits[end]), end + 1)


def evaluate(scored: ScoredSet, judge: PairJudge, max_error: float) -> dict[str, Any]:
    judged = scored.judged(judge)
    threshold = judge.threshold_for(max_error)
    accepted, wrong = accepted_at(judged, scored.labels, threshold)
    positives = int(scored.labels.sum())
    right = accepted - wrong
    compared = {
        "cosine": precision_at_recall(
            np.where(scored.cosines >= CANDIDATE_FLOOR, scored.cosines, 0.0), scored.labels, COMPARED_RECALL
        ),
        "verifier": precision_at_recall(scored.verified, scored.labels, COMPARED_RECALL),
        "judge": precision_at_recall(judged, scored.labels, COMPARED_RECALL),
    }
    return {
        "source": scored.name,
        "pairs": len(scored.labels),
        "positives": positives,
        "precision_at_recall_0.20": {name: _interval(value) for name, value in compared.items()},
        "at_max_error": {
            "max_error": max_error,
            "threshold": round(threshold, 6),
            "accepted": accepted,
            "wrong_hit_rate": _interval(wilson(wrong, accepted)),
            "recall": round(right / positives, 4) if positives else 0.0,
        },
    }


def run(args: argparse.Namespace) -> int:
    from gateway.cache.verifier import Verifier
    from gateway.embedding.embedder import Embedder, default_model_path

    embedder_path = args.embedder or default_model_path()
    models = f"{_identity(embedder_path)}|{_identity(args.verifier or VERIFIER_PATH)}|128"
    loaded: dict[str, Any] = {}

    def embedder() -> Any:
        return loaded.setdefault("embedder", Embedder(embedder_path, max_tokens=128))

    def verifier() -> Any:
        return loaded.setdefault("verifier", Verifier(args.verifier or VERIFIER_PATH))

    train = [score_set(spec, args.scores_dir, embedder, verifier, models) for spec in args.train]
    test = [score_set(spec, args.scores_dir, embedder, verifier, models) for spec in args.test]
    weights = fit(train)
    judge = PairJudge(weights, thresholds(train, weights), [scored.name for scored in train])
    results = [evaluate(scored, judge, args.max_error) for scored in test]
    judge = PairJudge(judge.weights, judge.thresholds, judge.trained_on, {"test": results})
    _print(judge, results, args.max_error)
    if args.output:
        judge.write(args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                {
                    "judge": judge.weights,
                    "trained_on": judge.trained_on,
                    "thresholds": judge.thresholds,
                    "test": results,
                },
                option=orjson.OPT_INDENT_2,
            )
        )
    if args.png:
        _plot(args.png, test, judge)
        print(f"wrote {args.png}", file=sys.stderr)
    held = all(
        result["at_max_error"]["wrong_hit_rate"]["share"] <= args.max_error
        and result["precision_at_recall_0.20"]["judge"]["share"]
        >= result["precision_at_recall_0.20"]["cosine"]["share"]
        for result in results
    )
    return 0 if held else 1


def _identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}"


def _interval(value: Interval) -> dict[str, float | int]:
    return {
        "share": round(value.share, 4),
        "low": round(value.low, 4),
        "high": round(value.high, 4),
        "n": value.trials,
    }


def _print(judge: PairJudge, results: list[dict[str, Any]], max_error: float) -> None:
    print(f"judge fitted on {', '.join(judge.trained_on)}")
    terms = " + ".join(f"{w:.3f} * {name}" for w, name in zip(judge.weights[1:], FEATURES, strict=True))
    print(f"  logit = {judge.weights[0]:.3f} + {terms}")
    print(
        "  thresholds: "
        + ", ".join(f"max_error {rate}: {value:.4f}" for rate, value in judge.thresholds.items())
    )
    print(f"\nprecision at recall {COMPARED_RECALL:.2f} (95 % interval); the judge at max_error {max_error}:")
    columns = ("cosine", "verifier", "judge", "wrong hits")
    print(f"{'source':<28} {'pairs':>7} " + " ".join(f"{name:>22}" for name in columns) + f" {'recall':>7}")
    for result in results:
        compared = result["precision_at_recall_0.20"]
        at = result["at_max_error"]
        cells = [_cell(compared[name]) for name in ("cosine", "verifier", "judge")]
        print(
            f"{result['source']:<28} {result['pairs']:>7,} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}"
            f" {_cell(at['wrong_hit_rate']):>22} {at['recall']:>7.3f}"
        )


def _cell(value: dict[str, Any]) -> str:
    return f"{value['share']:.3f} [{value['low']:.3f},{value['high']:.3f}]"


def _plot(path: Path, test: Sequence[ScoredSet], judge: PairJudge) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gateway.cache.precision_curve import curve

    figure, panels = plt.subplots(1, len(test), figsize=(4.2 * len(test), 4), dpi=110, squeeze=False)
    colours = {"cosine": "#E69F00", "verifier": "#56B4E9", "judge": "#0072B2"}
    for axes, scored in zip(panels[0], test, strict=True):
        cosine = np.where(scored.cosines >= CANDIDATE_FLOOR, scored.cosines, 0.0)
        for name, scores in (
            ("cosine", cosine),
            ("verifier", scored.verified),
            ("judge", scored.judged(judge)),
        ):
            points = curve(scores.astype(np.float32), scored.labels)
            axes.plot(
                [p.recall for p in points], [p.precision for p in points], color=colours[name], label=name
            )
        axes.axvline(COMPARED_RECALL, color="#999999", linestyle=":", linewidth=1)
        axes.set_title(scored.name, fontsize=9)
        axes.set_xlabel("recall")
        axes.set_ylim(0.5, 1.0)
        axes.set_xlim(0.0, 1.0)
        axes.grid(alpha=0.3)
    panels[0][0].set_ylabel("precision")
    panels[0][0].legend(loc="lower left")
    figure.suptitle("Semantic cache: precision/recall on held-out pairs, by source")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
