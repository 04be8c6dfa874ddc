"""Latency of one-query embedding on one core, the cost the routing policy pays per request.

    python -m gateway.embedding.bench [--model PATH] [--data SHAREGPT.json] [--limit 500] [--json OUT]

--data takes a ShareGPT-style file (a list of {"conversations": [{"from": "human", "value": ...}]});
the first human turn of each conversation is one query. Without it, built-in short sentences are used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.embedding.embedder import Embedder, EmbedderMissing, default_model_path

BUILTIN_QUERIES = (
    "How do I reset my password?",
    "Write a haiku about autumn.",
    "What is the capital of Australia?",
    "Explain quicksort and its worst case.",
    "Translate 'thank you very much' into German.",
    "Fix this Python error: TypeError: 'NoneType' object is not subscriptable",
    "Summarise the main causes of the French Revolution.",
    "Can you recommend a good book on distributed systems?",
    "What's 17% of 2,340?",
    "Draft a short apology email to a customer whose order arrived late.",
)
WARMUP = 20


def load_queries(path: Path | None, limit: int) -> list[str]:
    """First human turn of each ShareGPT conversation, or the built-in sentences cycled to `limit`."""
    if path is None:
        return [BUILTIN_QUERIES[i % len(BUILTIN_QUERIES)] for i in range(limit)]
    records: Any = json.loads(path.read_text(encoding="utf-8"))
    queries: list[str] = []
    for record in records if isinstance(records, list) else ():
        turns = record.get("conversations") if isinstance(record, dict) else None
        for turn in turns or ():
            if isinstance(turn, dict) and turn.get("from") == "human":
                value = turn.get("value")
                if isinstance(value, str) and value.strip():
                    queries.append(value)
                break
        if len(queries) >= limit:
            break
    if not queries:
        raise SystemExit(f"no human turns found in {path}")
    return queries


def pin_to_one_core() -> int | None:
    """Pin this process to one CPU it may already use, so the number means 'one core'; None if unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.embedding.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument(
        "--data", type=Path, default=None, help="ShareGPT-style JSON; default: built-in sentences"
    )
    parser.add_argument("--limit", type=int, default=500, help="number of queries (default 500)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    cpu = pin_to_one_core()
    try:
        embedder = Embedder(args.model, max_tokens=args.max_tokens, threads=1)
    except EmbedderMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    queries = load_queries(args.data, args.limit)
    tokens = embedder.token_counts(queries)

    for text in queries[:WARMUP]:
        embedder.embed_one(text)
    timings = np.empty(len(queries))
    for i, text in enumerate(queries):
        started = time.perf_counter()
        embedder.embed_one(text)
        timings[i] = time.perf_counter() - started
    ms = timings * 1e3
    short = ms[np.array(tokens) <= 32]

    result = {
        "model": str(args.model),
        "data": str(args.data) if args.data else "builtin",
        "queries": len(queries),
        "pinned_cpu": cpu,
        "threads": 1,
        "max_tokens": args.max_tokens,
        "tokens_p50": float(np.percentile(tokens, 50)),
        "tokens_p99": float(np.percentile(tokens, 99)),
        "truncated": sum(t >= args.max_tokens for t in tokens),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
        "short_queries": len(short),
        "short_p50_ms": round(float(np.percentile(short, 50)), 3) if len(short) else None,
    }
    print(
        f"{result['queries']} queries ({result['data']}), cpu {cpu}, 1 thread: "
        f"p50 {result['p50_ms']:.2f} ms, p90 {result['p90_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
        f"max {result['max_ms']:.2f} ms; "
        f"tokens p50 {result['tokens_p50']:.0f}, p99 {result['tokens_p99']:.0f}, "
        f"{result['truncated']} truncated at {args.max_tokens}"
    )
    if len(short):
        print(f"queries of <= 32 tokens: {len(short)}, p50 {result['short_p50_ms']:.2f} ms")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
