"""`gateway spend` as finance runs it: a real process reading the state directory a gateway left, as a
table, JSON or CSV, with what the spool still holds counted too."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.ledger.ledger import Ledger
from gateway.ledger.record import SpendRecord
from gateway.ledger.spool import Spool
from gateway.ledger.sqlite import SqliteLedgerStore
from tests.conftest import RunningGateway, openai_deployment

PROJECT = Path(__file__).resolve().parents[2]
DAY_ONE = datetime(2026, 3, 1, 10, 0, tzinfo=UTC).timestamp()
DAY_TWO = datetime(2026, 3, 2, 9, 30, tzinfo=UTC).timestamp()
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 10000}


def record(record_id: str, at: float, team: str, route: str, **fields: Any) -> SpendRecord:
    """An answered request; money in binary fractions so that sums are exact."""
    deployment = {"frontier": "big", "local": "small"}[route]
    values: dict[str, Any] = {
        "request_id": f"req-{record_id}", "at": at, "team": team, "key_id": f"key-{team}",
        "policy": "default", "route": route, "rule": "default", "deployment": deployment,
        "model": f"{deployment}-model", "stream": False, "status": 200, "latency_ms": 12.0, **fields,
    }  # fmt: skip
    return SpendRecord(id=record_id, **values)


# Drained into the ledger before the command runs.
IN_LEDGER = (
    record("a", DAY_ONE, "search", "frontier", prompt_tokens=100, completion_tokens=10, cost_usd=0.5,
           reference_usd=0.5),
    record("b", DAY_ONE + 60, "support", "local", prompt_tokens=40, completion_tokens=8, cost_usd=0.125,
           reference_usd=0.5),
    record("c", DAY_TWO, "support", "local", status=502, error="bad_gateway", cost_usd=0.0),
)  # fmt: skip
# Still in the spool, as a gateway that crashed (or still runs) leaves them.
IN_SPOOL = (
    record("d", DAY_TWO + 60, "search", "frontier", prompt_tokens=20, completion_tokens=4, cost_usd=0.25,
           reference_usd=0.25),
    record("e", DAY_TWO + 120, "support", "local", prompt_tokens=30, completion_tokens=6, cost_usd=0.0625,
           reference_usd=0.25, estimated=True),
)  # fmt: skip

ZERO = {"unpriced_requests": 0, "estimated_requests": 0, "cached_answers": 0, "errors": 0}
BY_TEAM = [
    {
        "team": "search", "requests": 2, "prompt_tokens": 120, "completion_tokens": 14, "cost_usd": 0.75,
        "reference_usd": 0.75, "saved_usd": 0.0, **ZERO,
    },
    {
        "team": "support", "requests": 3, "prompt_tokens": 70, "completion_tokens": 14, "cost_usd": 0.1875,
        "reference_usd": 0.75, "saved_usd": 0.5625, **ZERO, "estimated_requests": 1, "errors": 1,
    },
]  # fmt: skip


def fill(state_dir: Path, *, in_ledger: tuple[SpendRecord, ...], in_spool: tuple[SpendRecord, ...]) -> None:
    ledger = Ledger(Spool(state_dir / "spool"), SqliteLedgerStore(state_dir / "ledger.sqlite"))
    for each in in_ledger:
        ledger.record(each)
    assert asyncio.run(ledger.drain()) == len(in_ledger)
    asyncio.run(ledger.close())
    left = Spool(state_dir / "spool")  # closed without a drain: the segment stays for the next drainer
    for each in in_spool:
        left.append(each)
    left.close()
    assert len(segments(state_dir)) == (1 if in_spool else 0)


def segments(state_dir: Path) -> list[Path]:
    return sorted((state_dir / "spool").glob("*.jsonl"))


def run_spend(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    environ |= {"GATEWAY_STATE_DIR": str(state_dir), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "spend", *args],
        env=environ,
        cwd=state_dir.parent,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    fill(state, in_ledger=IN_LEDGER, in_spool=IN_SPOOL)
    return state


def test_json_counts_the_ledger_and_what_the_spool_still_holds(state_dir: Path) -> None:
    assert json.loads(succeeded(run_spend(state_dir, "--format", "json"))) == BY_TEAM
    assert segments(state_dir) == []  # drained into the ledger by the command
    # Run again: the same answer, nothing counted twice.
    assert json.loads(succeeded(run_spend(state_dir, "--format", "json", "--by", "team"))) == BY_TEAM


def test_table_lines_up_every_number(state_dir: Path) -> None:
    out = succeeded(run_spend(state_dir, "--by", "team,route"))
    assert out == (
        "team     route     requests  prompt_tokens  completion_tokens  cost_usd  reference_usd  saved_usd"
        "  unpriced_requests  estimated_requests  cached_answers  errors\n"
        "search   frontier  2         120            14                 0.750000  0.750000       0.000000 "
        "  0                  0                   0               0     \n"
        "support  local     3         70             14                 0.187500  0.750000       0.562500 "
        "  0                  1                   0               1     \n"
    )


def test_csv_has_the_same_numbers(state_dir: Path) -> None:
    out = succeeded(run_spend(state_dir, "--format", "csv", "--by", "day,team"))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows == [
        {
            "day": "2026-03-01", "team": "search", "requests": "1", "prompt_tokens": "100",
            "completion_tokens": "10", "cost_usd": "0.500000", "reference_usd": "0.500000",
            "saved_usd": "0.000000", "unpriced_requests": "0", "estimated_requests": "0",
            "cached_answers": "0", "errors": "0",
        },
        {
            "day": "2026-03-01", "team": "support", "requests": "1", "prompt_tokens": "40",
            "completion_tokens": "8", "cost_usd": "0.125000", "reference_usd": "0.500000",
            "saved_usd": "0.375000", "unpriced_requests": "0", "estimated_requests": "0",
            "cached_answers": "0", "errors": "0",
        },
        {
            "day": "2026-03-02", "team": "search", "requests": "1", "prompt_tokens": "20",
            "completion_tokens": "4", "cost_usd": "0.250000", "reference_usd": "0.250000",
            "saved_usd": "0.000000", "unpriced_requests": "0", "estimated_requests": "0",
            "cached_answers": "0", "errors": "0",
        },
        {
            "day": "2026-03-02", "team": "support", "requests": "2", "prompt_tokens": "30",
            "completion_tokens": "6", "cost_usd": "0.062500", "reference_usd": "0.250000",
            "saved_usd": "0.187500", "unpriced_requests": "0", "estimated_requests": "1",
            "cached_answers": "0", "errors": "1",
        },
    ]  # fmt: skip


def test_since_until_and_team_filter_the_rows(state_dir: Path) -> None:
    def report(*args: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(succeeded(run_spend(state_dir, "--format", "json", *args)))
        return rows

    second_day = report("--since", "2026-03-02", "--by", "team")
    assert [(r["team"], r["requests"], r["cost_usd"]) for r in second_day] == [
        ("search", 1, 0.25),
        ("support", 2, 0.0625),
    ]
    # `until` is exclusive, and takes unix seconds as well as days and ISO times.
    first_day = report("--until", str(DAY_TWO), "--by", "day")
    assert [(r["day"], r["requests"], r["cost_usd"]) for r in first_day] == [("2026-03-01", 2, 0.625)]
    iso = report("--since", "2026-03-01T10:00:30+00:00", "--until", "2026-03-02T09:30:00Z")
    assert [(r["team"], r["requests"]) for r in iso] == [("support", 1)]
    assert report("--until", "2026-03-01") == []
    support = report("--team", "support", "--by", "route")
    assert support == [{"route": "local", **{k: v for k, v in BY_TEAM[1].items() if k != "team"}}]
    assert report("--team", "nobody") == []


def test_a_segment_a_live_gateway_still_writes_is_left_to_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    fill(state, in_ledger=IN_LEDGER, in_spool=())
    live = Spool(state / "spool")  # this process writes it, and holds its lock, like a running gateway
    try:
        for each in IN_SPOOL:
            live.append(each)
        rows = json.loads(succeeded(run_spend(state, "--format", "json")))
        assert [(r["team"], r["requests"]) for r in rows] == [("search", 1), ("support", 2)]
        assert len(segments(state)) == 1  # untouched
    finally:
        live.close()
    assert json.loads(succeeded(run_spend(state, "--format", "json"))) == BY_TEAM


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--by", "team,prompt"), "cannot group spend by prompt; choose from team, route, model"),
        (("--by", "team,team"), "each group may be named once"),
        (("--since", "yesterday"), "since: expected a day (2026-11-01), an ISO time or unix seconds"),
        (("--database-url", "mysql://db/ledger"), "GATEWAY_DATABASE_URL must be postgresql://"),
    ],
)
def test_a_bad_argument_exits_1_saying_why(state_dir: Path, args: tuple[str, ...], message: str) -> None:
    spooled = segments(state_dir)
    result = run_spend(state_dir, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(spooled) == 1 and spooled[0].exists()  # nothing was drained


def test_a_command_that_fails_leaves_the_spool_as_it_was(state_dir: Path) -> None:
    before = segments(state_dir)
    assert run_spend(state_dir, "--database-url", "mysql://db/ledger").returncode == 1
    assert segments(state_dir) == before


def test_what_a_stopped_gateway_recorded(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    upstream = upstreams(Behaviour(content="one two three four five six", chunks=3))
    spec = {
        "deployments": {"big": openai_deployment(upstream, price=PRICE)},
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
        "reference_route": "frontier",
    }
    gw = gateway(spec, state_dir=tmp_path / "state", api_keys=["sk-team-default"])
    client = gw.client(api_key="sk-team-default")
    usages = [
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": text}]).usage
        for text in ("Hello there", "What is the weather like on the moon today")
    ]
    streamed = list(
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Tell me more"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usages.append(streamed[-1].usage)
    gw.server.should_exit = True  # a clean stop, as `gateway serve` does on SIGTERM
    assert gw.task is not None
    gw.task.result(timeout=30)

    prompt = sum(usage.prompt_tokens for usage in usages if usage is not None)
    completion = sum(usage.completion_tokens for usage in usages if usage is not None)
    assert len(usages) == 3 and prompt > 0 and completion > 0
    expected_cost = (prompt * PRICE["input_per_mtok"] + completion * PRICE["output_per_mtok"]) / 1e6
    (row,) = json.loads(succeeded(run_spend(tmp_path / "state", "--format", "json", "--by", "team,route")))
    assert row == {
        "team": "default", "route": "frontier", "requests": 3, "prompt_tokens": prompt,
        "completion_tokens": completion, "cost_usd": pytest.approx(expected_cost, rel=1e-9),
        "reference_usd": pytest.approx(expected_cost, rel=1e-9), "saved_usd": 0.0, **ZERO,
    }  # fmt: skip
