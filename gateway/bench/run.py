"""`gateway bench`: the gateway's overhead against a fake upstream, beside a direct baseline, in one run;
then the depth table (gateway.bench.depth): one gateway per policy layer, against the same floor.

The proxy under test gets core 0 to itself; the fake upstream and the load generator share core 1,
so measuring direct-to-upstream in the same run shows whether that core, not the proxy, set the pace.
With `gateway_pythonpath`, the gateways (never the floor, the fake or the bench) import the `gateway`
package from that directory: an older checkout, for before/after runs in one sitting.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.bench import floor_app, litellm_proxy
from gateway.bench.depth import DepthSetup, floor_row, run_rows
from gateway.bench.depth_rows import CACHE_ENTRIES, DEFAULT_PROMPTS, DEPTH_ROWS
from gateway.bench.load import ProtocolError, event_loop_factory
from gateway.bench.procs import ChildFailed, ready_line, spawn
from gateway.bench.proxies import (
    MODEL,
    Column,
    check_stream,
    endpoint_at,
    floor_spec,
    gateway_spec,
    litellm_spec,
    measure,
    progress,
    start_proxy,
    write_gateway_config,
)
from gateway.bench.report import (
    LATENCY,
    ROWS,
    STREAMS,
    THROUGHPUT,
    DepthRun,
    Figure,
    TargetRun,
    bottleneck_notes,
    depth_figures,
    depth_json,
    depth_misses,
    depth_notes,
    depth_table,
    figures,
    missed_targets,
    phase_json,
    table,
)
from gateway.settings import Settings

# soak.py starts its gateway with these.
__all__ = ["gateway_spec", "run_bench", "start_proxy", "write_gateway_config"]

CHUNKS = 20
PHASES = ((LATENCY, 1, False), (THROUGHPUT, 50, False), (STREAMS, 10, True))
# Without the main table, the floor is measured for the depth table's ratios only.
FLOOR_ONLY_PHASES = ((LATENCY, 1, False), (THROUGHPUT, 50, False))
Tables = Literal["both", "main", "depth"]


@dataclass(frozen=True, slots=True)
class GatewayCode:
    """Which `gateway` package the gateways import, and the PYTHONPATH that chose it."""

    pythonpath: Path | None
    package: str


@dataclass(slots=True)
class Outcome:
    columns: list[TargetRun]
    floor: TargetRun
    litellm_status: str
    notes: list[str]
    cpus: dict[str, Any]
    depth: list[DepthRun] = field(default_factory=list)


def _warmup(duration: float) -> float:
    return min(2.0, max(0.1, duration / 5))


def gateway_code(env: dict[str, str]) -> GatewayCode:
    """Ask a Python with the gateways' environment, outside the project, where `gateway` comes from."""
    probe = subprocess.run(
        [sys.executable, "-c", "import gateway; print(gateway.__file__)"],
        env=env, cwd="/", capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines() or ["no output"]
        raise ChildFailed(f"the gateways cannot import gateway: {lines[-1]}")
    pythonpath = env.get("PYTHONPATH")
    return GatewayCode(Path(pythonpath) if pythonpath else None, str(Path(probe.stdout.strip()).parent))


def _gateway_env(env: dict[str, str], pythonpath: Path | None, embedder: Path) -> dict[str, str]:
    gateway_env = dict(env)
    # Gateways run in the bench's temporary directory: the model's path must not be relative.
    gateway_env["GATEWAY_EMBEDDER_PATH"] = str(embedder.resolve())
    if pythonpath is not None:
        gateway_env["PYTHONPATH"] = str(pythonpath.resolve())
    return gateway_env


@dataclass(frozen=True, slots=True)
class _Run:
    duration: float
    with_litellm: bool
    tables: Tables
    depth_rows: tuple[str, ...]
    gateway_env: dict[str, str]
    cache_entries: int
    prompts: Path
    embedder: Path


async def _bench(run: _Run, env: dict[str, str]) -> Outcome:
    warmup = _warmup(run.duration)
    available = sorted(os.sched_getaffinity(0))
    pinned = len(available) >= 2
    proxy_cpus = {available[0]} if pinned else None
    client_cpus = {available[1]} if pinned else None
    notes: list[str] = []
    if not pinned:
        notes.append("fewer than 2 CPUs available: nothing pinned, proxy and client compete for one core")
    main = run.tables != "depth"

    litellm_status = "skipped (--no-litellm)" if main else "skipped (no main table)"
    if run.with_litellm and main:
        progress("looking for LiteLLM proxy (imports it in a subprocess)")
        reason = litellm_proxy.unavailable_reason()
        litellm_status = reason or "measured"
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)

    gateway_key = env["GATEWAY_API_KEYS"]
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        env["GATEWAY_STATE_DIR"] = str(tmp / "state")
        gateway_env = {**run.gateway_env, "GATEWAY_STATE_DIR": str(tmp / "state")}
        progress("starting the fake upstream")
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
        direct = Column(
            TargetRun("direct", "direct upstream"),
            endpoint_at(upstream_url, "/v1/chat/completions", MODEL),
            None,
        )
        await check_stream(direct)

        env[floor_app.UPSTREAM_ENV] = upstream_url
        floor = await start_proxy(floor_spec(), env, tmp, proxy_cpus, stack)
        gateway_config = write_gateway_config(tmp / "deployments.yaml", upstream_url)
        columns = [floor]
        gateway: Column | None = None
        if main:
            gateway = await start_proxy(
                gateway_spec(gateway_config, gateway_key), gateway_env, tmp, proxy_cpus, stack
            )
            columns = [direct, floor, gateway]
        if litellm_status == "measured":
            key = litellm_proxy.write_config(tmp / "litellm.yaml", upstream_url, MODEL)
            spec = litellm_spec(tmp / "litellm.yaml", key)
            try:
                columns.append(await start_proxy(spec, env, tmp, proxy_cpus, stack))
            except ChildFailed as exc:
                litellm_status = f"failed to start: {str(exc).splitlines()[0]}"
                progress(f"LiteLLM proxy: {exc}")

        for phase, clients, stream in PHASES if main else FLOOR_ONLY_PHASES:
            for column in columns:
                await measure(column, fake, phase, clients, stream, warmup, run.duration)
        for column in columns:
            if column.child is not None:
                column.run.rss_after_bytes = column.child.rss_bytes()
                column.child.stop()  # the depth rows have the proxies' core to themselves
        if main:
            notes += bottleneck_notes(direct.run, [column.run for column in columns[1:]])

        depth: list[DepthRun] = []
        if run.tables != "main" and run.depth_rows:
            setup = DepthSetup(
                gateway_config, gateway_key, gateway_env, tmp, proxy_cpus, client_cpus, fake,
                warmup, run.duration, run.prompts, run.embedder, set(available), run.cache_entries,
            )  # fmt: skip
            depth = await run_rows(setup, run.depth_rows, gateway.run if gateway is not None else None)
    cpus = {"available": available, "proxy": sorted(proxy_cpus or ()), "client": sorted(client_cpus or ())}
    runs = [column.run for column in columns] if main else []
    return Outcome(runs, floor.run, litellm_status, notes, cpus, depth)


def _report(outcome: Outcome, duration: float, code: GatewayCode, tables: Tables) -> dict[str, Any]:
    notes = list(outcome.notes)
    missed: list[str] = []
    values: dict[str, dict[str, Figure]] = {}
    text = None
    if outcome.columns:
        direct = outcome.columns[0]
        values = {run.name: _rounded(figures(run, direct)) for run in outcome.columns}
        text = table([(run.label, values[run.name]) for run in outcome.columns])
        missed += missed_targets(values["gateway"])
        if "litellm" not in values:
            notes.append(f"LiteLLM proxy: {outcome.litellm_status}")
    depth = None
    if outcome.depth:
        floor_rps = outcome.floor.phases[THROUGHPUT].rate
        rows = [
            (run, _rounded(depth_figures(run, floor_rps)))
            for run in [floor_row(outcome.floor), *outcome.depth]
        ]
        missed += depth_misses(rows)
        notes += depth_notes(rows)
        depth = {
            "floor_rps": round(floor_rps, 1),
            "rows": {run.name: depth_json(run, row_values) for run, row_values in rows},
            "table": depth_table(rows),
        }
    elif tables != "main":
        notes.append("depth table: no rows measured")
    notes.append("gateway misses: " + "; ".join(missed) if missed else "gateway meets every target")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus": outcome.cpus,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "gateway": {
            "pythonpath": str(code.pythonpath) if code.pythonpath is not None else None,
            "package": code.package,
        },
        "duration_s": duration,
        "warmup_s": _warmup(duration),
        "targets": {row.key: row.target for row in ROWS if row.target},
        "litellm": outcome.litellm_status,
        "figures": values,
        "phases": {
            run.name: {k: phase_json(p) for k, p in run.phases.items()}
            for run in outcome.columns or [outcome.floor]
        },
        "depth": depth,
        "notes": notes,
        "table": text,
    }


def _rounded(values: dict[str, Figure]) -> dict[str, Figure]:
    """Microsecond precision is all a noisy 2-core machine can back."""
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in values.items()}


def _problem(
    duration: float, tables: Tables, depth_rows: Sequence[str], pythonpath: Path | None, cache_entries: int
) -> str | None:
    if duration <= 0:
        return "--duration must be positive"
    unknown = [name for name in depth_rows if name not in DEPTH_ROWS]
    if unknown:
        return f"no depth row {', '.join(unknown)} (the rows: {', '.join(DEPTH_ROWS)})"
    if tables == "depth" and not depth_rows:
        return "no depth rows to run"
    if pythonpath is not None and not (pythonpath / "gateway" / "__init__.py").is_file():
        return f"--gateway-pythonpath {pythonpath}: no gateway package there"
    if cache_entries < 1:
        return "--cache-entries must be at least 1"
    return None


def run_bench(
    json_path: Path | None,
    duration: float,
    with_litellm: bool,
    *,
    tables: Tables = "both",
    depth_rows: Sequence[str] = DEPTH_ROWS,
    gateway_pythonpath: Path | None = None,
    cache_entries: int = CACHE_ENTRIES,
    prompts: Path = DEFAULT_PROMPTS,
    embedder: Path | None = None,
) -> int:
    """Run every phase against every target, then the depth rows, and print the tables; 1 if the run
    itself failed (a failed depth row is reported in the table, not as a failed run)."""
    problem = _problem(duration, tables, depth_rows, gateway_pythonpath, cache_entries)
    if problem is not None:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    # The caller's GATEWAY_* settings must not change what is measured (a host, keys, timeouts).
    env = litellm_proxy.offline_env({k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")})
    env.update(
        GATEWAY_MANAGE_LOCAL_MODEL="false",
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_API_KEYS="gw-bench-" + secrets.token_hex(16),  # authenticated, as in production
        PYTHONUNBUFFERED="1",
    )
    model: Path = embedder or Settings.model_fields["embedder_path"].default
    gateway_env = _gateway_env(env, gateway_pythonpath, model)
    affinity = os.sched_getaffinity(0)
    try:
        code = gateway_code(gateway_env)
        if gateway_pythonpath is not None and not Path(code.package).is_relative_to(
            gateway_pythonpath.resolve()
        ):
            print(
                f"bench: the gateways would import {code.package}, not {gateway_pythonpath}", file=sys.stderr
            )
            return 2
        progress(f"gateways run {code.package}")
        run = _Run(
            duration, with_litellm, tables,
            tuple(name for name in DEPTH_ROWS if name in depth_rows and tables != "main"), gateway_env,
            cache_entries, prompts.resolve(), model.resolve(),
        )  # fmt: skip
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            outcome = runner.run(_bench(run, env))
    except (ChildFailed, ProtocolError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench interrupted", file=sys.stderr)
        return 130
    finally:
        os.sched_setaffinity(0, affinity)
    report = _report(outcome, duration, code, tables)
    progress(f"done in {time.perf_counter() - started:.0f} s")
    if report["table"] is not None:
        print(report["table"])
        print()
    if report["depth"] is not None:
        floor_rps = report["depth"]["floor_rps"]
        print(
            f"Depth: one gateway per row; ratio to floor = its req/s over the Python floor's {floor_rps:,.0f}"
        )
        print(report["depth"]["table"])
        print()
    for note in report["notes"]:
        print(f"- {note}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {json_path}")
    return 0
