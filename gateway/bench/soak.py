"""`python -m gateway.bench.soak`: replay a real arrival trace against the gateway for minutes.

The Azure LLM inference conversation trace (arrival times, prompt and answer token counts) is replayed
open-loop against the gateway in front of the fake upstream: each request leaves at its trace time
divided by --speedup, whether or not earlier ones finished, with a ShareGPT prompt sized to the row's
ContextTokens and max_tokens = GeneratedTokens, which the fake answers in exactly that many words
(half the requests stream; see gateway.bench.trace). The trace is looped when it runs out. As in
`gateway bench`, the gateway has core 0 to itself; this process and the fake share core 1.

Every --window seconds it samples completed requests, latency and overhead percentiles, errors, and
the gateway's RSS and CPU, and prints a line to stderr. At the end it prints a table against the
targets (no errors; gateway overhead p50 ≤ 0.5 ms; RSS growth after the warm-up ≤ 10 %), and writes
the figures and the series to --json and a plot to --png. The exit code is 0 when the run completed,
even if it missed a target, and 1 when the run itself failed.

Default speed-up, 100x: the trace averages 5.5 requests/s with one-second peaks of 16, so 100x
offers ~550 requests/s (1,600 in its busiest seconds), each with a ~1,150-token prompt (~4.6 KB) and
a ~210-token answer. Those are far larger than `gateway bench`'s requests, so one core saturates near
1,800 of them a second here, not 4,000-5,000. Measured on this 2-core machine (30 s runs): 100x kept
the gateway's core about half busy (latency p99 ~15 ms), 200x ~70 % busy with queueing in bursts
(p99 ~90 ms), 300x saturated it (p99 in seconds). 100x is real load with headroom for the trace's
bursts and a noisy neighbour; "several times" (4-20x) would leave the core 90-98 % idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bench import litellm_proxy
from gateway.bench.load import Endpoint, ProtocolError, event_loop_factory
from gateway.bench.procs import Child, ChildFailed, own_cpu_seconds, ready_line, spawn
from gateway.bench.run import gateway_spec, start_proxy, write_gateway_config
from gateway.bench.soak_client import UNFINISHED, Pool
from gateway.bench.soak_plot import plot
from gateway.bench.soak_report import Window, report
from gateway.bench.trace import (
    CHARS_PER_TOKEN,
    Scheduled,
    Trace,
    TraceError,
    chat_body,
    read_prompts,
    read_trace,
    schedule,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRACE = Path("../shared/data/traces/AzureLLMInferenceTrace_conv.csv")
DEFAULT_PROMPTS = Path("../shared/data/traces/ShareGPT_V3_filtered_1000.json")
DEFAULT_SPEEDUP = 100.0
DEFAULT_CHUNKS = 20
# In-flight requests finish within this long after the last one is sent, or count as unfinished.
DRAIN_SECONDS = 10.0


def _progress(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class _Replay:
    """The run in progress: the window being filled, requests in flight, and client failures."""

    pool: Pool
    start_ns: int
    current: Window
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    failures: list[BaseException] = field(default_factory=list)

    async def one(self, item: Scheduled, due_ns: int) -> None:
        body = chat_body(self.pool.endpoint.model, item)
        self.current.add(await self.pool.send(body, item.stream, due_ns))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failures.append(task.exception())  # type: ignore[arg-type]

    async def dispatch(self, items: Iterable[Scheduled]) -> None:
        for item in items:
            due = self.start_ns + int(item.at_s * 1e9)
            delay = (due - time.perf_counter_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            self.current.sent += 1
            task = asyncio.create_task(self.one(item, due))
            self.in_flight.add(task)
            task.add_done_callback(self._finished)
            self.current.in_flight = max(self.current.in_flight, len(self.in_flight))


@dataclass(frozen=True, slots=True)
class _Meters:
    gateway: Child
    fake: Child

    def read(self) -> tuple[float, float]:
        """(gateway CPU seconds, CPU seconds of this process and the fake: core 1)."""
        return self.gateway.cpu_seconds(), own_cpu_seconds() + self.fake.cpu_seconds()


def _line(window: Window, duration: float) -> str:
    row = window.series()

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    return (
        f"{window.end_s:5.0f}/{duration:.0f} s  sent {row['sent']:,}  done {row['completed']:,} "
        f"({row['rate_per_s']:,.1f}/s)  p50 {ms(row['latency_p50_ms'])} p99 {ms(row['latency_p99_ms'])} ms  "
        f"overhead p99 {ms(row['overhead_p99_ms'])} ms  errors {row['errors']}  "
        f"most in flight {row['most_in_flight']}  RSS {row['rss_mb']:.1f} MB  "
        f"gateway CPU {row['gateway_cpu_pct']:.0f}%"
    )


async def _replay(
    args: argparse.Namespace, items: Iterable[Scheduled], endpoint: Endpoint, meters: _Meters
) -> list[Window]:
    """Send every scheduled item on time, closing a window every args.window seconds."""
    duration = args.duration
    replay = _Replay(
        Pool(endpoint, args.max_connections, args.timeout),
        time.perf_counter_ns(),
        Window(0.0, min(args.window, duration)),
    )
    windows: list[Window] = []
    gateway_cpu, client_cpu = meters.read()
    dispatcher = asyncio.create_task(replay.dispatch(items))
    try:
        while True:
            window = replay.current
            await asyncio.sleep(max(0.0, replay.start_ns / 1e9 + window.end_s - time.perf_counter_ns() / 1e9))
            if not meters.gateway.alive():
                raise meters.gateway.failure("died during the soak")
            if replay.failures:
                raise replay.failures[0]
            if dispatcher.done() and dispatcher.exception() is not None:
                raise dispatcher.exception()  # type: ignore[misc]
            now_gateway, now_client = meters.read()
            window.gateway_cpu_s, window.client_cpu_s = now_gateway - gateway_cpu, now_client - client_cpu
            gateway_cpu, client_cpu = now_gateway, now_client
            window.rss_bytes = meters.gateway.rss_bytes()
            if window.end_s >= duration - 1e-9:
                break
            replay.current = Window(window.end_s, min(window.end_s + args.window, duration))
            windows.append(window)
            _progress(_line(window, duration))
        await dispatcher
        if replay.in_flight:
            _progress(f"waiting up to {DRAIN_SECONDS:g} s for {len(replay.in_flight)} requests in flight")
            _, pending = await asyncio.wait(set(replay.in_flight), timeout=DRAIN_SECONDS)
            if pending:
                replay.current.errors[UNFINISHED] += len(pending)
        if replay.failures:
            raise replay.failures[0]
        windows.append(replay.current)
        _progress(_line(replay.current, duration))
        return windows
    finally:
        dispatcher.cancel()
        for task in list(replay.in_flight):
            task.cancel()
        replay.pool.close()


def _env() -> dict[str, str]:
    """As `gateway bench`: the caller's GATEWAY_* settings must not change what is measured."""
    env = litellm_proxy.offline_env({k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")})
    env.update(
        GATEWAY_MANAGE_LOCAL_MODEL="false",
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_API_KEYS="gw-soak-" + secrets.token_hex(16),
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass(slots=True)
class _Outcome:
    windows: list[Window]
    cpus: dict[str, list[int]]
    gateway_log_tail: str


async def _soak(args: argparse.Namespace, trace: Trace, prompts: list[str]) -> _Outcome:
    available = sorted(os.sched_getaffinity(0))
    pinned = len(available) >= 2
    gateway_cpus = {available[0]} if pinned else None
    client_cpus = {available[1]} if pinned else None
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    env = _env()
    with tempfile.TemporaryDirectory(prefix="gateway-soak-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        env["GATEWAY_STATE_DIR"] = str(tmp / "state")
        _progress("starting the fake upstream")
        longest = max(row.generated_tokens for row in trace.rows)
        fake_argv = [sys.executable, "-m", "gateway.fakes.openai_upstream", "--port", "0",
                     "--chunks", str(args.chunks), "--answer-max-tokens", str(longest)]  # fmt: skip
        fake = spawn("fake upstream", fake_argv, env=env, log=tmp / "fake.log", cpus=client_cpus)
        stack.callback(fake.stop)
        upstream_url = await ready_line(fake, "READY ", 30.0)
        config = write_gateway_config(tmp / "deployments.yaml", upstream_url)
        column = await start_proxy(
            gateway_spec(config, env["GATEWAY_API_KEYS"]), env, tmp, gateway_cpus, stack
        )
        assert column.child is not None
        items = schedule(trace, prompts, args.speedup, args.duration)
        _progress(
            f"replaying {len(trace.rows):,} trace rows at {args.speedup:g}x "
            f"(~{trace.mean_rate * args.speedup:,.0f} req/s) for {args.duration:g} s, "
            f"warm-up {args.warmup:g} s, a line every {args.window:g} s"
        )
        windows = await _replay(args, items, column.endpoint, _Meters(column.child, fake))
        tail = column.child.log_tail(30)
    cpus = {
        "available": available,
        "gateway": sorted(gateway_cpus or ()),
        "client": sorted(client_cpus or ()),
    }
    return _Outcome(windows, cpus, tail)


def _report(args: argparse.Namespace, trace: Trace, prompts: list[str], outcome: _Outcome) -> dict[str, Any]:
    sent = sum(window.sent for window in outcome.windows)
    return report(
        outcome.windows,
        args.warmup,
        command=[sys.executable, "-m", "gateway.bench.soak", *sys.argv[1:]],
        arguments={
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        machine={
            "cpu_count": os.cpu_count(),
            "cpus": outcome.cpus,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        workload={
            "trace_rows": len(trace.rows),
            "trace_span_s": round(trace.span_s, 3),
            "trace_rate_per_s": round(trace.mean_rate, 3),
            "scheduled_rate_per_s": round(trace.mean_rate * args.speedup, 1),
            "laps_over_trace": round(sent / len(trace.rows), 3),
            "prompts": len(prompts),
            "chars_per_token": CHARS_PER_TOKEN,
            "streamed_share": 0.5,
            "chunks_per_stream": args.chunks,
        },
        log_tail=outcome.gateway_log_tail,
    )


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench.soak",
        description="Replay an arrival trace against the gateway: throughput, latency, errors, memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--trace", type=Path, default=ROOT / DEFAULT_TRACE, help="Azure LLM inference trace (CSV)")
    add("--prompts", type=Path, default=ROOT / DEFAULT_PROMPTS, help="ShareGPT conversations (JSON)")
    add("--speedup", type=_positive, default=DEFAULT_SPEEDUP, help="replay this many times faster")
    add("--duration", type=_positive, default=600.0, help="seconds of load")
    add("--warmup", type=float, default=60.0, help="first seconds left out of latency and RSS growth")
    add("--window", type=_positive, default=5.0, help="seconds per sample and progress line")
    add("--chunks", type=int, default=DEFAULT_CHUNKS, help="content chunks per streamed answer")
    add("--max-connections", type=int, default=1000, help="connections open to the gateway at once")
    add("--timeout", type=_positive, default=30.0, help="seconds before a request counts as timed out")
    add("--json", type=Path, help="write the figures and the per-window series here")
    add("--png", type=Path, help="write the plot here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.warmup < 0 or args.chunks < 1 or args.max_connections < 1:
        print("soak: --warmup must be >= 0, --chunks and --max-connections >= 1", file=sys.stderr)
        return 2
    affinity = os.sched_getaffinity(0)
    try:
        trace, prompts = read_trace(args.trace), read_prompts(args.prompts)
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            outcome = runner.run(_soak(args, trace, prompts))
    except (TraceError, ChildFailed, ProtocolError, OSError) as exc:
        print(f"soak failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("soak interrupted", file=sys.stderr)
        return 130
    finally:
        os.sched_setaffinity(0, affinity)
    report = _report(args, trace, prompts, outcome)
    print(report["table"])
    print()
    for note in report["notes"]:
        print(f"- {note}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {args.json}")
    if args.png is not None:
        title = f"Soak: {args.trace.name} at {args.speedup:g}x, {args.duration:g} s"
        plot(args.png, outcome.windows, args.warmup, title)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
