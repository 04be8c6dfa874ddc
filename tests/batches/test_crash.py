"""Killing a worker with SIGKILL, while it claims and finishes lines as fast as it can (so almost always
inside a transaction), loses nothing and counts nothing twice: after each kill, the batch's counts and
cost are exactly those of its done lines, and every finish the worker saw succeed is there; another
worker then claims the dead one's lines once their lease runs out, the dead worker's late finishes
count nothing, and the batch completes with each request in its output file once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from gateway.batches.rows import BatchRow
from tests.batches.conftest import Backend, new_batch, output_of
from tests.batches.crash_worker import COST, WORKER

REPO = Path(__file__).resolve().parents[2]
LINES = 400
KILLS = 3
# Finishes the worker reports before each kill.
FINISHES_BEFORE_KILL = 50


def run_until_killed(backend: Backend) -> list[str]:
    """Start the worker, SIGKILL it once it has reported FINISHES_BEFORE_KILL more finishes, and return
    what it printed."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.batches.crash_worker", backend.name, backend.location],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed: list[str] = []
    assert worker.stdout is not None
    try:
        while sum(line.startswith("done") for line in printed) < FINISHES_BEFORE_KILL:
            line = worker.stdout.readline()
            assert line, f"the worker ended early: {worker.stderr.read() if worker.stderr else ''}"
            printed.append(line.strip())
        os.kill(worker.pid, signal.SIGKILL)
        printed += worker.stdout.read().split()  # what it wrote before the signal landed
    finally:
        worker.kill()
        worker.wait(timeout=10)
        worker.stdout.close()
        if worker.stderr:
            worker.stderr.close()
    assert worker.returncode == -signal.SIGKILL
    return printed


def test_a_worker_killed_mid_transaction_loses_and_doubles_nothing(backend: Backend) -> None:
    async def create() -> str:
        store = backend.open(clock=time.time)
        try:
            return (await new_batch(store, LINES)).id
        finally:
            await store.aclose()

    batch_id = asyncio.run(create())
    reported: set[int] = set()
    for _ in range(KILLS):
        printed = run_until_killed(backend)
        assert not [line for line in printed if line.startswith("twice")]
        reported |= {int(line.split()[1]) for line in printed if line.startswith("done ")}
        done = {row[0] for row in backend.query("SELECT line_no FROM batch_lines WHERE state = 'done'")}
        assert reported <= done  # a finish the worker saw succeed was committed
        assert len(done - reported) <= KILLS  # committed, the worker killed before it could say so
        counts = backend.query("SELECT completed, failed, cost_usd, total_tokens FROM batches")
        assert counts == [(len(done), 0, COST * len(done), len(done))]

    async def take_over() -> tuple[list[bool], list[str], BatchRow | None, bytes | None]:
        store = backend.open(clock=time.time)
        later = time.time() + 3601  # the dead worker's leases have run out
        claimed = []
        while lines := await store.claim("heir", 500, 60, now=later):
            claimed += lines
        stale = [
            await store.finish_line(
                WORKER, line.batch_id, line.line_no, "done", output_of(line.custom_id), 1.0
            )
            for line in claimed[:5]
        ]
        for line in claimed:
            assert await store.finish_line(
                "heir", line.batch_id, line.line_no, "done", output_of(line.custom_id), COST
            )
        finalized = await store.finalize_ready(now=later)
        found = await store.get_batch("alpha", batch_id)
        output = (
            await store.file_content("alpha", found.output_file_id)
            if found and found.output_file_id
            else None
        )
        return stale, finalized, found, output

    stale, finalized, found, output = asyncio.run(take_over())
    assert stale == [False] * 5 and finalized == [batch_id]
    assert found is not None and output is not None
    assert (found.status, found.completed, found.failed, found.cost_usd) == (
        "completed",
        LINES,
        0,
        COST * LINES,
    )
    custom_ids = [orjson.loads(line)["custom_id"] for line in output.splitlines()]
    assert custom_ids == [f"request-{n}" for n in range(1, LINES + 1)]
