"""`gateway router bench DATA...`: what the learned-router signal costs per request beyond the embedding
the policy and the cache already share, on real prompts, one core: the router's score from the prompt's
text and its embedding (computed once beforehand, as in serving, where the first semantic signal or the
cache computed it), and, for scale, the embedding itself. Prints a table and writes JSON; the target is
<= 1 ms p99 beyond the embedding.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from gateway.progress import Progress
from gateway.router.model import DEFAULT_PATH

TARGET_P99_MS = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, nargs="+", help="labelled outcomes whose prompts to use")
    parser.add_argument("--limit", type=int, default=1000, help="prompts to use")
    parser.add_argument("--rounds", type=int, default=20, help="timed evaluations of each prompt's score")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-router.json"))
    parser.add_argument("--model", type=Path, default=DEFAULT_PATH, help="the router artifact")


def run(args: argparse.Namespace) -> int:
    from gateway.embedding.embedder import Embedder, default_model_path
    from gateway.router.model import RouterModel
    from gateway.router.outcomes import load_outcomes
    from gateway.router.training import SIGNAL_TOKENS

    prompts = [o.prompt for path in args.data for o in load_outcomes(path).outcomes][: args.limit]
    embedder = Embedder(default_model_path(), max_tokens=SIGNAL_TOKENS)
    model = RouterModel(args.model)
    embed_ms, signal_ms = [], []
    progress = Progress("timing", len(prompts))
    for done, prompt in enumerate(prompts, 1):
        started = time.perf_counter()
        vector = embedder.embed([prompt])[0]
        embed_ms.append((time.perf_counter() - started) * 1000)
        for _ in range(args.rounds):
            started = time.perf_counter()
            model.score(vector, prompt)
            signal_ms.append((time.perf_counter() - started) * 1000)
        progress.update(done)
    signal_p99 = _percentile(signal_ms, 99)
    figures = {
        "prompts": len(prompts),
        "signal_p50_ms": _percentile(signal_ms, 50),
        "signal_p99_ms": signal_p99,
        "signal_max_ms": round(max(signal_ms), 4),
        "embedding_p50_ms": _percentile(embed_ms, 50),
        "embedding_p99_ms": _percentile(embed_ms, 99),
        "target_p99_ms": TARGET_P99_MS,
        "machine": platform.processor() or platform.machine(),
    }
    verdict = "PASS" if signal_p99 <= TARGET_P99_MS else "FAIL"
    rows = [
        ("", "p50 ms", "p99 ms", ""),
        ("router signal (beyond embedding)", figures["signal_p50_ms"], figures["signal_p99_ms"], verdict),
        ("embedding (shared, for scale)", figures["embedding_p50_ms"], figures["embedding_p99_ms"], ""),
    ]
    for name, p50, p99, note in rows:
        print(f"{name:<34}{p50:>10}{p99:>10}  {note}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.json}")
    return 0


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 4)
