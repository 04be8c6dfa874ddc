"""The servers `gateway bench` puts under load: how each is started, timed to its first answer, and
measured for one phase.

A proxy runs from a spec (its command on a given port, and where to send requests there). Gateways
run in the bench's temporary directory, not the project's, so that `--gateway-pythonpath` decides
which checkout's `gateway` package they import (`python -m` puts the working directory first on
sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.bench import litellm_proxy
from gateway.bench.load import Endpoint, ProtocolError, RequestSource, request_once, run_phase, stream_verdict
from gateway.bench.procs import Child, ChildFailed, free_port, own_cpu_seconds, spawn
from gateway.bench.report import TargetRun

MODEL = "fake-model"
# The route of the bench's deployments file, and the default route of every policy it writes.
ROUTE = "frontier"
DEPLOYMENT = "fake"
# The same fake upstream, as a deployment that serves the Responses API itself (passed through).
RESPONSES_DEPLOYMENT = "fake-responses"
GATEWAY_STARTUP_TIMEOUT = 60.0
LITELLM_STARTUP_TIMEOUT = 180.0
IDLE_SETTLE_SECONDS = 1.0


@dataclass(slots=True)
class Column:
    """A target under load: where to send requests, and the process whose CPU and memory count."""

    run: TargetRun
    endpoint: Endpoint
    child: Child | None


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def endpoint_at(url: str, path: str, model: str, api_key: str | None = None) -> Endpoint:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return Endpoint(parts.hostname, parts.port, path, model, api_key)


async def first_answer(child: Child, endpoint: Endpoint, request: bytes, limit: float) -> float:
    """Seconds from spawning `child` to its first 200 answer to `request`: start-up as a client sees it."""
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


async def check_stream(column: Column) -> None:
    """One stream before the load, so a proxy that breaks streams fails loudly, not as a slow figure."""
    status, body = await request_once(column.endpoint, column.endpoint.request(stream=True))
    complete, usage = stream_verdict(body)
    if status != 200 or not complete:
        raise ChildFailed(f"{column.run.label} answered a stream with HTTP {status}: {body[:300]!r}")
    if not usage:
        progress(f"warning: {column.run.label} sent no usage chunk on a stream with include_usage")


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """How to start one proxy under test on a given port, and how to talk to it there."""

    name: str
    label: str
    argv: Callable[[int], list[str]]
    endpoint: Callable[[int], Endpoint]
    startup_limit: float
    # Where it runs (None: the bench's own directory).
    cwd: Path | None = None


async def launch(
    spec: ProxySpec,
    env: dict[str, str],
    tmp: Path,
    cpus: set[int] | None,
    stack: contextlib.ExitStack,
    first_request: Callable[[Endpoint], bytes] | None = None,
) -> Column:
    """Spawn a proxy on a free port, time it to its first answer (to `first_request`, by default the
    endpoint's plain request), and take its idle RSS."""
    port = free_port()
    progress(f"starting {spec.label}")
    child = spawn(spec.label, spec.argv(port), env=env, log=tmp / f"{spec.name}.log", cpus=cpus, cwd=spec.cwd)
    stack.callback(child.stop)
    endpoint = spec.endpoint(port)
    request = first_request(endpoint) if first_request is not None else endpoint.request(stream=False)
    startup = await first_answer(child, endpoint, request, spec.startup_limit)
    await asyncio.sleep(IDLE_SETTLE_SECONDS)
    rss = child.rss_bytes()
    progress(f"{spec.label} answered {startup:.2f} s after spawn; idle RSS {rss / 2**20:.0f} MB")
    return Column(TargetRun(spec.name, spec.label, startup_s=startup, rss_idle_bytes=rss), endpoint, child)


async def start_proxy(
    spec: ProxySpec, env: dict[str, str], tmp: Path, cpus: set[int] | None, stack: contextlib.ExitStack
) -> Column:
    """`launch`, then one stream through it."""
    column = await launch(spec, env, tmp, cpus, stack)
    await check_stream(column)
    return column


def gateway_spec(
    config: Path,
    key: str,
    *,
    policy: Path | None = None,
    model: str = ROUTE,
    name: str = "gateway",
    label: str = "gateway",
    startup_limit: float = GATEWAY_STARTUP_TIMEOUT,
) -> ProxySpec:
    """`gateway serve` with the deployments at `config` and `policy` (by default the policy file
    beside it), in the directory of `config`; requests name `model`."""
    policy_file = policy or policy_path(config)
    return ProxySpec(
        name,
        label,
        lambda port: [
            sys.executable, "-m", "gateway", "serve", "--config", str(config.resolve()),
            "--policy", str(policy_file.resolve()), "--port", str(port),
        ],
        lambda port: Endpoint("127.0.0.1", port, "/v1/chat/completions", model, key),
        startup_limit,
        cwd=config.resolve().parent,
    )  # fmt: skip


def floor_spec() -> ProxySpec:
    return ProxySpec(
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


def litellm_spec(config: Path, key: str) -> ProxySpec:
    return ProxySpec(
        "litellm",
        "LiteLLM proxy",
        lambda port: litellm_proxy.command(config, port),
        lambda port: Endpoint("127.0.0.1", port, "/v1/chat/completions", MODEL, key),
        LITELLM_STARTUP_TIMEOUT,
    )


def write_gateway_config(path: Path, upstream_url: str) -> Path:
    """Write the deployments file and, beside it, the policy: one route, `frontier`, the default."""
    fake = {"provider": "openai", "model": MODEL, "api_base": upstream_url}
    deployments = {"deployments": {DEPLOYMENT: fake, RESPONSES_DEPLOYMENT: {**fake, "responses_api": True}}}
    path.write_text(yaml.safe_dump(deployments))
    policy = {"routes": {ROUTE: {"deployments": [DEPLOYMENT]}}, "default_route": ROUTE}
    policy_path(path).write_text(yaml.safe_dump(policy))
    return path


def policy_path(config: Path) -> Path:
    return config.with_name("policy.yaml")


def write_policy(config: Path, name: str, policy: dict[str, Any]) -> Path:
    """A policy file beside the deployments at `config`, for one depth row."""
    path = config.with_name(f"policy-{name}.yaml")
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


async def measure(
    column: Column,
    fake: Child,
    phase: str,
    clients: int,
    stream: bool,
    warmup: float,
    duration: float,
    *,
    requests: RequestSource | None = None,
    count_header: bytes | None = None,
) -> None:
    """One phase against one column, its result kept in the column's run."""
    meters: dict[str, Callable[[], float]] = {"client": own_cpu_seconds, "upstream": fake.cpu_seconds}
    if column.child is not None:
        meters["proxy"] = column.child.cpu_seconds
        if not column.child.alive():
            raise column.child.failure("died during the benchmark")
    kind = "streams" if stream else "requests"
    progress(f"{phase}: {column.run.label}, {clients} client(s), {kind}, {warmup:g}+{duration:g} s")
    result = await run_phase(
        column.endpoint,
        clients=clients,
        stream=stream,
        warmup=warmup,
        duration=duration,
        meters=meters,
        requests=requests,
        count_header=count_header,
    )
    if column.child is not None and not column.child.alive():
        raise column.child.failure("died during the benchmark")
    column.run.phases[phase] = result
    p50 = result.percentile_ms(0.5)
    counted = ", ".join(f"{count} {value}" for value, count in result.header_values.most_common())
    progress(
        f"  {result.rate:,.0f}/s, p50 {p50 if p50 is None else round(p50, 3)} ms, "
        f"{result.requests} ok, {result.errors} errors"
        + (f", {result.missing_usage} without usage" if stream else "")
        + (f" ({counted})" if counted else "")
    )
