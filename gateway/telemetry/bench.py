"""What telemetry costs per request: `python -m gateway.telemetry.bench [--json PATH]`.

Times `Telemetry.observe` on the default path (/metrics only: counters and histograms summed in-process)
and with an extra metric reader, which stands for OTLP: the SDK's cost per measurement is the same for an
in-memory reader, without a collector to send to. With such a reader the SDK's histograms are also fed in
batches off the request path (`record_histograms`); that deferred CPU is timed apart, per record. Then one
request span with three children (policy, cache, upstream), with tracing off (the no-op span) and on (a
span exporter that discards, so the figure is the SDK's own cost, not an exporter's). Timing lives here,
not in the tests, where a busy machine would make it flaky.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from gateway.telemetry import names
from gateway.telemetry.telemetry import Telemetry


@dataclass(frozen=True, slots=True)
class _Record:
    """A typical answered request, shaped like a spend record (telemetry does not import the ledger)."""

    api: str = "chat.completions"
    policy: str | None = "default"
    route: str | None = "cheap"
    rule: str | None = "short-prompts"
    team: str | None = "search"
    deployment: str | None = "gpt-4o-mini"
    model: str | None = "gpt-4o-mini-2024-07-18"
    status: int = 200
    error: str | None = None
    cache: str = "miss"
    prompt_tokens: int = 812
    completion_tokens: int = 214
    cached_tokens: int = 512
    reasoning_tokens: int = 0
    estimated: bool = False
    cost_usd: float | None = 0.000214
    saved_usd: float | None = 0.00391
    latency_ms: float = 843.0
    ttfb_ms: float | None = 212.0
    upstream_ms: float | None = 842.6
    overhead_ms: float | None = 0.4
    priority: str = "interactive"
    queue_ms: float = 0.0
    admission: str | None = None
    energy_wh: float | None = 0.3233
    reference_energy_wh: float | None = 0.3233
    saved_energy_wh: float | None = 0.0


class _DiscardingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _request_span(telemetry: Telemetry, record: _Record) -> Callable[[], None]:
    def one_request() -> None:
        span = telemetry.start_request("req-1", "auto", False)
        with span.child(names.SPAN_POLICY):
            pass
        with span.child(names.SPAN_CACHE):
            pass
        upstream = span.start_child(names.SPAN_UPSTREAM)
        upstream.end()
        span.finish(record)

    return one_request


def _time(call: Callable[[], None], iterations: int, repeats: int) -> list[float]:
    """Microseconds per call, one figure per repeat."""
    for _ in range(min(iterations, 1000)):  # warm-up: label memo, lazily built SDK state
        call()
    figures = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for _ in range(iterations):
            call()
        figures.append((time.perf_counter_ns() - started) / iterations / 1000.0)
    return figures


def _time_observe_and_feed(
    telemetry: Telemetry, record: _Record, iterations: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Microseconds per record for `observe` and for the SDK histogram feed of those records, one figure
    each per repeat. The feed runs after each repeat, as `run` would, so the backlog never outgrows one."""
    for _ in range(min(iterations, 1000)):
        telemetry.observe(record)
    telemetry.record_histograms()
    inline, deferred = [], []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for _ in range(iterations):
            telemetry.observe(record)
        observed = time.perf_counter_ns()
        telemetry.record_histograms()
        fed = time.perf_counter_ns()
        inline.append((observed - started) / iterations / 1000.0)
        deferred.append((fed - observed) / iterations / 1000.0)
    return inline, deferred


def _result(case: str, figures: list[float]) -> dict[str, Any]:
    return {"case": case, "median_us": statistics.median(figures), "min_us": min(figures)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.telemetry.bench", description=__doc__)
    parser.add_argument("--iterations", type=int, default=20_000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats; the median is reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    record = _Record()
    untraced = Telemetry()
    exported = Telemetry(metric_readers=[InMemoryMetricReader()])
    traced = Telemetry(span_exporter=_DiscardingExporter())
    results: list[dict[str, Any]] = []
    try:
        results.append(
            _result("observe(record)", _time(lambda: untraced.observe(record), args.iterations, args.repeats))
        )
        inline, deferred = _time_observe_and_feed(exported, record, args.iterations, args.repeats)
        results.append(_result("observe(record), extra metric reader", inline))
        results.append(_result("deferred SDK histogram feed, extra metric reader", deferred))
        cases: list[tuple[str, Callable[[], None]]] = [
            ("request span + 3 children, tracing off", _request_span(untraced, record)),
            ("request span + 3 children, span exporter", _request_span(traced, record)),
        ]
        for case, call in cases:
            results.append(_result(case, _time(call, args.iterations, args.repeats)))
    finally:
        untraced.shutdown()
        exported.shutdown()
        traced.shutdown()

    width = max(len(result["case"]) for result in results)
    print(f"{'case':<{width}}  {'median µs/call':>14}  {'min µs/call':>11}")
    for result in results:
        print(f"{result['case']:<{width}}  {result['median_us']:>14.2f}  {result['min_us']:>11.2f}")
    if args.json is not None:
        figures_json = {"iterations": args.iterations, "repeats": args.repeats, "results": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures_json, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
