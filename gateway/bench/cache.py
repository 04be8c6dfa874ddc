"""`python -m gateway.bench.cache --pairs PAIRS.jsonl`: the semantic cache at size, on one core.

A gateway runs in this process (uvicorn on a background loop, the fake upstream answering at once)
with a rule that caches semantically, and its in-process store is filled with `--entries` answers in
one namespace and context. Stored questions are real (the `text_b` of labelled pairs, embedded) up
to the pairs available; the rest are their vectors with noise, so the index is as crowded as a real
one. Then:

- index memory: RSS grown while filling, minus RSS grown filling the same answers without vectors;
- lookup (embedding, search, fetch, verification), called directly, for questions whose paraphrase is
  stored (hits) and for unrelated ones (misses);
- end to end over HTTP from a client thread: a semantic hit, and a miss with the semantic rule against
  the same request under a rule without a cache (the difference is what a missing cache costs).

Targets (issue 5): lookup <= 3 ms p50 and <= 10 ms p99; a hit end to end <= 5 ms p50; index <= 1 KB
per entry; a miss <= 2 ms p50 over no cache. Prints a table; `--json` writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvicorn
import yaml

from gateway.app import create_app
from gateway.bench.procs import free_port, rss_bytes
from gateway.cache.answer_cache import AnswerCache, namespace_of
from gateway.cache.keys import cache_keys
from gateway.cache.pairs import read_pairs, split_pairs
from gateway.cache.store import CachedAnswer, InProcessCacheStore
from gateway.cache.verifier import Verifier
from gateway.embedding.embedder import Embedder, default_model_path
from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.policy.schema import CacheDirective
from gateway.settings import Settings

TARGETS = {"lookup_p50_ms": 3.0, "lookup_p99_ms": 10.0, "hit_p50_ms": 5.0, "index_bytes_per_entry": 1024.0}
MISS_OVERHEAD_TARGET_MS = 2.0
ROUTE = "frontier"


def progress(message: str) -> None:
    print(f"[cache bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def spec(upstream: FakeOpenAIUpstream, similarity: float) -> tuple[dict[str, Any], dict[str, Any]]:
    deployments = {
        "deployments": {"big": {"provider": "openai", "model": "m", "api_base": upstream.base_url}}
    }
    policy = {
        "routes": {ROUTE: {"deployments": ["big"]}},
        "signals": {"user": {"kind": "metadata", "of": "user"}},
        "rules": [
            {"name": "plain", "when": {"signal": "user", "eq": "plain"}, "route": ROUTE},
            {"name": "cached", "when": {"signal": "user", "ne": "plain"}, "route": ROUTE,
             "cache": {"similarity": similarity, "ttl_seconds": 86400}},
        ],
        "default_route": ROUTE,
    }  # fmt: skip
    return deployments, policy


def body(question: str, user: str = "cached") -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "user": user,
    }


class Client:
    """Sequential requests over one keep-alive connection, timed from send to the last byte."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, payload: dict[str, Any]) -> tuple[float, str]:
        data = orjson.dumps(payload)
        started = time.perf_counter()
        self._connection.request("POST", "/v1/chat/completions", data, {"content-type": "application/json"})
        response = response_of(self._connection)
        elapsed = (time.perf_counter() - started) * 1000
        return elapsed, response


def response_of(connection: http.client.HTTPConnection) -> str:
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}")
    return response.getheader("x-gateway-cache") or "none"


def fill(
    store: InProcessCacheStore,
    keys_of: Callable[[str], Any],
    questions: list[str],
    vectors: np.ndarray[Any, np.dtype[np.float32]] | None,
) -> None:
    message = {"role": "assistant", "content": "An answer of some length. " * 8}
    answer_body = orjson.dumps(
        {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
         "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    )  # fmt: skip
    loop = asyncio.new_event_loop()
    try:
        for index, question in enumerate(questions):
            keys = keys_of(question)
            answer = CachedAnswer(
                answer_body, 10, 50, ROUTE, "big", time.time() + 86400, keys.context, question
            )
            vector = vectors[index] if vectors is not None else None
            loop.run_until_complete(store.put(keys.namespace, keys.exact, answer, vector))
            if (index + 1) % 20000 == 0:
                progress(f"  {index + 1:,}/{len(questions):,} entries")
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.cache", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=Path, required=True, help="labelled pairs (JSON lines), e.g. QQP")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the targets say

    everything = read_pairs(args.pairs)
    pairs = [p for p in split_pairs(everything, "held-out") if p.same]
    # Misses: real questions from the other side of the split, none of them stored.
    unseen = sorted({p.text_a for p in split_pairs(everything, "train")})
    rng = np.random.default_rng(0)
    embedder = Embedder(default_model_path(), max_tokens=128)
    real = pairs[: min(len(pairs), args.entries, 3000)]
    progress(f"embedding {len(real):,} stored questions")
    real_vectors = embedder.embed([p.text_b for p in real], progress="embedding stored questions")
    questions = [p.text_b for p in real]
    synthetic = args.entries - len(real)
    picks = rng.integers(0, len(real), synthetic)
    # Noise as large as the vector: a synthetic entry sits in the real one's region (cosine ~0.6) but is
    # not a near-duplicate of it, as distinct cached questions on one topic would be.
    noise = rng.normal(0, 1.33 / np.sqrt(384), (synthetic, 384)).astype(np.float32)
    more = real_vectors[picks] + noise
    more /= np.linalg.norm(more, axis=1, keepdims=True)
    vectors = np.concatenate([real_vectors, more]).astype(np.float32)
    questions += [f"{real[int(i)].text_b} ({secrets.token_hex(4)})" for i in picks]

    upstream = FakeOpenAIUpstream(default=Behaviour())
    with BackgroundLoop() as bg, tempfile.TemporaryDirectory() as state:
        bg.run(upstream.start())
        threshold = Verifier().card.recommended_threshold
        deployments, policy = spec(upstream, threshold)
        config_path, policy_path = Path(state) / "deployments.yaml", Path(state) / "policy.yaml"
        config_path.write_text(yaml.safe_dump(deployments))
        policy_path.write_text(yaml.safe_dump(policy))
        port = free_port()
        settings = Settings(
            port=port, config=config_path, policy=policy_path, state_dir=Path(state) / "state",
            policy_reload_interval=0, cache_max_entries=args.entries + 10_000,
        )  # fmt: skip
        app = create_app(settings, environ={})
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")
        )
        task = asyncio.run_coroutine_threadsafe(server.serve(), bg.loop)
        while not server.started:
            if task.done():
                task.result()  # raises what stopped the start-up
                raise RuntimeError("the gateway stopped before it started")
            time.sleep(0.05)
        cache = app.services.cache
        assert isinstance(cache, AnswerCache) and isinstance(cache.store, InProcessCacheStore)
        directive = CacheDirective(similarity=threshold, ttl_seconds=86400)
        namespace = namespace_of(directive, None)

        def keys_of(question: str) -> Any:
            return cache_keys(body(question), namespace, ROUTE)

        progress(f"filling {args.entries:,} answers without vectors (the baseline for memory)")
        baseline = InProcessCacheStore(args.entries + 10)
        before = rss_bytes(os.getpid())
        fill(baseline, keys_of, questions, None)
        answers_bytes = rss_bytes(os.getpid()) - before
        progress(f"filling {args.entries:,} answers with vectors into the gateway's store")
        before = rss_bytes(os.getpid())
        started = time.perf_counter()
        # The store lives on the server's loop; filling from this thread is safe only while idle.
        fill(cache.store, keys_of, questions, vectors)
        fill_seconds = time.perf_counter() - started
        with_index_bytes = rss_bytes(os.getpid()) - before
        del baseline
        index_per_entry = max(with_index_bytes - answers_bytes, 0) / args.entries

        hits = [p.text_a for p in real[: args.queries]]
        misses = unseen[: args.queries]

        async def lookups(texts: list[str]) -> tuple[list[float], int]:
            times, found = [], 0
            for text in texts:
                keys = keys_of(text)
                started = time.perf_counter()
                hit = await cache.lookup(keys, directive, {})
                times.append((time.perf_counter() - started) * 1000)
                found += hit is not None
            return times, found

        progress("timing lookups")
        hit_times, hit_count = bg.run(lookups(hits), timeout=600)
        miss_times, _ = bg.run(lookups(misses), timeout=600)

        progress("timing end to end over HTTP")
        client = Client(port)
        for i in range(50):  # warm-up
            client.post(body(f"warm-up {i}", "plain"))
        e2e_hits = [client.post(body(text)) for text in hits]
        e2e_semantic = [ms for ms, outcome in e2e_hits if outcome == "semantic"]
        fresh = unseen[args.queries : 2 * args.queries]
        cached_misses = [client.post(body(text))[0] for text in fresh]
        # The same questions under the rule without a cache (the upstream answers both at once).
        plain = [client.post(body(text, "plain"))[0] for text in fresh]
        server.should_exit = True
        task.result(timeout=30)
        bg.run(upstream.stop())

    figures = {
        "entries": args.entries,
        "real_questions": len(real),
        "fill_seconds": round(fill_seconds, 1),
        "index_bytes_per_entry": round(index_per_entry, 1),
        "lookup_hit_p50_ms": round(statistics.median(hit_times), 3),
        "lookup_hit_p99_ms": round(percentile(hit_times, 0.99), 3),
        "lookup_hit_rate": round(hit_count / len(hits), 3),
        "lookup_miss_p50_ms": round(statistics.median(miss_times), 3),
        "lookup_miss_p99_ms": round(percentile(miss_times, 0.99), 3),
        "hit_e2e_p50_ms": round(statistics.median(e2e_semantic), 3) if e2e_semantic else None,
        "hit_e2e_p99_ms": round(percentile(e2e_semantic, 0.99), 3) if e2e_semantic else None,
        "miss_e2e_p50_ms": round(statistics.median(cached_misses), 3),
        "no_cache_e2e_p50_ms": round(statistics.median(plain), 3),
    }
    figures["miss_overhead_p50_ms"] = round(figures["miss_e2e_p50_ms"] - figures["no_cache_e2e_p50_ms"], 3)
    checks = {
        "lookup p50 <= 3 ms": max(figures["lookup_hit_p50_ms"], figures["lookup_miss_p50_ms"]) <= 3.0,
        "lookup p99 <= 10 ms": max(figures["lookup_hit_p99_ms"], figures["lookup_miss_p99_ms"]) <= 10.0,
        "hit end to end p50 <= 5 ms": (figures["hit_e2e_p50_ms"] or 1e9) <= 5.0,
        "index <= 1 KB per entry": figures["index_bytes_per_entry"] <= 1024,
        "miss overhead p50 <= 2 ms": figures["miss_overhead_p50_ms"] <= MISS_OVERHEAD_TARGET_MS,
    }
    print(
        f"\nsemantic cache, {args.entries:,} entries in one namespace, "
        f"one core ({platform.processor() or 'cpu'})"
    )
    for name, value in figures.items():
        print(f"  {name:<24} {value}")
    for name, passed in checks.items():
        print(f"  {'PASS' if passed else 'FAIL'}  {name}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"figures": figures, "checks": checks}, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
