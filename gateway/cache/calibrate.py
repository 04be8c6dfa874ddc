"""`gateway cache calibrate PAIRS.jsonl`: how precise the semantic cache is at each threshold, on
labelled pairs, and which `similarity` to put in a rule for a target precision.

With `--train SET… --test SET…` it fits the cache's judge on some sources and judges it on others,
per source (`judge_fit.py`). With one PAIRS file, by default only the held-out side of the fixed split
is scored (the side the shipped verifier never
saw); pass `--split all` for pairs of your own. The plain-cosine curve (the GPTCache method) is
printed beside the verifier's for comparison. Prints a table; `--json` writes the figures, `--png`
draws both curves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.cache import judge_fit
from gateway.cache.pair_scores import candidate_cosines, verified_scores
from gateway.cache.pairs import SPLITS, read_pairs, split_pairs
from gateway.cache.precision_curve import CurvePoint, curve, sample, threshold_for
from gateway.cache.verifier import DEFAULT_PATH, Verifier
from gateway.embedding.embedder import Embedder, default_model_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pairs", type=Path, nargs="?", help="JSON lines: text_a, text_b, label (1 = same intent)"
    )
    parser.add_argument("--split", choices=SPLITS, default="held-out", help="which side of the fixed split")
    parser.add_argument("--target-precision", type=float, default=0.95)
    parser.add_argument("--verifier", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--embedder", type=Path, default=None)
    parser.add_argument("--json", type=Path, help="write the curves and the recommendation here")
    parser.add_argument("--png", type=Path, help="draw the precision/recall curves here")
    judge_fit.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.train or args.test:
        if not (args.train and args.test) or args.pairs is not None:
            print("calibrate takes PAIRS, or both --train and --test", file=sys.stderr)
            return 2
        return judge_fit.run(args)
    if args.pairs is None:
        print("calibrate takes PAIRS, or both --train and --test", file=sys.stderr)
        return 2
    pairs = split_pairs(read_pairs(args.pairs), args.split)
    verifier = Verifier(args.verifier)
    embedder = Embedder(args.embedder or default_model_path(), max_tokens=128)
    labels = np.array([pair.same for pair in pairs])
    cosines = candidate_cosines(pairs, embedder)
    verified = curve(verified_scores(pairs, cosines, verifier.score), labels)
    cosine = curve(cosines, labels)
    best = threshold_for(verified, args.target_precision)
    best_cosine = threshold_for(cosine, args.target_precision)
    positives = int(labels.sum())
    print(f"{args.pairs} ({args.split}): {len(pairs):,} pairs, {positives:,} same-intent")
    print(f"verifier: {verifier.path} (trained on {verifier.card.trained_on})")
    _print_table("verifier (the cache's rule)", verified)
    _print_table("plain cosine (for comparison)", cosine)
    for name, point in (("verifier", best), ("cosine", best_cosine)):
        if point is None:
            print(f"{name}: no threshold reaches precision {args.target_precision}")
        else:
            print(
                f"{name}: threshold {point.threshold:.4f} gives precision {point.precision:.3f} "
                f"at recall {point.recall:.3f}"
            )
    if best is not None:
        print(f"recommended: `similarity: {best.threshold:.4f}` in the rule's cache directive")
        if best.recall < 0.05:
            print(
                f"warning: precision {args.target_precision} is reached only at recall {best.recall:.3f}: "
                "on these pairs the cache would almost never answer; consider a lower target"
            )
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                {
                    "pairs": str(args.pairs),
                    "split": args.split,
                    "count": len(pairs),
                    "positives": positives,
                    "target_precision": args.target_precision,
                    "recommended": _point(best),
                    "cosine_at_target": _point(best_cosine),
                    "verifier_curve": [_point(p) for p in verified],
                    "cosine_curve": [_point(p) for p in sample(cosine, 200)],
                },
                option=orjson.OPT_INDENT_2,
            )
        )
    if args.png:
        _plot(args.png, verified, cosine, best, args.target_precision, f"{args.pairs.name} ({args.split})")
        print(f"wrote {args.png}", file=sys.stderr)
    return 0 if best is not None else 1


def _point(point: CurvePoint | None) -> dict[str, Any] | None:
    if point is None:
        return None
    return {
        "threshold": round(point.threshold, 6),
        "precision": round(point.precision, 4),
        "recall": round(point.recall, 4),
        "accepted": point.accepted,
    }


def _print_table(title: str, points: list[CurvePoint]) -> None:
    print(f"\n{title}\n{'threshold':>10} {'precision':>10} {'recall':>8} {'accepted':>9}")
    for point in sample(points, 15):
        print(f"{point.threshold:>10.4f} {point.precision:>10.3f} {point.recall:>8.3f} {point.accepted:>9,}")
    print()


def _plot(
    path: Path,
    verified: list[CurvePoint],
    cosine: list[CurvePoint],
    best: CurvePoint | None,
    target: float,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    # Okabe-Ito colours: distinguishable with colour-blindness.
    axes.plot(
        [p.recall for p in verified], [p.precision for p in verified], color="#0072B2", label="verifier"
    )
    axes.plot(
        [p.recall for p in cosine], [p.precision for p in cosine], color="#E69F00", label="plain cosine"
    )
    axes.axhline(target, color="#999999", linestyle="--", linewidth=1, label=f"target precision {target}")
    if best is not None:
        axes.plot(
            [best.recall], [best.precision], "o", color="#D55E00", label=f"recommended {best.threshold:.3f}"
        )
    axes.set_xlabel("recall (share of same-intent pairs served from cache)")
    axes.set_ylabel("precision (share of hits that are right)")
    axes.set_ylim(0.5, 1.0)
    axes.set_xlim(0.0, 1.0)
    axes.grid(alpha=0.3)
    axes.set_title(f"Semantic cache precision/recall: {title}")
    axes.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
