"""`gateway bench`: the gateway's overhead against a fake upstream, beside a direct baseline, in one run.

The proxy under test gets core 0 to itself; the fake upstream and the load generator share core 1,
so measuring direct-to-upstream in the same run shows whether that core, not the proxy, set the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.bench import floor_app, litellm_proxy
from gateway.bench.load import (
    Endpoint,
    ProtocolError,
    event_loop_factory,
    request_once,
    run_phase,
    stream_verdict,
)
from gateway.bench.procs import Child, ChildFailed, free_port, own_cpu_seconds, ready_line, spawn
from gateway.bench.report import (
    LATENCY,
    ROWS,
    STREAMS,
    THROUGHPUT,
    Figure,
    TargetRun,
    bottleneck_notes,
    figures,
    missed_targets,
    phase_json,
    table,
)

MODEL = "fake-model"
CHUNKS = 20
PHASES = ((LATENCY, 1, False), (THROUGHPUT, 50, False), (STREAMS, 10, True))
GATEWAY_STARTUP_TIMEOUT = 60.0
LITELLM_STARTUP_TIMEOUT = 180.0
IDLE_SETTLE_SECONDS = 1.0


@dataclass(slots=True)
class _Column:
    """A target under load: where to send requests, and the process whose CPU and memory count."""

    run: TargetRun
    endpoint: Endpoint
    child: Child | None


@dataclass(slots=True)
class Outcome:
    columns: list[TargetRun]
    litellm_status: str
    notes: list[str]
    cpus: dict[str, Any]


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _warmup(duration: float) -> float:
    return min(2.0, max(0.1, duration / 5))


def _endpoint(url: str, path: str, model: str, api_key: str | None = None) -> Endpoint:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return Endpoint(parts.hostname, parts.port, path, model, api_key)


async def _first_answer(child: Child, endpoint: Endpoint, limit: float) -> float:
    """Seconds from spawning `child` to its first 200 chat completion: start-up as a client sees it."""
    request = endpoint.request(stream=False)
    last = "no answer"
    try:
        async with asyncio.timeout(limit):
            while True:
                if not child.alive():
                    raise child.failure("exited during start-up")
                try:
                    status, body = await request_once(endpoint, request)
                except (OSError, ProtocolError) as exc:
                    last = str(exc) or type(exc).__name__
                    await asyncio.sleep(0.005)
                    continue
                if status == 200:
                    return time.perf_counter() - child.spawned_at
                last = f"HTTP {status}: {body[:300]!r}"
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise child.failure(f"served no request within {limit:.0f} s (last: {last})") from None


async def _check_stream(column: _Column) -> None:
    """One stream before the load, so a proxy that breaks streams fails loudly, not as a slow figure."""
    status, body = await request_once(column.endpoint, column.endpoint.request(stream=True))
    complete, usage = stream_verdict(body)
    if status != 200 or not complete:
        raise ChildFailed(f"{column.run.label} answered a stream with HTTP {status}: {body[:300]!r}")
    if not usage:
        _progress(f"warning: {column.run.label} sent no usage chunk on a stream with include_usage")


@dataclass(frozen=True, slots=True)
class _ProxySpec:
    """How to start one proxy under test on a given port, and how to talk to it there."""

    name: str
    label: str
    argv: Callable[[int], list[str]]
    endpoint: Callable[[int], Endpoint]
    startup_limit: float


async def start_proxy(
    spec: _ProxySpec, env: dict[str, str], tmp: Path, cpus: set[int] | None, stack: contextlib.ExitStack
) -> _Column:
    """Spawn a proxy on a free port, time it to its first answer, and take its idle RSS."""
    port = free_port()
    _progress(f"starting {spec.label}")
    child = spawn(spec.label, spec.argv(port), env=env, log=tmp / f"{spec.name}.log", cpus=cpus)
    stack.callback(child.stop)
    endpoint = spec.endpoint(port)
    startup = await _first_answer(child, endpoint, spec.startup_limit)
    await asyncio.sleep(IDLE_SETTLE_SECONDS)
    rss = child.rss_bytes()
    _progress(f"{spec.label} answered {startup:.2f} s after spawn; idle RSS {rss / 2**20:.0f} MB")
    column = _Column(TargetRun(spec.name, spec.label, startup_s=startup, rss_idle_bytes=rss), endpoint, child)
    await _check_stream(column)
    return column


def gateway_spec(config: Path, key: str) -> _ProxySpec:
    return _ProxySpec(
        "gateway",
        "gateway",
        lambda port: [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--policy",
            str(_policy_path(config)),
            "--port",
            str(port),
        ],
        lambda port: Endpoint("127.0.0.1", port, "/v1/chat/completions", "frontier", key),
        GATEWAY_STARTUP_TIMEOUT,
    )


def _floor_spec() -> _ProxySpec:
    return _ProxySpec(
        "floor",
        "Python floor",
        lambda port: [
            sys.executable, "-m", "uvicorn", "gateway.bench.floor_app:app", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--no-proxy-headers",
            "--log-level", "warning",
        ],
        lambda port: Endpoint("127.0.0.1", port, "/v1/chat/completions", MODEL),
        GATEWAY_STARTUP_TIMEOUT,
    )  # fmt: skip


def _litellm_spec(config: Path, key: str) -> _ProxySpec:
    return _ProxySpec(
        "litellm",
        "LiteLLM proxy",
        lambda port: litellm_proxy.command(config, port),
        lambda port: Endpoint("127.0.0.1", port, "/v1/chat/completions", MODEL, key),
        LITELLM_STARTUP_TIMEOUT,
    )


def write_gateway_config(path: Path, upstream_url: str) -> Path:
    """Write the deployments file and, beside it, the policy: one route, `frontier`, the default."""
    deployments = {"deployments": {"fake": {"provider": "openai", "model": MODEL, "api_base": upstream_url}}}
    path.write_text(yaml.safe_dump(deployments))
    policy = {"routes": {"frontier": {"deployments": ["fake"]}}, "default_route": "frontier"}
    _policy_path(path).write_text(yaml.safe_dump(policy))
    return path


def _policy_path(config: Path) -> Path:
    return config.with_name("policy.yaml")


async def _bench(duration: float, with_litellm: bool) -> Outcome:
    warmup = _warmup(duration)
    available = sorted(os.sched_getaffinity(0))
    pinned = len(available) >= 2
    proxy_cpus = {available[0]} if pinned else None
    client_cpus = {available[1]} if pinned else None
    notes: list[str] = []
    if not pinned:
        notes.append("fewer than 2 CPUs available: nothing pinned, proxy and client compete for one core")

    litellm_status = "skipped (--no-litellm)"
    if with_litellm:
        _progress("looking for LiteLLM proxy (imports it in a subprocess)")
        reason = litellm_proxy.unavailable_reason()
        litellm_status = reason or "measured"
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)

    # The caller's GATEWAY_* settings must not change what is measured (a host, keys, timeouts).
    env = litellm_proxy.offline_env({k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")})
    gateway_key = "gw-bench-" + secrets.token_hex(16)
    env.update(
        GATEWAY_MANAGE_LOCAL_MODEL="false",
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_API_KEYS=gateway_key,  # authenticated, as in production
        PYTHONUNBUFFERED="1",
    )
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        env["GATEWAY_STATE_DIR"] = str(tmp / "state")
        _progress("starting the fake upstream")
        fake_argv = [
            sys.executable,
            "-m",
            "gateway.fakes.openai_upstream",
            "--port",
            "0",
            "--chunks",
            str(CHUNKS),
        ]
        fake = spawn("fake upstream", fake_argv, env=env, log=tmp / "fake.log", cpus=client_cpus)
        stack.callback(fake.stop)
        upstream_url = await ready_line(fake, "READY ", 30.0)
        direct = _Column(
            TargetRun("direct", "direct upstream"),
            _endpoint(upstream_url, "/v1/chat/completions", MODEL),
            None,
        )
        await _check_stream(direct)

        env[floor_app.UPSTREAM_ENV] = upstream_url
        floor = await start_proxy(_floor_spec(), env, tmp, proxy_cpus, stack)
        gateway_config = write_gateway_config(tmp / "deployments.yaml", upstream_url)
        gateway = await start_proxy(gateway_spec(gateway_config, gateway_key), env, tmp, proxy_cpus, stack)
        columns = [direct, floor, gateway]
        if litellm_status == "measured":
            key = litellm_proxy.write_config(tmp / "litellm.yaml", upstream_url, MODEL)
            spec = _litellm_spec(tmp / "litellm.yaml", key)
            try:
                columns.append(await start_proxy(spec, env, tmp, proxy_cpus, stack))
            except ChildFailed as exc:
                litellm_status = f"failed to start: {str(exc).splitlines()[0]}"
                _progress(f"LiteLLM proxy: {exc}")

        for phase, clients, stream in PHASES:
            for column in columns:
                await _measure(column, fake, phase, clients, stream, warmup, duration)
        for column in columns:
            if column.child is not None:
                column.run.rss_after_bytes = column.child.rss_bytes()
        runs = [column.run for column in columns]
        notes += bottleneck_notes(direct.run, runs[1:])
    cpus = {"available": available, "proxy": sorted(proxy_cpus or ()), "client": sorted(client_cpus or ())}
    return Outcome(runs, litellm_status, notes, cpus)


async def _measure(
    column: _Column, fake: Child, phase: str, clients: int, stream: bool, warmup: float, duration: float
) -> None:
    meters: dict[str, Callable[[], float]] = {"client": own_cpu_seconds, "upstream": fake.cpu_seconds}
    if column.child is not None:
        meters["proxy"] = column.child.cpu_seconds
        if not column.child.alive():
            raise column.child.failure("died during the benchmark")
    kind = "streams" if stream else "requests"
    _progress(f"{phase}: {column.run.label}, {clients} client(s), {kind}, {warmup:g}+{duration:g} s")
    result = await run_phase(
        column.endpoint, clients=clients, stream=stream, warmup=warmup, duration=duration, meters=meters
    )
    column.run.phases[phase] = result
    p50 = result.percentile_ms(0.5)
    _progress(
        f"  {result.rate:,.0f}/s, p50 {p50 if p50 is None else round(p50, 3)} ms, "
        f"{result.requests} ok, {result.errors} errors"
        + (f", {result.missing_usage} without usage" if stream else "")
    )


def _report(outcome: Outcome, duration: float) -> dict[str, Any]:
    direct = outcome.columns[0]
    values = {run.name: _rounded(figures(run, direct)) for run in outcome.columns}
    text = table([(run.label, values[run.name]) for run in outcome.columns])
    notes = list(outcome.notes)
    missed = missed_targets(values["gateway"])
    notes.append("gateway misses: " + "; ".join(missed) if missed else "gateway meets every target")
    if "litellm" not in values:
        notes.append(f"LiteLLM proxy: {outcome.litellm_status}")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus": outcome.cpus,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "duration_s": duration,
        "warmup_s": _warmup(duration),
        "targets": {row.key: row.target for row in ROWS if row.target},
        "litellm": outcome.litellm_status,
        "figures": values,
        "phases": {run.name: {k: phase_json(p) for k, p in run.phases.items()} for run in outcome.columns},
        "notes": notes,
        "table": text,
    }


def _rounded(values: dict[str, Figure]) -> dict[str, Figure]:
    """Microsecond precision is all a noisy 2-core machine can back."""
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in values.items()}


def run_bench(json_path: Path | None, duration: float, with_litellm: bool) -> int:
    """Run every phase against every target and print the table; 1 if the run itself failed."""
    if duration <= 0:
        print("bench: --duration must be positive", file=sys.stderr)
        return 2
    affinity = os.sched_getaffinity(0)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            outcome = runner.run(_bench(duration, with_litellm))
    except (ChildFailed, ProtocolError, OSError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench interrupted", file=sys.stderr)
        return 130
    finally:
        os.sched_setaffinity(0, affinity)
    report = _report(outcome, duration)
    print(report["table"])
    print()
    for note in report["notes"]:
        print(f"- {note}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {json_path}")
    return 0
