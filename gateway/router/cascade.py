"""`gateway eval cascade DATA...`: would a cascade beat the router? A cascade answers every request with
the local (weak) model first and escalates to the frontier when a cheap check of that answer fails. Its
check can read the answer, which a router cannot, but every escalated request waits for the local answer
before the frontier starts.

Judged on data that carries the weak model's answers (RouteLLM's GSM8K file; the gateway's JSON lines with
`weak_answer`), on the same curves as the router and by the same 5-fold cross-validation: the check is the
router's model fed the prompt *and* the weak answer (embeddings and text counts of both), so any gain
comes from seeing the answer. The latency a cascade adds is the local model's generation time for each
escalated request: the answer's tokens at `--local-tokens-per-second` (SmolLM2-135M on this machine's two
cores: ~100).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.extras import require
from gateway.router.evaluate import (
    EMBED_TOKENS,
    FOLDS,
    QUALITY_TARGET,
    cross_validated_scores,
    plot_curves,
    share_text,
)
from gateway.router.metrics import curve as quality_curve
from gateway.router.metrics import figures, oracle_curve, random_curve
from gateway.router.outcomes import OutcomesError, load_outcomes

LOCAL_TOKENS_PER_SECOND = 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, nargs="+", help="labelled outcomes with the weak model's answers")
    parser.add_argument("--folds", type=int, default=FOLDS)
    parser.add_argument("--target", type=float, default=QUALITY_TARGET)
    parser.add_argument(
        "--local-tokens-per-second",
        type=float,
        default=LOCAL_TOKENS_PER_SECOND,
        help="the local model's generation speed, for the latency a cascade adds",
    )
    parser.add_argument("--limit", type=int, help="at most this many prompts per data set (a quick run)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)


def run(args: argparse.Namespace) -> int:
    from gateway.embedding.embedder import Embedder, default_model_path
    from gateway.tokens import TokenCounter

    require("sklearn", *(["matplotlib"] if args.png else []))  # before minutes of embedding
    embedder = Embedder(default_model_path(), max_tokens=EMBED_TOKENS)
    tokens = TokenCounter()
    report: dict[str, Any] = {}
    curves: dict[str, dict[str, Any]] = {}
    for path in args.data:
        data = load_outcomes(path)
        outcomes = data.outcomes[: args.limit] if args.limit else data.outcomes
        answers = [o.weak_answer for o in outcomes]
        if any(answer is None for answer in answers):
            raise OutcomesError(f"{path}: a cascade needs the weak model's answer for every prompt")
        prompts, answered = [o.prompt for o in outcomes], [str(a) for a in answers]
        weak, strong = np.array([o.weak for o in outcomes]), np.array([o.strong for o in outcomes])
        prompt_vectors = embedder.embed(prompts, progress=f"embedding {data.name} prompts")
        answer_vectors = embedder.embed(answered, progress=f"embedding {data.name} weak answers")
        folds, needs = min(args.folds, len(outcomes)), strong > weak
        routed = cross_validated_scores([(prompt_vectors, prompts)], needs, folds)
        checked = cross_validated_scores(
            [(prompt_vectors, prompts), (answer_vectors, answered)], needs, folds
        )
        router = figures(routed, weak, strong, args.target, 0.0)
        cascade = figures(checked, weak, strong, args.target, 0.0)
        seconds = np.array([tokens.count_text(a) for a in answered]) / args.local_tokens_per_second
        report[data.name] = {
            "router": asdict(router),
            "cascade": asdict(cascade),
            **_added_latency(checked, seconds, cascade.share_at_target),
        }
        curves[data.name] = {
            "router": quality_curve(routed, weak, strong),
            "cascade": quality_curve(checked, weak, strong),
            "random": random_curve(weak, strong),
            "oracle": oracle_curve(weak, strong),
        }
    print(_table(report, args.target, args.folds))
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                {"target": args.target, "folds": args.folds, "data": report},
                option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
            )
        )
    if args.png:
        plot_curves(args.png, curves, args.target)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def _added_latency(scores: Any, seconds: Any, share: float | None) -> dict[str, float | None]:
    """What escalation costs in time at the cascade's share for the target: the escalated requests (the
    highest check scores) first wait for the local answer."""
    if not share:
        return {"escalated_wait_p50_s": None, "escalated_wait_p90_s": None, "added_mean_s": 0.0}
    escalated = np.argsort(-scores, kind="stable")[: round(share * len(scores))]
    waits = seconds[escalated]
    return {
        "escalated_wait_p50_s": float(np.percentile(waits, 50)),
        "escalated_wait_p90_s": float(np.percentile(waits, 90)),
        "added_mean_s": float(waits.sum() / len(scores)),
    }


def _table(report: dict[str, Any], target: float, folds: int) -> str:
    lines = [
        f"router (prompt only) vs cascade (prompt + the local answer), {folds}-fold cross-validation",
        f"strong-call share needed for {target:.0%} of the strong model's score; APGR; the wait escalated",
        "requests add for the local answer",
        "",
        f"{'data':<18} {'router':>8} {'cascade':>8} {'APGR r.':>8} {'APGR c.':>8} "
        f"{'wait p50':>9} {'wait p90':>9} {'mean added':>11}",
    ]
    for name, row in report.items():
        p50, p90 = row["escalated_wait_p50_s"], row["escalated_wait_p90_s"]
        lines.append(
            f"{name:<18} {share_text(row['router']['share_at_target']):>8} "
            f"{share_text(row['cascade']['share_at_target']):>8} {row['router']['apgr']:>8.3f} "
            f"{row['cascade']['apgr']:>8.3f} {'-' if p50 is None else f'{p50:.1f} s':>9} "
            f"{'-' if p90 is None else f'{p90:.1f} s':>9} {row['added_mean_s']:>9.2f} s"
        )
    return "\n".join(lines)
