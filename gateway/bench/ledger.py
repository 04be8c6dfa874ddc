"""`python -m gateway.bench.ledger`: what the spend ledger costs, on SQLite and on PostgreSQL.

Two figures matter and are measured apart: `Ledger.record()` runs on the request path for every
answer (one spool append; µs per record, median over batches), and the drain must keep up with the
traffic (sealed segments copied into the database and committed; records/s). Records are written in
batches with a drain every `--drain-every` records, as the gateway's periodic drain would, and the
store's row count is checked afterwards: a fast ledger that loses or doubles records fails the run.

PostgreSQL gets a scratch database created in the server named by `--postgres-url`, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from gateway.ledger.ledger import Ledger
from gateway.ledger.postgres import PostgresLedgerStore
from gateway.ledger.record import SpendRecord
from gateway.ledger.spool import Spool
from gateway.ledger.sqlite import SqliteLedgerStore
from gateway.ledger.store import LedgerStore, LedgerUnavailable

BACKENDS = ("sqlite", "postgresql")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_DRAIN_PER_S = 5_000.0
TEAMS = ("search", "support", "research", "billing")
ROUTES = (("local", "short", "small", "small-m"), ("frontier", "long", "big", "big-m"))


@dataclass(frozen=True, slots=True)
class Result:
    backend: str
    records: int
    stored: int
    # Ledger.record(): µs per record (median and 95th percentile over batches) and records/s overall.
    record_us_median: float
    record_us_p95: float
    record_per_s: float
    # Sealing, reading, inserting and committing every segment, deleting it after.
    drains: int
    drain_s: float
    drain_per_s: float
    # record() and drain together: the rate the ledger sustains end to end.
    end_to_end_per_s: float
    spool_bytes_per_record: float

    @property
    def meets_target(self) -> bool:
        return self.stored == self.records and self.drain_per_s >= TARGET_DRAIN_PER_S


def _progress(message: str) -> None:
    print(f"[ledger bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sample_records(count: int) -> list[SpendRecord]:
    """Records shaped like the gateway's: random ids, a few teams and routes, priced usage, signals."""
    start = time.time()
    records = []
    for number in range(count):
        route, rule, deployment, model = ROUTES[number % 7 == 0]
        prompt, completion = 200 + number % 1800, 20 + number % 380
        cost = (prompt * 0.15 + completion * 0.6) / 1e6
        upstream_ms = 250.0 + number % 900
        records.append(
            SpendRecord(
                id=os.urandom(12).hex(),
                request_id=uuid.uuid4().hex,
                at=start + number * 0.001,
                team=TEAMS[number % len(TEAMS)],
                key_id=f"key-{number % 25:03d}",
                policy="default",
                route=route,
                rule=rule,
                deployment=deployment,
                model=model,
                stream=number % 3 == 0,
                status=200,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=prompt // 4 if number % 5 == 0 else 0,
                estimated=number % 11 == 0,
                cost_usd=cost,
                reference_usd=(prompt * 2.5 + completion * 10.0) / 1e6,
                latency_ms=upstream_ms + 1.3,
                ttfb_ms=upstream_ms / 3,
                upstream_ms=upstream_ms,
                overhead_ms=1.3,
                signals={"length": prompt * 4, "topic": ("code", "chat", "math")[number % 3], "score": 0.37},
            )
        )
    return records


def measure(
    backend: str,
    store: LedgerStore,
    spool_dir: Path,
    records: Sequence[SpendRecord],
    batch: int,
    drain_every: int,
) -> Result:
    """Record every record in batches (timed), draining every `drain_every` (timed apart)."""
    ledger = Ledger(Spool(spool_dir), store)
    per_record_us: list[float] = []
    record_s = drain_s = 0.0
    drains = drained = spooled_bytes = 0
    since_drain = 0

    def spool_size() -> int:
        return sum(path.stat().st_size for path in spool_dir.glob("*.jsonl"))

    async def drain() -> None:
        nonlocal drain_s, drains, drained, spooled_bytes
        spooled_bytes += spool_size()
        started = time.perf_counter()
        drained += await ledger.drain()
        drain_s += time.perf_counter() - started
        drains += 1

    async def run() -> None:
        nonlocal record_s, since_drain
        for first in range(0, len(records), batch):
            chunk = records[first : first + batch]
            started = time.perf_counter()
            for record in chunk:
                ledger.record(record)
            elapsed = time.perf_counter() - started
            record_s += elapsed
            per_record_us.append(elapsed / len(chunk) * 1e6)
            since_drain += len(chunk)
            if since_drain >= drain_every:
                since_drain = 0
                await drain()
                _progress(f"{backend}: {first + len(chunk):,}/{len(records):,} recorded and drained")
        if since_drain:
            await drain()

    try:
        asyncio.run(run())
        stored = int(store.report([])[0]["requests"])
    finally:
        asyncio.run(ledger.close())
    if drained != len(records) or stored != len(records):
        _progress(f"{backend}: {len(records):,} recorded but {drained:,} drained and {stored:,} stored")
    ordered = sorted(per_record_us)
    return Result(
        backend=backend,
        records=len(records),
        stored=stored,
        record_us_median=statistics.median(ordered),
        record_us_p95=ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        record_per_s=len(records) / record_s,
        drains=drains,
        drain_s=drain_s,
        drain_per_s=drained / drain_s,
        end_to_end_per_s=len(records) / (record_s + drain_s),
        spool_bytes_per_record=spooled_bytes / len(records),
    )


@contextmanager
def scratch_postgres(url: str) -> Iterator[str]:
    """A database of the benchmark's own in the server at `url` (dropped after, connections and all)."""
    name = f"gw_bench_{uuid.uuid4().hex}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield urlsplit(url)._replace(path=f"/{name}").geturl()
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def postgres_version(url: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def run_backend(
    backend: str, postgres_url: str, records: Sequence[SpendRecord], batch: int, drain_every: int
) -> Result:
    with tempfile.TemporaryDirectory(prefix="gateway-ledger-bench-") as directory:
        spool_dir = Path(directory) / "spool"
        if backend == "sqlite":
            return measure(
                backend,
                SqliteLedgerStore(Path(directory) / "ledger.sqlite"),
                spool_dir,
                records,
                batch,
                drain_every,
            )
        with scratch_postgres(postgres_url) as url:
            return measure(backend, PostgresLedgerStore(url), spool_dir, records, batch, drain_every)


COLUMNS = (
    ("backend", "{}"),
    ("records", "{:,}"),
    ("record() µs median", "{:.2f}"),
    ("record() µs p95", "{:.2f}"),
    ("record() rec/s", "{:,.0f}"),
    ("drains", "{}"),
    ("drain rec/s", "{:,.0f}"),
    ("end-to-end rec/s", "{:,.0f}"),
    ("stored", "{:,}"),
    (f"drain ≥ {TARGET_DRAIN_PER_S:,.0f}/s", "{}"),
)


def table(results: Sequence[Result]) -> str:
    """One line per backend; the first column left-aligned, the figures right-aligned."""
    rows = [[name for name, _ in COLUMNS]]
    for result in results:
        values: tuple[Any, ...] = (
            result.backend, result.records, result.record_us_median, result.record_us_p95,
            result.record_per_s, result.drains, result.drain_per_s, result.end_to_end_per_s, result.stored,
            "yes" if result.meets_target else "NO",
        )  # fmt: skip
        rows.append([fmt.format(value) for (_, fmt), value in zip(COLUMNS, values, strict=True)])
    widths = [max(len(row[index]) for row in rows) for index in range(len(COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(rows[0]), "  ".join("-" * width for width in widths), *map(line, rows[1:])])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench.ledger", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--records", type=int, default=50_000, help="records per backend (default 50,000)")
    parser.add_argument("--batch", type=int, default=1_000, help="records per timed batch of record()")
    parser.add_argument("--drain-every", type=int, default=5_000, help="records between drains")
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help=f"a server to create a scratch database in ({DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="only this backend (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Benchmark each backend; 1 if a backend failed or lost or doubled records, 2 on bad arguments."""
    args = parse_args(argv)
    if args.records < 1 or args.batch < 1 or args.drain_every < 1:
        print("ledger bench: --records, --batch and --drain-every must be positive", file=sys.stderr)
        return 2
    backends: list[str] = args.backend or list(BACKENDS)
    _progress(f"making {args.records:,} records")
    records = sample_records(args.records)
    results: list[Result] = []
    failures: list[str] = []
    for backend in backends:
        _progress(f"{backend}: start")
        try:
            results.append(run_backend(backend, args.postgres_url, records, args.batch, args.drain_every))
        except (LedgerUnavailable, psycopg.Error, sqlite3.Error, OSError) as exc:
            failures.append(f"{backend}: {exc}")
            _progress(f"{backend} failed: {exc}")
    text = table(results)
    print(text)
    notes = [f"{failure}" for failure in failures]
    for result in results:
        if result.stored != result.records:
            notes.append(f"{result.backend}: {result.records:,} recorded, {result.stored:,} stored")
        elif result.drain_per_s < TARGET_DRAIN_PER_S:
            notes.append(f"{result.backend}: drain below target ({result.drain_per_s:,.0f} records/s)")
    for note in notes:
        print(f"- {note}")
    if args.json is not None:
        report = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "sqlite": sqlite3.sqlite_version,
                "postgresql": postgres_version(args.postgres_url)
                if any(result.backend == "postgresql" for result in results)
                else None,
            },
            "settings": {"records": args.records, "batch": args.batch, "drain_every": args.drain_every},
            "target_drain_per_s": TARGET_DRAIN_PER_S,
            "results": [{**asdict(result), "meets_target": result.meets_target} for result in results],
            "notes": notes,
            "table": text,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    lost = any(result.stored != result.records for result in results)
    return 1 if failures or lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
