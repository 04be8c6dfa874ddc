"""`python -m gateway.bench.accounting`: what accounting adds to one request, measured on the request
path's real admit and record steps with the calls `RequestPath` makes, in its order: the span, rate
limits, budget reservation, the intent (spooled before the upstream call), the spend record (spooled,
observed by telemetry, span finished) and the settlement.

Three set-ups: no budgets or limits (the embedded default), a team with a daily and a monthly budget
and a requests- and tokens-per-minute limit, and the same with the request span recorded by an OTel
exporter. Counters are in-process (Redis adds a loopback round trip, measured by `redis-benchmark`,
not here). The target is a median of at most 200 µs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from gateway.config import Deployment
from gateway.energy import EnergyBook
from gateway.ledger.ledger import Ledger
from gateway.ledger.spool import Spool
from gateway.ledger.sqlite import SqliteLedgerStore
from gateway.limits.budget_counters import InProcessBudgetCounters
from gateway.limits.rate_counters import InProcessRateCounters
from gateway.path.admit import Admission, Admitted
from gateway.path.answer import Answer
from gateway.path.cost import RoutePrices
from gateway.path.decide import Routing
from gateway.path.record import Ending, Recording
from gateway.policy.compile import CompiledPolicy
from gateway.policy.records import DecisionLog
from gateway.policy.schema import Policy
from gateway.pricing import PriceBook, load_price_map
from gateway.providers.factory import build_provider
from gateway.routing.catalog import Candidate, Target
from gateway.telemetry.telemetry import Telemetry
from gateway.tokens import TokenCounter
from gateway.wire import Caller, ChatRequest, Usage

TARGET_US = 200.0
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant for an online shop."},
    {"role": "user", "content": "Where is my order 5512? It was due on Monday and has not arrived yet."},
]
POLICIES: dict[str, dict[str, Any]] = {
    "no budgets or limits": {},
    "budgets and rate limits": {
        "budgets": {"teams": {"search": {"daily_usd": 1e6, "monthly_usd": 1e7}}},
        "rate_limits": {"teams": {"search": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12}}},
    },
}


class _Discard(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _policy(extra: dict[str, Any]) -> Policy:
    return Policy.model_validate(
        {
            "routes": {"frontier": {"deployments": ["big"]}, "local": {"deployments": ["small"]}},
            "default_route": "frontier",
            "reference_route": "frontier",
            **extra,
        }
    )


async def _run(policy: Policy, telemetry: Telemetry, requests: int, state: Path) -> list[float]:
    deployments = {
        "big": Deployment.model_validate({"provider": "openai", "model": "gpt-4o"}),
        "small": Deployment.model_validate({"provider": "openai", "model": "gpt-4o-mini"}),
    }
    tokens = TokenCounter()
    prices = RoutePrices(PriceBook(deployments, load_price_map()))
    ledger = Ledger(Spool(state / "spool"), SqliteLedgerStore(state / "ledger.sqlite"))
    decisions = DecisionLog(state / "decisions.sqlite")
    admission = Admission(prices, tokens, InProcessBudgetCounters(), InProcessRateCounters(), telemetry)
    recording = Recording(prices, tokens, ledger, telemetry, decisions, EnergyBook(deployments))
    async with aiohttp.ClientSession() as session:  # the candidate is never called
        big = build_provider(deployments["big"], session, {}, tokens, "no local model")
        compiled = CompiledPolicy("bench", policy, {}, ())
        routing = Routing(Target("frontier", (Candidate("frontier", big),), False), "default", None, compiled)
        usage = Usage(41, 120, 161, {"prompt_tokens_details": {"cached_tokens": 0}})
        body = {"model": "auto", "messages": MESSAGES, "max_tokens": 200}
        caller = Caller(team="search", key="k1")
        prices.price(policy, "frontier", "big")  # warm the token counter and the price map
        tokens.count_messages(MESSAGES)
        timings: list[float] = []
        for index in range(requests):
            request = ChatRequest(body=body, request_id=f"r{index}")
            started = time.perf_counter()
            trail = recording.begin(request, caller, started)
            admitted = Admitted(request, caller.team, caller.key, trail.at)
            await admission.admit_rates(admitted, policy)
            await admission.reserve(admitted, routing)
            recording.calling(trail, routing, admitted, "big")  # spooled before the upstream call
            answer = Answer("frontier", "big", "default", None, 0.0)
            record = recording.end(
                trail, routing, admitted, answer, None, Ending(usage=usage, ttfb_seconds=0.5)
            )
            admission.settle_later(admitted, record.cost_usd, record.completion_tokens)
            await asyncio.sleep(0)  # let the settlement run, as it would between requests
            timings.append((time.perf_counter() - started) * 1e6)
            if index % 5_000 == 4_999:
                await ledger.drain()  # the periodic drain, outside the timed calls
                print(f"  {index + 1}/{requests}", file=sys.stderr)
    await admission.aclose()
    await ledger.close()
    decisions.close()
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.accounting", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    cases: list[tuple[str, dict[str, Any], SpanExporter | None]] = [
        (name, extra, None) for name, extra in POLICIES.items()
    ]
    cases.append(("budgets, limits and traces", POLICIES["budgets and rate limits"], _Discard()))
    for name, extra, exporter in cases:
        print(f"{name}:", file=sys.stderr)
        with tempfile.TemporaryDirectory() as state:
            telemetry = Telemetry(span_exporter=exporter)
            timings = asyncio.run(_run(_policy(extra), telemetry, args.requests, Path(state)))
        timings = timings[len(timings) // 10 :]  # warm-up
        quantiles = statistics.quantiles(timings, n=100)
        results.append(
            {
                "case": name,
                "median_us": statistics.median(timings),
                "p95_us": quantiles[94],
                "requests": len(timings),
            }
        )
    print(f"target: median <= {TARGET_US:.0f} µs on the request path")
    print(f"{'case':<30} {'median µs':>10} {'p95 µs':>10}")
    for row in results:
        print(f"{row['case']:<30} {row['median_us']:>10.1f} {row['p95_us']:>10.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"target_median_us": TARGET_US, "results": results}, indent=2))
    return 0 if all(row["median_us"] <= TARGET_US for row in results[:2]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
