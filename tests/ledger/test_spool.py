"""The write-ahead spool: segments in writing order, records that outlive a killed writer, a torn last
line costing only itself, and a segment still being written by a live process left alone."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger.record import SpendRecord
from gateway.ledger.spool import Spool, claimed

PROJECT = Path(__file__).resolve().parents[2]

# Appends `count` records to a spool in `directory`, then dies by SIGKILL: no close, no flush, no atexit.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from typing import Any
from gateway.ledger.record import SpendRecord
from gateway.ledger.spool import Spool

directory, count = Path(sys.argv[1]), int(sys.argv[2])
spool = Spool(directory)
for number in range(count):
    spool.append(SpendRecord(
        id=f"killed-{number}", request_id=f"req-{number}", at=1_700_000_000.0 + number, team="alpha",
        key_id=None, policy="default", route="local", rule="short", deployment="small", model="small-m",
        stream=False, status=200, prompt_tokens=number, signals={"length": number},
    ))
os.kill(os.getpid(), signal.SIGKILL)
"""

# Appends one record, says so, and keeps its segment open (and locked) until stdin closes.
LIVE_WRITER = """
import sys
from pathlib import Path
from typing import Any
from gateway.ledger.record import SpendRecord
from gateway.ledger.spool import Spool

spool = Spool(Path(sys.argv[1]))
spool.append(SpendRecord(
    id="live-0", request_id="req-live", at=1_700_000_000.0, team=None, key_id=None, policy=None,
    route=None, rule=None, deployment=None, model=None, stream=False, status=200,
))
print("appended", flush=True)
sys.stdin.read()
"""


def spend(record_id: str, **fields: Any) -> SpendRecord:
    values: dict[str, Any] = {
        "request_id": f"req-{record_id}", "at": 1_700_000_000.0, "team": "alpha", "key_id": "k1",
        "policy": "default", "route": "local", "rule": "short", "deployment": "small", "model": "small-m",
        "stream": False, "status": 200, **fields,
    }  # fmt: skip
    return SpendRecord(id=record_id, **values)


def ids_in(path: Path) -> list[str] | None:
    with claimed(path) as records:
        return None if records is None else [record.id for record in records]


def seal(spool: Spool) -> None:
    """What the ledger does: seal, then sync and unlock the sealed segment."""
    sealed = spool.seal()
    if sealed is not None:
        Spool.release(sealed)


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def test_sealed_segments_come_oldest_first_and_never_the_current_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    try:
        for record_id in ("a", "b", "c"):
            spool.append(spend(record_id))
        assert spool.sealed() == []
        seal(spool)
        spool.append(spend("d"))
        spool.append(spend("e"))
        seal(spool)
        seal(spool)  # nothing written since: no new, empty segment
        spool.append(spend("f"))

        first, second = spool.sealed()
        assert first.name < second.name
        assert ids_in(first) == ["a", "b", "c"]
        assert ids_in(second) == ["d", "e"]
        assert len(list(tmp_path.glob("*.jsonl"))) == 3  # the two sealed ones and the current one
    finally:
        spool.close()
    successor = Spool(tmp_path)  # e.g. after a restart: every segment left is ready to drain
    try:
        assert [ids_in(path) for path in successor.sealed()] == [["a", "b", "c"], ["d", "e"], ["f"]]
    finally:
        successor.close()


def test_a_record_reads_back_with_every_field(tmp_path: Path) -> None:
    record = spend(
        "full", error="upstream_timeout", cache="semantic", prompt_tokens=12, completion_tokens=3,
        cached_tokens=4, reasoning_tokens=2, estimated=True, cost_usd=0.25, reference_usd=1.5,
        latency_ms=12.5, ttfb_ms=3.25, upstream_ms=10.0, overhead_ms=2.5, status=504, stream=True,
        signals={"length": 12, "topic": "code", "score": 0.5}, body="[redacted]",
    )  # fmt: skip
    spool = Spool(tmp_path)
    spool.append(record)
    seal(spool)
    (path,) = spool.sealed()
    spool.close()
    with claimed(path) as records:
        assert records == [record]


def test_closing_an_unused_spool_leaves_no_file(tmp_path: Path) -> None:
    Spool(tmp_path).close()
    assert list(tmp_path.iterdir()) == []


def test_records_survive_a_writer_killed_right_after_appending(tmp_path: Path) -> None:
    writer = subprocess.run(python(KILLED_WRITER, str(tmp_path), "500"), cwd=PROJECT, timeout=60, check=False)
    assert writer.returncode == -signal.SIGKILL

    spool = Spool(tmp_path)
    try:
        (left,) = spool.sealed()
        with claimed(left) as records:
            assert records is not None
            assert [record.id for record in records] == [f"killed-{number}" for number in range(500)]
            assert records[499].prompt_tokens == 499
            assert records[499].signals == {"length": 499}
    finally:
        spool.close()


def test_a_torn_last_line_is_skipped_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    for record_id in ("a", "b", "c"):
        spool.append(spend(record_id))
    seal(spool)
    (path,) = spool.sealed()
    spool.close()
    whole = path.read_bytes()
    # A power cut in the middle of the fourth write: part of a record, no newline.
    path.write_bytes(whole + b'{"id":"torn","request_id":"req-torn","at":1700000000.0,"te')

    with caplog.at_level(logging.ERROR, logger="gateway.ledger.spool"):
        assert ids_in(path) == ["a", "b", "c"]
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}:4: unreadable spend record skipped"
    ]


def test_a_line_that_is_json_but_no_record_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "00000000000000000001-1-000000.jsonl"
    spool = Spool(tmp_path / "writer")
    spool.append(spend("a"))
    spool.append(spend("b"))
    seal(spool)
    (written,) = spool.sealed()
    spool.close()
    first, second = written.read_bytes().splitlines(keepends=True)
    path.write_bytes(first + b'{"id":"x","unknown_field":1}\n' + b"[1, 2]\n" + second)

    with caplog.at_level(logging.ERROR, logger="gateway.ledger.spool"):
        assert ids_in(path) == ["a", "b"]
    assert len(caplog.records) == 2


def test_a_segment_a_live_process_is_writing_is_not_claimed(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        python(LIVE_WRITER, str(tmp_path)),
        cwd=PROJECT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdin is not None and writer.stdout is not None
    try:
        assert writer.stdout.readline() == "appended\n"
        drainer = Spool(tmp_path)
        try:
            assert drainer.sealed() == []  # a live writer (its lease held) drains its own segments
            (theirs,) = (path for path in tmp_path.glob("*.jsonl") if not drainer.is_own(path))
            assert ids_in(theirs) is None  # and it is locked while written
        finally:
            drainer.close()
    finally:
        writer.stdin.close()
        assert writer.wait(30) == 0
        writer.stdout.close()
    # The writer has gone (without sealing): its segment is free to drain now, record intact.
    drainer = Spool(tmp_path)
    try:
        assert drainer.sealed() == [theirs]
        assert ids_in(theirs) == ["live-0"]
    finally:
        drainer.close()


def test_another_spool_in_this_process_cannot_claim_the_current_segment(tmp_path: Path) -> None:
    writer = Spool(tmp_path)
    writer.append(spend("a"))
    drainer = Spool(tmp_path / "other")
    try:
        current = next(tmp_path.glob("*.jsonl"))
        assert ids_in(current) is None  # flock is per open file: it guards within a process too
        seal(writer)
        assert ids_in(current) == ["a"]
    finally:
        writer.close()
        drainer.close()


def test_a_segment_already_gone_claims_as_none(tmp_path: Path) -> None:
    gone = tmp_path / f"{os.getpid()}-gone.jsonl"
    assert ids_in(gone) is None
