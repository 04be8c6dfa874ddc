"""Figures from the raw phase results, the table printed at the end, and the JSON written with --json.

One list of rows drives both the table and the JSON keys, so the two always carry the same figures.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.bench.load import PhaseResult

LATENCY, THROUGHPUT, STREAMS = "latency", "throughput", "streams"
MB = 1024 * 1024
# Direct throughput must beat the proxy's by this factor for the proxy's figure to be its own limit.
CLEAR_MARGIN = 1.2

Figure = float | int | None


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    label: str
    fmt: str
    target: str = ""
    meets: Callable[[float], bool] | None = None


ROWS: tuple[Row, ...] = (
    Row("latency_p50_ms", "latency p50, 1 client (ms)", ".3f"),
    Row("latency_p99_ms", "latency p99, 1 client (ms)", ".3f"),
    Row("added_latency_p50_ms", "added latency p50, 1 client (ms)", ".3f", "≤ 0.5", lambda v: v <= 0.5),
    Row("added_latency_p99_ms", "added latency p99, 1 client (ms)", ".3f"),
    Row("throughput_rps", "throughput, 50 clients (req/s)", ",.0f", "≥ 4,000", lambda v: v >= 4000),
    Row("latency_p50_50_clients_ms", "latency p50, 50 clients (ms)", ".2f"),
    Row("streams_per_s", "streams/s, 10 clients, 20 chunks", ",.0f", "≥ 2,000", lambda v: v >= 2000),
    Row("streams_missing_usage", "streams without final usage chunk", "d", "0", lambda v: v == 0),
    Row("errors", "errors, all phases", "d", "0", lambda v: v == 0),
    Row("cpu_us_per_request", "CPU per request, 50 clients (µs)", ",.0f"),
    Row("cpu_us_per_stream", "CPU per stream (µs)", ",.0f"),
    Row("rss_idle_mb", "RSS idle after start-up (MB)", ".1f", "≤ 150", lambda v: v <= 150),
    Row("rss_after_load_mb", "RSS after the load phases (MB)", ".1f"),
    Row("startup_s", "start-up to first served request (s)", ".2f", "≤ 2", lambda v: v <= 2),
    Row("proxy_core_busy_pct", "proxy core busy, 50 clients (%)", ".0f"),
    Row("client_core_busy_pct", "client+fake core busy, 50 clients (%)", ".0f"),
)
FIGURES = tuple(row.key for row in ROWS)


@dataclass(slots=True)
class TargetRun:
    """Everything measured for one column: direct upstream, the gateway, or LiteLLM proxy."""

    name: str
    label: str
    startup_s: float | None = None
    rss_idle_bytes: int | None = None
    rss_after_bytes: int | None = None
    phases: dict[str, PhaseResult] = field(default_factory=dict)


def _per(cpu: float | None, count: int) -> float | None:
    return cpu / count * 1e6 if cpu is not None and count else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def figures(run: TargetRun, direct: TargetRun) -> dict[str, Figure]:
    """The table's figures for one column; `direct` is the baseline that added latency subtracts."""
    latency, throughput, streams = run.phases[LATENCY], run.phases[THROUGHPUT], run.phases[STREAMS]
    base = direct.phases[LATENCY]
    is_direct = run is direct
    p50, p99 = latency.percentile_ms(0.5), latency.percentile_ms(0.99)
    seconds = throughput.seconds or 1.0
    proxy_cpu = throughput.meters.get("proxy")
    client_cpu = throughput.meters.get("client", 0.0) + throughput.meters.get("upstream", 0.0)
    return {
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "added_latency_p50_ms": None if is_direct else _minus(p50, base.percentile_ms(0.5)),
        "added_latency_p99_ms": None if is_direct else _minus(p99, base.percentile_ms(0.99)),
        "throughput_rps": throughput.rate,
        "latency_p50_50_clients_ms": throughput.percentile_ms(0.5),
        "streams_per_s": streams.rate,
        "streams_missing_usage": streams.missing_usage,
        "errors": sum(phase.errors for phase in run.phases.values()),
        "cpu_us_per_request": _per(proxy_cpu, throughput.requests),
        "cpu_us_per_stream": _per(streams.meters.get("proxy"), streams.requests),
        "rss_idle_mb": run.rss_idle_bytes / MB if run.rss_idle_bytes is not None else None,
        "rss_after_load_mb": run.rss_after_bytes / MB if run.rss_after_bytes is not None else None,
        "startup_s": run.startup_s,
        "proxy_core_busy_pct": proxy_cpu / seconds * 100 if proxy_cpu is not None else None,
        "client_core_busy_pct": client_cpu / seconds * 100,
    }


def phase_json(phase: PhaseResult) -> dict[str, Any]:
    return {
        "clients": phase.clients,
        "stream": phase.stream,
        "seconds": round(phase.seconds, 3),
        "requests": phase.requests,
        "errors": phase.errors,
        "missing_usage": phase.missing_usage,
        "rate_per_s": round(phase.rate, 1),
        "latency_p50_ms": phase.percentile_ms(0.5),
        "latency_p90_ms": phase.percentile_ms(0.9),
        "latency_p99_ms": phase.percentile_ms(0.99),
        "cpu_seconds": {name: round(value, 3) for name, value in phase.meters.items()},
    }


def cell(value: Figure | str, fmt: str) -> str:
    """A figure as a table shows it: `—` when it could not be measured."""
    if value is None:
        return "—"
    return format(value, fmt)


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], left: Collection[int]) -> str:
    """Rows as a Markdown table padded to line up in a terminal: the columns in `left` aligned left,
    the others (figures) right."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        padded = [c.ljust(widths[i]) if i in left else c.rjust(widths[i]) for i, c in enumerate(cells)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i in left else "-" * (w + 1) + ":" for i, w in enumerate(widths))
    return "\n".join([render(header), rule + "|", *(render(line) for line in body)])


def table(columns: Sequence[tuple[str, Mapping[str, Figure]]]) -> str:
    """A Markdown table: one row per figure, one column per target, then the target."""
    header = ["metric", *(label for label, _ in columns), "target"]
    body = [
        [row.label, *(cell(values[row.key], row.fmt) for _, values in columns), row.target or "—"]
        for row in ROWS
    ]
    return markdown_table(header, body, left={0, len(header) - 1})


def missed_targets(values: Mapping[str, Figure]) -> list[str]:
    """The targets a column misses, as `label: value (target)`; unmeasured figures count as missed."""
    missed = []
    for row in ROWS:
        if row.meets is None:
            continue
        value = values[row.key]
        if value is None or not row.meets(value):
            missed.append(f"{row.label}: {cell(value, row.fmt)} (target {row.target})")
    return missed


def bottleneck_notes(direct: TargetRun, proxies: Sequence[TargetRun]) -> list[str]:
    """Say so when the load generator and the fake, not the proxy, may have set a proxy's pace."""
    notes = []
    for phase, what in ((THROUGHPUT, "req/s at 50 clients"), (STREAMS, "streams/s")):
        direct_rate = direct.phases[phase].rate
        for proxy in proxies:
            rate = proxy.phases[phase].rate
            if direct_rate < CLEAR_MARGIN * rate:
                notes.append(
                    f"direct upstream ({direct_rate:,.0f} {what}) is not clearly above {proxy.label} "
                    f"({rate:,.0f}): the load generator and fake may be the limit, so {proxy.label}'s "
                    "figure is a lower bound."
                )
    return notes
