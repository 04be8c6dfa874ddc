"""Figures from the raw phase results, the tables printed at the end, and the JSON written with --json.

One list of rows drives both the main table and the JSON keys, so the two always carry the same
figures; one list of columns does the same for the depth table (one gateway per row, each with its
own policy).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

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
    shown: dict[str, Any] = {
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
    if phase.header_values:
        shown["cache_header"] = dict(phase.header_values.most_common())
    return shown


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


# ---- the depth table ----------------------------------------------------------------------------


@dataclass(slots=True)
class DepthRun:
    """One row of the depth table: a gateway with one policy, measured at 1 and 50 clients; or why
    the row could not be measured."""

    name: str
    label: str
    # What the policy adds, in a few words (the table's second column).
    runs: str = ""
    status: Literal["measured", "failed"] = "measured"
    error: str | None = None
    # The `x-gateway-cache` value every answer of this row should carry (None: not a cache row).
    expect: str | None = None
    startup_s: float | None = None
    rss_idle_bytes: int | None = None
    rss_after_bytes: int | None = None
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    # Row-specific facts for the JSON (how its cache was filled, which prompts it sent).
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DepthTarget:
    key: str
    text: str
    meets: Callable[[float], bool]


DEPTH_TARGETS: dict[str, DepthTarget] = {
    "semantic-signal": DepthTarget("throughput_rps", "≥ 800 req/s", lambda v: v >= 800),
    "semantic-cache-hit": DepthTarget("latency_p50_ms", "p50 ≤ 3 ms", lambda v: v <= 3.0),
}
# When fewer of a cache row's answers than this carry the expected header, its figures are not that
# row's: the note says so.
EXPECTED_SHARE = 0.9


@dataclass(frozen=True, slots=True)
class DepthColumn:
    key: str
    label: str
    fmt: str


DEPTH_COLUMNS: tuple[DepthColumn, ...] = (
    DepthColumn("throughput_rps", "req/s, 50 clients", ",.0f"),
    DepthColumn("ratio_to_floor", "ratio to floor", ".2f"),
    DepthColumn("cpu_us_per_request", "CPU/request (µs)", ",.0f"),
    DepthColumn("latency_p50_ms", "p50, 1 client (ms)", ".3f"),
    DepthColumn("latency_p99_ms", "p99, 1 client (ms)", ".3f"),
    DepthColumn("errors", "errors", "d"),
)


# Every depth row's figures in the JSON; the table shows DEPTH_COLUMNS of them.
DEPTH_FIGURES = (
    "throughput_rps", "ratio_to_floor", "cpu_us_per_request", "latency_p50_ms", "latency_p99_ms",
    "latency_p50_50_clients_ms", "errors", "expected_cache_share", "startup_s", "rss_idle_mb",
    "rss_after_load_mb",
)  # fmt: skip


def depth_figures(run: DepthRun, floor_rps: float | None) -> dict[str, Figure]:
    """A depth row's figures; all None for a row that failed."""
    latency, throughput = run.phases.get(LATENCY), run.phases.get(THROUGHPUT)
    if run.status != "measured" or latency is None or throughput is None:
        return {key: None for key in DEPTH_FIGURES}
    rate = throughput.rate
    share = None
    if run.expect is not None:
        counted = latency.header_values + throughput.header_values
        total = sum(counted.values())
        share = counted[run.expect] / total if total else 0.0
    return {
        "throughput_rps": rate,
        "ratio_to_floor": rate / floor_rps if floor_rps else None,
        "cpu_us_per_request": _per(throughput.meters.get("proxy"), throughput.requests),
        "latency_p50_ms": latency.percentile_ms(0.5),
        "latency_p99_ms": latency.percentile_ms(0.99),
        "latency_p50_50_clients_ms": throughput.percentile_ms(0.5),
        "errors": latency.errors + throughput.errors,
        "expected_cache_share": share,
        "startup_s": run.startup_s,
        "rss_idle_mb": run.rss_idle_bytes / MB if run.rss_idle_bytes is not None else None,
        "rss_after_load_mb": run.rss_after_bytes / MB if run.rss_after_bytes is not None else None,
    }


def _cache_cell(run: DepthRun, values: Mapping[str, Figure]) -> str:
    share = values.get("expected_cache_share")
    if run.expect is None or share is None:
        return "—"
    return f"{share:.0%} {run.expect}"


def depth_table(rows: Sequence[tuple[DepthRun, Mapping[str, Figure]]]) -> str:
    """A Markdown table: one row per depth row, its figures, its cache answers and its target."""
    header = ["row", "runs", *(column.label for column in DEPTH_COLUMNS), "cache answers", "target"]
    body = []
    for run, values in rows:
        target = DEPTH_TARGETS.get(run.name)
        if run.status != "measured":
            cells = ["failed", *("—" for _ in DEPTH_COLUMNS[1:])]
        else:
            cells = [cell(values[column.key], column.fmt) for column in DEPTH_COLUMNS]
        body.append([run.label, run.runs, *cells, _cache_cell(run, values), target.text if target else "—"])
    return markdown_table(header, body, left={0, 1, len(header) - 2, len(header) - 1})


def depth_misses(rows: Sequence[tuple[DepthRun, Mapping[str, Figure]]]) -> list[str]:
    """The depth targets missed, as `label: value (target)`; a failed row misses its target."""
    missed = []
    for run, values in rows:
        target = DEPTH_TARGETS.get(run.name)
        if target is None:
            continue
        column = next(c for c in DEPTH_COLUMNS if c.key == target.key)
        value = values.get(target.key)
        if run.status != "measured":
            missed.append(f"{run.label}: not measured, the row failed (target {target.text})")
        elif value is None or not target.meets(value):
            missed.append(f"{run.label}, {column.label}: {cell(value, column.fmt)} (target {target.text})")
    return missed


def depth_notes(rows: Sequence[tuple[DepthRun, Mapping[str, Figure]]]) -> list[str]:
    """Why rows failed, and cache rows whose answers were not what the row is about."""
    notes = []
    for run, values in rows:
        if run.status != "measured":
            notes.append(f"depth row {run.label} failed: {run.error}")
            continue
        share = values.get("expected_cache_share")
        if run.expect is not None and isinstance(share, float) and share < EXPECTED_SHARE:
            notes.append(
                f"depth row {run.label}: only {share:.0%} of its answers said x-gateway-cache: {run.expect}, "
                "so its figures are not those of that path alone"
            )
    return notes


def depth_json(run: DepthRun, values: Mapping[str, Figure]) -> dict[str, Any]:
    return {
        "label": run.label,
        "runs": run.runs,
        "status": run.status,
        "error": run.error,
        "expected_cache_header": run.expect,
        "target": DEPTH_TARGETS[run.name].text if run.name in DEPTH_TARGETS else None,
        "figures": dict(values),
        "phases": {name: phase_json(phase) for name, phase in run.phases.items()},
        **run.details,
    }
