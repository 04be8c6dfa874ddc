"""Latency of one-query embedding on one core, the cost the routing policy pays per request.

    python -m gateway.embedding.bench [--model PATH] [--data SHAREGPT.json] [--limit 500] [--json OUT]
        [--drift] [--concurrency 1,10,50]

--data takes a ShareGPT-style file (a list of {"conversations": [{"from": "human", "value": ...}]});
the first human turn of each conversation is one query. Without it, built-in short sentences are used.

--drift also measures padded batches (8, 16, 32 texts, in arrival order and bucketed by length) against
one run per text: the cost per text and how far each text's vector moves from its solo vector.

--concurrency measures texts/s embedded for an event loop by N concurrent callers, three ways: on the
loop (the model called from the coroutine), one worker-thread hop per call (asyncio.to_thread), and the
micro-batcher (gateway.embedding.batcher); with each call's latency and the loop's longest stall (a
1 ms ticker's worst lateness). Every text is distinct, so nothing is answered from memory, except in
the last way ("batcher, asked again": every text a second time, from the batcher's memory of recent
texts, as a trace that repeats its prompts would be).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.embedding.batcher import EmbeddingBatcher, Vector
from gateway.embedding.embedder import (
    Embedder,
    EmbedderMissing,
    cpu_session,
    default_model_path,
    load_tokenizer,
    tokenizer_path_for,
)

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


class PaddedRuns:
    """The same model run on padded batches (what the embedder deliberately does not do), to measure."""

    def __init__(self, model: Path, max_tokens: int) -> None:
        self._session = cpu_session(model, 1)
        self._tokenizer = load_tokenizer(tokenizer_path_for(model), max_tokens)
        self._inputs = frozenset(i.name for i in self._session.get_inputs())
        self._output = self._session.get_outputs()[0].name

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        encodings = [self._tokenizer.encode(text) for text in texts]
        width = max(len(encoding.ids) for encoding in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        (vectors,) = self._session.run([self._output], feed)
        return np.asarray(vectors, dtype=np.float32)


def drift(embedder: Embedder, queries: list[str], model: Path, max_tokens: int) -> list[dict[str, Any]]:
    """Cost per text and vector drift of padded batches against one run per text."""
    padded = PaddedRuns(model, max_tokens)
    started = time.perf_counter()
    solo = embedder.embed(queries)
    solo_seconds = time.perf_counter() - started
    tokens = np.array(embedder.token_counts(queries))
    rows = [_drift_row("one run per text", solo_seconds, solo, solo, len(queries))]
    arrival = np.arange(len(queries))
    by_length = np.argsort(tokens, kind="stable")
    for label, order in (("padded, arrival order", arrival), ("padded, length-bucketed", by_length)):
        for size in (8, 16, 32):
            out = np.empty_like(solo)
            started = time.perf_counter()
            for first in range(0, len(order), size):
                picked = order[first : first + size]
                out[picked] = padded.embed([queries[i] for i in picked])
            rows.append(
                _drift_row(f"{label}, {size}", time.perf_counter() - started, out, solo, len(queries))
            )
    return rows


def _drift_row(
    label: str, seconds: float, vectors: npt.NDArray[np.float32], solo: npt.NDArray[np.float32], count: int
) -> dict[str, Any]:
    cosines = (vectors * solo).sum(axis=1)
    return {
        "batching": label,
        "ms_per_text": round(seconds / count * 1e3, 3),
        "texts_per_s": round(count / seconds, 1),
        "cosine_to_solo_min": round(float(cosines.min()), 4),
        "cosine_to_solo_p1": round(float(np.percentile(cosines, 1)), 4),
        "cosine_to_solo_p50": round(float(np.median(cosines)), 5),
        "identical_share": round(float(np.mean(np.all(vectors == solo, axis=1))), 3),
    }


async def _ticker(stalls: list[float], stop: asyncio.Event) -> None:
    """How late a 1 ms sleep wakes up: the loop's stalls."""
    while not stop.is_set():
        expected = time.perf_counter() + 0.001
        await asyncio.sleep(0.001)
        stalls.append(max(time.perf_counter() - expected, 0.0))


async def _callers(
    embed: Callable[[str], Awaitable[Any]], queries: list[str], callers: int
) -> dict[str, Any]:
    texts: Iterator[str] = iter(queries)
    latencies: list[float] = []

    async def caller() -> None:
        for text in texts:
            started = time.perf_counter()
            await embed(text)
            latencies.append(time.perf_counter() - started)

    stalls: list[float] = []
    stop = asyncio.Event()
    ticking = asyncio.create_task(_ticker(stalls, stop))
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    seconds = time.perf_counter() - started
    stop.set()
    await ticking
    ms = np.array(latencies) * 1e3
    return {
        "texts_per_s": round(len(queries) / seconds, 1),
        "call_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "call_p99_ms": round(float(np.percentile(ms, 99)), 2),
        "loop_stall_max_ms": round(max(stalls) * 1e3, 2) if stalls else None,
        "loop_stall_p99_ms": round(float(np.percentile(stalls, 99)) * 1e3, 2) if stalls else None,
    }


def concurrency_table(embedder: Embedder, queries: list[str], levels: list[int]) -> list[dict[str, Any]]:
    """Texts/s embedded for an event loop by N concurrent callers: on the loop, a thread hop per call,
    and the batcher. Each (way, N) gets the same distinct texts."""

    async def on_the_loop(text: str) -> Vector:
        vector = embedder.embed_one(text)
        await asyncio.sleep(0)  # what a request does next: give the loop back
        return vector

    async def thread_per_call(text: str) -> Vector:
        return await asyncio.to_thread(embedder.embed_one, text)

    async def measure(way: str, callers: int) -> dict[str, Any]:
        if not way.startswith("batcher"):
            embed = on_the_loop if way == "on the loop" else thread_per_call
            return await _callers(embed, queries, callers)
        again = way == "batcher, asked again"
        batcher = EmbeddingBatcher(embedder.embed_one, recent=len(queries) if again else 0)
        try:
            if again:  # the first pass fills the memory of recent texts; the second is timed
                await _callers(batcher.embed, queries, callers)
            row = await _callers(batcher.embed, queries, callers)
            stats = batcher.stats
            handovers = [wait.handover for wait in stats.waits]
            row["batches"] = stats.batches
            row["texts_per_batch"] = round(stats.computed / max(stats.batches, 1), 1)
            row["handover_mean_ms"] = round(float(np.mean(handovers)) * 1e3, 2)
            row["handover_max_ms"] = round(max(handovers) * 1e3, 2)
            return row
        finally:
            await batcher.aclose()

    rows = []
    for callers in levels:
        for way in ("on the loop", "thread per call", "batcher", "batcher, asked again"):
            rows.append({"way": way, "callers": callers, **asyncio.run(measure(way, callers))})
    return rows


def print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(column for row in rows for column in row))
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns}
    print(f"\n{title}")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


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
    parser.add_argument("--drift", action="store_true", help="also measure padded batches and their drift")
    parser.add_argument(
        "--concurrency", default="", help="also measure texts/s for N concurrent callers, e.g. 1,10,50"
    )
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
    if args.drift:
        result["drift"] = drift(embedder, queries, args.model, args.max_tokens)
        print_rows("padded batches against one run per text (cost per text, vector drift)", result["drift"])
    if args.concurrency:
        levels = [int(level) for level in args.concurrency.split(",")]
        distinct = list(dict.fromkeys(queries))
        result["concurrency"] = concurrency_table(embedder, distinct, levels)
        print_rows(
            f"texts/s for an event loop, {len(distinct)} distinct texts, N concurrent callers, one core",
            result["concurrency"],
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
