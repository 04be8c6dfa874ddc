"""`python -m gateway.bench.overload` (`make overload`): the gateway past its upstreams' capacity.

The Azure LLM inference conversation trace's arrivals are replayed open-loop against the gateway in
front of two fake upstreams (gateway.fakes.capacity_upstream, real servers on loopback), each the one
deployment of its route: the `frontier` route's (deployment gpt-4o) runs 4 requests at once and
answers 429 with Retry-After beyond that, as a provider's rate limit does, with a first token after
400 ms and 50 tokens/s after it, at most 200 tokens; the `local` route's (smollm2, priced at $0) runs
1 at once and queues the rest, as llama.cpp's server does, first token after 100 ms, 30 tokens/s, at
most 100.
The frontier's capacity is its concurrency over its mean service time on the trace's (capped) answer
lengths; each load level offers a multiple of it (1x, 3x, 10x) for --seconds, with the trace's gaps
compressed or stretched to that rate (gateway.bench.overload_load), then waits for every request still
running, up to --drain seconds. Requests are 60 % interactive, 30 % standard and 10 % deferrable
(`x-gateway-priority`, from a seeded generator: the same requests get the same classes in every run).

Each configuration is its own gateway process over the same fakes, the levels in turn:
admission on (capacity on each deployment, `admission` on the frontier route: standard downgraded to
`local` and deferrable deferred when the frontier would miss its first-byte objective) and admission
off (neither: everything goes to the frontier and meets its rate limit, as the gateway did before;
the deployments' `energy` block is kept when this checkout's deployments file takes it).
After each configuration its ledger (SQLite in its state directory) gives each request's cost and,
where the column exists, energy, joined on the `x-request-id` sent.

It prints a table by level, configuration and class, one by level and configuration, and the issue's
targets as PASS/FAIL lines; writes the figures and every request to --json and a plot to --plot. As
in the soak, the gateway has core 0 to itself; this process and the fakes share core 1. The exit code
is 0 when every configuration ran, even if it missed a target, and 1 when one could not run (its
reason is in the report and the other's figures still are).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import yaml
from pydantic import ValidationError

from gateway.bench.load import ProtocolError, event_loop_factory
from gateway.bench.overload_load import (
    CLASSES,
    INTERACTIVE,
    Arrival,
    Client,
    Result,
    arrivals,
    replay,
    speedup_for,
)
from gateway.bench.overload_plot import plot
from gateway.bench.overload_report import OFF, ON, LevelRun, report
from gateway.bench.procs import Child, ChildFailed, ready_line, spawn
from gateway.bench.proxies import Column, gateway_spec, policy_path, start_proxy
from gateway.bench.soak import DEFAULT_PROMPTS, DEFAULT_TRACE, ROOT
from gateway.bench.soak import _env as soak_env
from gateway.bench.trace import Trace, TraceError, read_prompts, read_trace
from gateway.config import GatewayConfig
from gateway.fakes.capacity_upstream import Capacity, OverLimit
from gateway.progress import Progress

DEFAULT_JSON = Path("artifacts/overload.json")
DEFAULT_PLOT = Path("artifacts/overload.png")
# The environment variable the deployments name for their key (the fakes take any).
KEY_ENV = "OVERLOAD_FAKE_API_KEY"
# The routes; their deployments are named after the models (a route may not share a deployment's name).
FRONTIER, LOCAL = "frontier", "local"
DEPLOYMENTS = MappingProxyType({FRONTIER: "gpt-4o", LOCAL: "smollm2"})
# What each deployment reports using per 1,000 tokens (the `energy` block; admission on only, or off
# too once the gateway's deployments file takes it).
ENERGY = MappingProxyType(
    {
        FRONTIER: MappingProxyType({"wh_per_1k_input_tokens": 0.02, "wh_per_1k_output_tokens": 0.6}),
        LOCAL: MappingProxyType({"wh_per_1k_input_tokens": 0.002, "wh_per_1k_output_tokens": 0.05}),
    }
)
# Interactive and standard requests that may wait: 16 at the frontier is about four of its service
# times per place (~12 s), past which a request is better refused with Retry-After than kept waiting.
QUEUE = MappingProxyType({FRONTIER: 16, LOCAL: 8})
RSS_SAMPLE_SECONDS = 0.5
STATS_TIMEOUT = 10.0


def _progress(message: str) -> None:
    print(f"[overload {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Upstream:
    """A running fake: its deployment name, profile and base URL."""

    name: str
    capacity: Capacity
    url: str
    child: Child

    @property
    def stats_url(self) -> str:
        return self.url.removesuffix("/v1") + "/stats"


def mean_service_seconds(capacity: Capacity, trace: Trace) -> float:
    """The mean time an answer holds one of the upstream's slots, over the trace's answer lengths."""
    return statistics.fmean(capacity.service_seconds(capacity.tokens(r.generated_tokens)) for r in trace.rows)


def capacity_per_s(capacity: Capacity, trace: Trace) -> float:
    """Requests a second the upstream completes when always busy: concurrency over mean service time."""
    return capacity.concurrency / mean_service_seconds(capacity, trace)


def _energy_known() -> bool:
    """Whether this checkout's deployments file takes `energy` (so admission off may carry it too)."""
    probe = {"deployments": {"x": {"provider": "openai", "model": "m", "energy": dict(ENERGY[FRONTIER])}}}
    try:
        GatewayConfig.model_validate(probe)
    except ValidationError:
        return False
    return True


def write_configuration(
    directory: Path, config: str, upstreams: dict[str, Upstream], objective_s: float, energy: bool
) -> Path:
    """The deployments file and, beside it, the policy for one configuration; the deployments' path."""
    deployments: dict[str, dict[str, Any]] = {
        FRONTIER: {"provider": "openai", "model": DEPLOYMENTS[FRONTIER]},
        LOCAL: {
            "provider": "openai",
            "model": DEPLOYMENTS[LOCAL],
            "price": {"input_per_mtok": 0, "output_per_mtok": 0},
        },
    }
    for name, deployment in deployments.items():
        deployment.update(api_base=upstreams[name].url, api_key_env=KEY_ENV)
        if config == ON:
            deployment["capacity"] = {
                "max_concurrency": upstreams[name].capacity.concurrency,
                "queue": QUEUE[name],
            }
        if config == ON or energy:
            deployment["energy"] = dict(ENERGY[name])
    frontier: dict[str, Any] = {"deployments": [DEPLOYMENTS[FRONTIER]]}
    if config == ON:
        frontier["admission"] = {
            "first_byte_seconds": objective_s,
            "standard": {"downgrade": LOCAL},
            "deferrable": "defer",
        }
    policy = {
        "description": f"The overload benchmark, admission {config}.",
        "routes": {FRONTIER: frontier, LOCAL: {"deployments": [DEPLOYMENTS[LOCAL]]}},
        "default_route": FRONTIER,
        "reference_route": FRONTIER,
    }
    path = directory / "deployments.yaml"
    named = {DEPLOYMENTS[route]: deployment for route, deployment in deployments.items()}
    path.write_text(yaml.safe_dump({"deployments": named}, sort_keys=False))
    policy_path(path).write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


@dataclass(frozen=True, slots=True)
class LedgerRow:
    cost_usd: float | None
    energy_wh: float | None
    records: int


def read_ledger(path: Path, prefix: str) -> tuple[dict[str, LedgerRow], bool]:
    """Cost and energy by request id (summed over its records) for ids starting with `prefix` (no
    `%` or `_` in it), and whether the ledger has an energy_wh column."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(ledger)")}
        energy = "energy_wh" in columns
        rows = db.execute(
            f"SELECT request_id, cost_usd, {'energy_wh' if energy else 'NULL'} FROM ledger"
            " WHERE request_id LIKE ? ORDER BY at",
            (prefix + "%",),
        ).fetchall()
    found: dict[str, LedgerRow] = {}
    for request_id, cost, wh in rows:
        seen = found.get(request_id, LedgerRow(None, None, 0))
        found[request_id] = LedgerRow(
            cost if seen.cost_usd is None else seen.cost_usd + (cost or 0.0),
            wh if seen.energy_wh is None else seen.energy_wh + (wh or 0.0),
            seen.records + 1,
        )
    return found, energy


def _request_id(config: str, level: float) -> Callable[[Arrival], str]:
    def named(arrival: Arrival) -> str:
        return f"overload-{config}-{level:g}x-{arrival.index}"

    return named


@dataclass(slots=True)
class _Run:
    """What the benchmark gathered: each level's run, the configurations that failed and why, notes."""

    runs: list[LevelRun] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cpus: dict[str, list[int]] = field(default_factory=dict)


async def _stats(session: aiohttp.ClientSession, upstream: Upstream, reset: bool) -> dict[str, Any]:
    method = "DELETE" if reset else "GET"
    async with session.request(
        method, upstream.stats_url, timeout=aiohttp.ClientTimeout(total=STATS_TIMEOUT)
    ) as response:
        answer: dict[str, Any] = await response.json()
        return answer


async def _sample(child: Child, start: float, into: list[tuple[float, int]]) -> None:
    while True:
        into.append((time.perf_counter() - start, child.rss_bytes()))
        await asyncio.sleep(RSS_SAMPLE_SECONDS)


async def _level(
    args: argparse.Namespace,
    config: str,
    level: float,
    planned: Sequence[Arrival],
    rate: float,
    column: Column,
    upstreams: dict[str, Upstream],
    session: aiohttp.ClientSession,
) -> LevelRun:
    child = column.child
    assert child is not None
    for upstream in upstreams.values():
        await _stats(session, upstream, reset=True)
    run = LevelRun(config, level, rate, args.seconds, [], rss_before=child.rss_bytes())
    endpoint = column.endpoint
    client = Client(
        f"http://{endpoint.host}:{endpoint.port}{endpoint.path}", endpoint.api_key or "", args.timeout
    )
    shown = Progress(f"admission {config}, {level:g}x ({rate:.2f} req/s): finished", len(planned))
    tally: Counter[str] = Counter()

    def done(result: Result) -> None:
        tally[result.outcome] += 1
        shown.update(sum(tally.values()))

    sampler = asyncio.create_task(_sample(child, time.perf_counter(), run.rss))
    try:
        run.results = await replay(
            client, session, planned, _request_id(config, level),
            burst_s=args.seconds, drain_s=args.drain, on_done=done,
        )  # fmt: skip
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    if sum(tally.values()) < len(planned):
        print(file=sys.stderr)
    if not child.alive():
        raise child.failure("died during the run")
    for name, upstream in upstreams.items():
        run.upstreams[name] = await _stats(session, upstream, reset=False)
    _progress(
        f"admission {config}, {level:g}x: "
        + ", ".join(f"{tally[k]} {k}" for k in ("answered", "downgraded", "deferred", "shed", "error"))
        + f"; frontier 429s {run.upstreams[FRONTIER]['rejected']}"
    )
    return run


async def _configuration(
    args: argparse.Namespace,
    config: str,
    plan: dict[float, tuple[float, list[Arrival]]],
    upstreams: dict[str, Upstream],
    env: dict[str, str],
    tmp: Path,
    gateway_cpus: set[int] | None,
    session: aiohttp.ClientSession,
    into: _Run,
) -> None:
    """Every level against one configuration's gateway, then its ledger joined to the results."""
    directory = tmp / config
    directory.mkdir()
    state = directory / "state"
    deployments = write_configuration(directory, config, upstreams, args.objective, _energy_known())
    runs: list[LevelRun] = []
    with contextlib.ExitStack() as stack:
        spec = gateway_spec(
            deployments, env["GATEWAY_API_KEYS"], model="auto", name=f"gateway-{config}",
            label=f"gateway (admission {config})",
        )  # fmt: skip
        column = await start_proxy(
            spec, {**env, "GATEWAY_STATE_DIR": str(state)}, directory, gateway_cpus, stack
        )
        assert column.child is not None
        try:
            for level, (rate, planned) in plan.items():
                runs.append(await _level(args, config, level, planned, rate, column, upstreams, session))
        finally:
            into.runs.extend(runs)
            column.child.stop()  # its ledger drains on the way out
    if runs and not any(r.gateway_priority for run in runs for r in run.results):
        into.notes.append(f"admission {config}: the gateway sent no x-gateway-priority header")
    ledger = state / "ledger.sqlite"
    if not ledger.exists():
        into.notes.append(f"admission {config}: no ledger at {ledger}: no cost or energy")
        return
    found, energy = read_ledger(ledger, f"overload-{config}-")
    if not energy:
        into.notes.append(f"admission {config}: the ledger has no energy_wh column: no energy figures")
    for run in runs:
        for result in run.results:
            row = found.get(result.request_id)
            if row is not None:
                result.cost_usd, result.energy_wh, result.ledger_records = (
                    row.cost_usd,
                    row.energy_wh,
                    row.records,
                )


async def _start_upstream(
    name: str,
    capacity: Capacity,
    env: dict[str, str],
    tmp: Path,
    cpus: set[int] | None,
    stack: contextlib.ExitStack,
) -> Upstream:
    argv = [
        sys.executable, "-m", "gateway.fakes.capacity_upstream", "--port", "0",
        "--concurrency", str(capacity.concurrency), "--over-limit", capacity.over_limit,
        "--first-byte-ms", str(capacity.first_byte_s * 1000), "--tokens-per-s", str(capacity.tokens_per_s),
        "--max-tokens", str(capacity.max_tokens),
    ]  # fmt: skip
    child = spawn(f"fake {name}", argv, env=env, log=tmp / f"fake-{name}.log", cpus=cpus)
    stack.callback(child.stop)
    return Upstream(name, capacity, await ready_line(child, "READY ", 30.0), child)


def profiles(args: argparse.Namespace) -> dict[str, Capacity]:
    """The fakes' profiles from the command line: the frontier rejects beyond its limit, local queues."""
    reject: OverLimit = "reject"
    queue: OverLimit = "queue"
    return {
        FRONTIER: Capacity(
            args.frontier_concurrency, args.frontier_first_byte_ms / 1000, args.frontier_tokens_per_s,
            args.frontier_max_tokens, reject,
        ),
        LOCAL: Capacity(
            args.local_concurrency, args.local_first_byte_ms / 1000, args.local_tokens_per_s,
            args.local_max_tokens, queue,
        ),
    }  # fmt: skip


def plan_levels(
    args: argparse.Namespace, trace: Trace, prompts: Sequence[str], frontier: Capacity
) -> dict[float, tuple[float, list[Arrival]]]:
    """Each level's rate and arrivals (the same for every configuration)."""
    capacity = capacity_per_s(frontier, trace)
    return {
        level: (
            level * capacity,
            arrivals(
                trace, prompts, level * capacity, args.seconds, seed=args.seed, max_tokens=frontier.max_tokens
            ),
        )
        for level in args.levels
    }


async def _overload(
    args: argparse.Namespace, plan: dict[float, tuple[float, list[Arrival]]], capacities: dict[str, Capacity]
) -> _Run:
    available = sorted(os.sched_getaffinity(0))
    pinned = len(available) >= 2
    gateway_cpus = {available[0]} if pinned else None
    client_cpus = {available[1]} if pinned else None
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    gathered = _Run(
        cpus={
            "available": available,
            "gateway": sorted(gateway_cpus or ()),
            "client": sorted(client_cpus or ()),
        }
    )
    env = {**soak_env(), KEY_ENV: "sk-overload-fake"}
    with tempfile.TemporaryDirectory(prefix="gateway-overload-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        _progress("starting the fake upstreams")
        upstreams = {
            name: await _start_upstream(name, capacity, env, tmp, client_cpus, stack)
            for name, capacity in capacities.items()
        }
        connector = aiohttp.TCPConnector(limit=args.max_connections)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for config in args.configs:
                try:
                    await _configuration(
                        args, config, plan, upstreams, env, tmp, gateway_cpus, session, gathered
                    )
                except ChildFailed as exc:
                    _progress(f"admission {config} could not run: {exc.summary}")
                    gathered.failed[config] = str(exc)
    return gathered


def _profile(capacity: Capacity, trace: Trace) -> dict[str, Any]:
    return {
        "concurrency": capacity.concurrency,
        "over_limit": capacity.over_limit,
        "first_byte_s": capacity.first_byte_s,
        "tokens_per_s": capacity.tokens_per_s,
        "max_tokens": capacity.max_tokens,
        "mean_service_s": round(mean_service_seconds(capacity, trace), 4),
        "capacity_per_s": round(capacity_per_s(capacity, trace), 4),
    }


def _workload(
    args: argparse.Namespace,
    trace: Trace,
    plan: dict[float, tuple[float, list[Arrival]]],
    capacities: dict[str, Capacity],
) -> dict[str, Any]:
    frontier = capacities[FRONTIER]
    capacity = capacity_per_s(frontier, trace)
    levels = {}
    for level, (rate, planned) in plan.items():
        counts = Counter(a.priority for a in planned)
        levels[f"{level:g}x"] = {
            "rate_per_s": round(rate, 4),
            "requests": len(planned),
            "speedup_over_trace": round(speedup_for(trace, rate, args.seconds), 4),
            "by_class": {name: counts[name] for name in CLASSES},
            "interactive_over_frontier_capacity": round(counts[INTERACTIVE] / args.seconds / capacity, 3),
        }
    return {
        "trace": str(args.trace),
        "trace_rows": len(trace.rows),
        "trace_rate_per_s": round(trace.mean_rate, 3),
        "upstreams": {name: _profile(c, trace) for name, c in capacities.items()},
        "frontier_capacity_per_s": round(capacity, 4),
        "seconds_per_level": args.seconds,
        "drain_cap_s": args.drain,
        "client_timeout_s": args.timeout,
        "first_byte_objective_s": args.objective,
        "seed": args.seed,
        "levels": levels,
    }


NOTES = (
    "first byte: from sending a request to the first body chunk holding an SSE data event; p50/p99 over "
    "answered requests (a whole stream with usage)",
    "shed: 429/503 the gateway gave as admission control (x-gateway-admission `shed…`, or error code "
    "load_shed / capacity_exceeded); errors: every other failure, the frontier's own 429s passed on "
    "included, and the client timeout or the drain cap",
    "the frontier fake answers 429 with Retry-After (whole seconds until its soonest running request "
    "ends) beyond its concurrency, as a provider's rate limit; the local fake queues, as llama.cpp's "
    "server",
    "cost and energy per answered request from the gateway's ledger, joined on x-request-id",
)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(sorted({float(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not levels or min(levels) <= 0:
        raise argparse.ArgumentTypeError("levels must be positive")
    return levels


def _configs(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names or any(name not in (ON, OFF) for name in names):
        raise argparse.ArgumentTypeError("configurations are `on` and `off`, comma-separated")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench.overload",
        description="The gateway past its upstreams' capacity, admission control on and off.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--trace", type=Path, default=ROOT / DEFAULT_TRACE, help="Azure LLM inference trace (CSV)")
    add("--prompts", type=Path, default=ROOT / DEFAULT_PROMPTS, help="ShareGPT conversations (JSON)")
    add(
        "--levels", type=_levels, default="0.5,1,3,10",
        help="load levels: multiples of the frontier's capacity (the lowest is the unloaded reference)",
    )  # fmt: skip
    add("--seconds", type=_positive, default=60.0, help="seconds of arrivals per level")
    add("--drain", type=_positive, default=600.0, help="seconds after the arrivals to wait for the rest")
    add("--timeout", type=_positive, default=900.0, help="client timeout of one request (s)")
    add("--configs", type=_configs, default="on,off", help="configurations to run, in order (on, off)")
    add("--seed", type=int, default=0, help="seed of the class assignment")
    add("--objective", type=_positive, default=1.5, help="the frontier route's first-byte objective (s)")
    add("--frontier-concurrency", type=int, default=4, help="frontier fake: requests at once (429 beyond)")
    add("--frontier-first-byte-ms", type=float, default=400.0, help="frontier fake: time to the first token")
    add("--frontier-tokens-per-s", type=_positive, default=50.0, help="frontier fake: tokens/s after it")
    add("--frontier-max-tokens", type=int, default=200, help="answers (and max_tokens) capped at this")
    add("--local-concurrency", type=int, default=1, help="local fake: requests at once (queued beyond)")
    add("--local-first-byte-ms", type=float, default=100.0, help="local fake: time to the first token")
    add("--local-tokens-per-s", type=_positive, default=30.0, help="local fake: tokens/s after it")
    add("--local-max-tokens", type=int, default=100, help="local fake: answers capped at this")
    add("--max-connections", type=int, default=4000, help="connections open to the gateway at once")
    add("--json", type=Path, default=ROOT / DEFAULT_JSON, help="write the figures and every request here")
    add("--plot", type=Path, default=ROOT / DEFAULT_PLOT, help="write the plot (PNG) here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        capacities = profiles(args)
    except ValueError as exc:
        print(f"overload: {exc}", file=sys.stderr)
        return 2
    affinity = os.sched_getaffinity(0)
    try:
        trace, prompts = read_trace(args.trace), read_prompts(args.prompts)
        plan = plan_levels(args, trace, prompts, capacities[FRONTIER])
        _progress(
            f"frontier capacity {capacity_per_s(capacities[FRONTIER], trace):.2f} req/s; levels "
            + ", ".join(
                f"{level:g}x = {len(planned)} requests in {args.seconds:g} s"
                for level, (_, planned) in plan.items()
            )
        )
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            gathered = runner.run(_overload(args, plan, capacities))
    except (TraceError, ChildFailed, ProtocolError, OSError) as exc:
        print(f"overload failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("overload interrupted", file=sys.stderr)
        return 130
    finally:
        os.sched_setaffinity(0, affinity)
    notes = [*NOTES, *gathered.notes]
    for config, why in gathered.failed.items():
        notes.append(f"admission {config} could not run: {why}")
    document = report(
        gathered.runs,
        failed=gathered.failed,
        command=[sys.executable, "-m", "gateway.bench.overload", *sys.argv[1:]],
        arguments={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        machine={
            "cpu_count": os.cpu_count(),
            "cpus": gathered.cpus,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        workload=_workload(args, trace, plan, capacities),
        notes=notes,
    )
    print(document["class_table"])
    print()
    print(document["run_table"])
    print()
    for line in document["check_lines"]:
        print(line)
    print()
    for note in notes:
        print(f"- {note}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.json}")
    title = f"Overload: {args.trace.name}, {args.seconds:g} s of arrivals per level"
    plot(args.plot, document["runs"], title)
    print(f"wrote {args.plot}")
    return 1 if gathered.failed else 0


if __name__ == "__main__":
    sys.exit(main())
