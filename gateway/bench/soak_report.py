"""The soak's figures: per-window tallies, the summary checked against the targets, the table and the plot.

Latency, overhead, throughput and CPU are taken after the warm-up; request and error counts cover the
whole run. RSS growth is the highest RSS of the last minute over the RSS at the end of the warm-up.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.bench.report import Row, cell, markdown_table
from gateway.bench.soak_client import Outcome

MB = 1024 * 1024
RSS_TAIL_S = 60.0
OVERHEAD_P50_TARGET_MS = 0.5
RSS_GROWTH_TARGET_PCT = 10.0

Figure = float | int | str | None
NOTES = (
    "latency is what the client saw, from the first byte sent to the last received: the gateway, the "
    "fake upstream and any queueing on either core",
    "gateway overhead is the x-gateway-overhead-ms header: time in the gateway's handler minus time "
    "waiting on the upstream (queueing before the handler runs is not in it); the core issue sets no "
    "p99 target, compare with `gateway bench`'s added latency p99",
)


@dataclass(slots=True)
class Window:
    """What happened between start_s and end_s (seconds into the run), and the samples taken at its end."""

    start_s: float
    end_s: float
    sent: int = 0
    completed: int = 0
    completion_tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ns: list[int] = field(default_factory=list)
    overheads_ms: list[float] = field(default_factory=list)
    lags_ns: list[int] = field(default_factory=list)
    rss_bytes: int = 0
    gateway_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    in_flight: int = 0  # the most requests in flight at once

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s

    def add(self, outcome: Outcome) -> None:
        self.lags_ns.append(outcome.lag_ns)
        if outcome.error is not None:
            self.errors[outcome.error] += 1
            return
        self.completed += 1
        self.completion_tokens += outcome.completion_tokens
        self.latencies_ns.append(outcome.latency_ns)
        if outcome.overhead_ms is not None:
            self.overheads_ms.append(outcome.overhead_ms)

    def series(self) -> dict[str, Any]:
        """One row of the JSON's per-window series."""
        seconds = self.seconds or 1.0
        latencies = sorted(self.latencies_ns)
        overheads = sorted(self.overheads_ms)
        return {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "sent": self.sent,
            "completed": self.completed,
            "rate_per_s": round(self.completed / seconds, 2),
            "completion_tokens": self.completion_tokens,
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "latency_p50_ms": _ms(percentile(latencies, 0.5)),
            "latency_p95_ms": _ms(percentile(latencies, 0.95)),
            "latency_p99_ms": _ms(percentile(latencies, 0.99)),
            "overhead_p50_ms": _round(percentile(overheads, 0.5)),
            "overhead_p99_ms": _round(percentile(overheads, 0.99)),
            "client_lag_p99_ms": _ms(percentile(sorted(self.lags_ns), 0.99)),
            "most_in_flight": self.in_flight,
            "rss_mb": round(self.rss_bytes / MB, 2),
            "gateway_cpu_pct": round(self.gateway_cpu_s / seconds * 100, 1),
            "client_core_cpu_pct": round(self.client_cpu_s / seconds * 100, 1),
        }


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (as gateway.bench.load does), None when empty."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(value_ns: float | None) -> float | None:
    return None if value_ns is None else round(value_ns / 1e6, 4)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


ROWS: tuple[Row, ...] = (
    Row("offered_rps", "offered rate after warm-up (req/s)", ",.1f"),
    Row("throughput_rps", "throughput after warm-up (req/s)", ",.1f"),
    Row("completion_tokens_per_s", "completion tokens/s after warm-up", ",.0f"),
    Row("requests_sent", "requests sent", ",d"),
    Row("requests_completed", "requests answered in full", ",d"),
    Row("errors", "errors", ",d", "0", lambda v: v == 0),
    Row("errors_by_kind", "errors by kind", "s"),
    Row("latency_p50_ms", "latency p50 (ms)", ".2f"),
    Row("latency_p95_ms", "latency p95 (ms)", ".2f"),
    Row("latency_p99_ms", "latency p99 (ms)", ".2f"),
    Row(
        "overhead_p50_ms", "gateway overhead p50 (ms)", ".3f", "≤ 0.5", lambda v: v <= OVERHEAD_P50_TARGET_MS
    ),
    Row("overhead_p99_ms", "gateway overhead p99 (ms)", ".3f"),
    Row("client_lag_p99_ms", "client send lag p99 (ms)", ".2f"),
    Row("max_in_flight", "most requests in flight", ",d"),
    Row("gateway_cpu_pct", "gateway core busy, mean (%)", ".0f"),
    Row("gateway_cpu_peak_pct", "gateway core busy, busiest window (%)", ".0f"),
    Row("client_core_cpu_pct", "client+fake core busy, mean (%)", ".0f"),
    Row("rss_warm_mb", "RSS after warm-up (MB)", ".1f"),
    Row("rss_end_mb", "RSS at the end (MB)", ".1f"),
    Row("rss_tail_max_mb", "RSS, highest in the last minute (MB)", ".1f"),
    Row(
        "rss_growth_pct", "RSS growth after warm-up (%)", "+.1f", "≤ 10", lambda v: v <= RSS_GROWTH_TARGET_PCT
    ),
    Row("rss_slope_second_half_mb_per_min", "RSS trend, second half (MB/min)", "+.2f"),
)
FIGURES = tuple(row.key for row in ROWS)


def _slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread * 60


def summarise(windows: Sequence[Window], warmup_s: float) -> dict[str, Figure]:
    """The table's figures from the run's windows (in order, at least one)."""
    measured = [w for w in windows if w.start_s >= warmup_s - 1e-9] or list(windows)
    warm = [w for w in windows if w.end_s <= warmup_s + 1e-9]
    seconds = sum(w.seconds for w in measured) or 1.0
    latencies = sorted(ns for w in measured for ns in w.latencies_ns)
    overheads = sorted(ms for w in measured for ms in w.overheads_ms)
    lags = sorted(ns for w in windows for ns in w.lags_ns)
    errors: Counter[str] = Counter()
    for window in windows:
        errors.update(window.errors)
    end = windows[-1].end_s
    rss_warm = (warm[-1] if warm else windows[0]).rss_bytes / MB
    tail = [w.rss_bytes / MB for w in windows if w.end_s > end - RSS_TAIL_S] or [windows[-1].rss_bytes / MB]
    second_half = [(w.end_s, w.rss_bytes / MB) for w in measured if w.end_s > (measured[0].start_s + end) / 2]
    return {
        "offered_rps": sum(w.sent for w in measured) / seconds,
        "throughput_rps": sum(w.completed for w in measured) / seconds,
        "completion_tokens_per_s": sum(w.completion_tokens for w in measured) / seconds,
        "requests_sent": sum(w.sent for w in windows),
        "requests_completed": sum(w.completed for w in windows),
        "errors": sum(errors.values()),
        "errors_by_kind": "; ".join(f"{kind}: {count}" for kind, count in errors.most_common()) or "none",
        "latency_p50_ms": _ms(percentile(latencies, 0.5)),
        "latency_p95_ms": _ms(percentile(latencies, 0.95)),
        "latency_p99_ms": _ms(percentile(latencies, 0.99)),
        "overhead_p50_ms": _round(percentile(overheads, 0.5)),
        "overhead_p99_ms": _round(percentile(overheads, 0.99)),
        "client_lag_p99_ms": _ms(percentile(lags, 0.99)),
        "max_in_flight": max(w.in_flight for w in windows),
        "gateway_cpu_pct": sum(w.gateway_cpu_s for w in measured) / seconds * 100,
        "gateway_cpu_peak_pct": max(w.gateway_cpu_s / (w.seconds or 1.0) * 100 for w in measured),
        "client_core_cpu_pct": sum(w.client_cpu_s for w in measured) / seconds * 100,
        "rss_warm_mb": rss_warm,
        "rss_end_mb": windows[-1].rss_bytes / MB,
        "rss_tail_max_mb": max(tail),
        "rss_growth_pct": (max(tail) / rss_warm - 1) * 100 if rss_warm > 0 and warm else None,
        "rss_slope_second_half_mb_per_min": _slope_per_min(second_half),
    }


def checks(values: dict[str, Figure]) -> dict[str, bool]:
    """Each target's verdict; a figure that could not be measured misses its target."""
    verdicts = {}
    for row in ROWS:
        if row.meets is not None:
            value = values[row.key]
            verdicts[row.key] = isinstance(value, int | float) and row.meets(value)
    return verdicts


def missed(values: dict[str, Figure]) -> list[str]:
    verdicts = checks(values)
    return [
        f"{row.label}: {cell(values[row.key], row.fmt)} (target {row.target})"
        for row in ROWS
        if row.key in verdicts and not verdicts[row.key]
    ]


def table(values: dict[str, Figure]) -> str:
    """A Markdown table: metric, value, target, and ✔/✘ where there is a target."""
    verdicts = checks(values)
    body = [
        [
            row.label,
            cell(values[row.key], row.fmt),
            row.target or "—",
            ("✔" if verdicts[row.key] else "✘") if row.key in verdicts else "",
        ]
        for row in ROWS
    ]
    return markdown_table(["metric", "value", "target", "met"], body, left={0, 2, 3})


def report(
    windows: Sequence[Window],
    warmup_s: float,
    *,
    command: list[str],
    arguments: dict[str, Any],
    machine: dict[str, Any],
    workload: dict[str, Any],
    log_tail: str,
) -> dict[str, Any]:
    """The JSON document: the figures, their verdicts, the table, notes and the per-window series."""
    values = {k: round(v, 4) if isinstance(v, float) else v for k, v in summarise(windows, warmup_s).items()}
    misses = missed(values)
    notes = ["missed: " + "; ".join(misses) if misses else "every target met", *NOTES]
    if values["errors"]:
        notes.append("the gateway's log ends:\n" + log_tail)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "arguments": arguments,
        "machine": machine,
        "workload": workload,
        "targets": {row.key: row.target for row in ROWS if row.target},
        "figures": values,
        "checks": checks(values),
        "notes": notes,
        "table": table(values),
        "windows": [window.series() for window in windows],
    }
