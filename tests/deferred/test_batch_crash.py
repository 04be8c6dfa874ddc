"""A gateway killed (SIGKILL) in the middle of a batch loses no line and charges none twice: after a
restart on the same state, the batch completes, its output holds each line once, and the ledger holds
exactly one answered record per line (a line cut by the crash also leaves its interrupted record, at its
prompt's price: the upstream did receive it)."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson

from gateway.batches.lines import parse_batch_input
from gateway.batches.sqlite import SqliteBatchStore
from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.ledger.record import SpendRecord
from gateway.ledger.sqlite import SqliteLedgerStore
from tests.conftest import RunningGateway, ledger_rows, openai_deployment
from tests.gateway_process import start_gateway, write_spec

LINES = 40


def test_a_batch_survives_a_kill_mid_run_with_nothing_lost_or_charged_twice(
    upstreams: Callable[..., FakeOpenAIUpstream], tmp_path: Path
) -> None:
    upstream = upstreams(Behaviour(latency=0.1))
    spec: dict[str, Any] = {
        "deployments": {
            "big": openai_deployment(upstream, price={"input_per_mtok": 1, "output_per_mtok": 2})
        },
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
    }
    settings = {
        **write_spec(spec, tmp_path / "policy"),
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "GATEWAY_BATCH_CONCURRENCY": "4",
        # A killed runner's lines are claimed again once their leases run out.
        "GATEWAY_BATCH_LEASE_SECONDS": "2",
    }
    first = start_gateway(settings, tmp_path / "first.log")
    try:
        client = openai.OpenAI(base_url=first.base_url, api_key="none", max_retries=0)
        content = b"".join(
            orjson.dumps({
                "custom_id": f"line-{n}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "auto", "messages": [{"role": "user", "content": f"Question {n}?"}]},
            }) + b"\n"
            for n in range(LINES)
        )  # fmt: skip
        uploaded = client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 30
        while client.batches.retrieve(batch.id).request_counts.completed < LINES // 3:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.kill()  # lines are in flight: four at a time, 0.1 s each
    second = start_gateway(settings, tmp_path / "second.log")
    try:
        client = openai.OpenAI(base_url=second.base_url, api_key="none", max_retries=0)
        deadline = time.monotonic() + 60
        while (done := client.batches.retrieve(batch.id)).status != "completed":
            assert time.monotonic() < deadline, f"batch still {done.status}"
            time.sleep(0.2)
        assert done.request_counts.completed == LINES and done.request_counts.failed == 0  # type: ignore[union-attr]
        assert done.output_file_id is not None
        output = client.files.content(done.output_file_id).content.splitlines()
        ids = [orjson.loads(line)["custom_id"] for line in output]
        assert sorted(ids) == sorted(f"line-{n}" for n in range(LINES))
    finally:
        second.stop()
    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    rows = db.execute(
        "SELECT request_id, status FROM ledger WHERE request_id LIKE ?", (f"{batch.id}-%",)
    ).fetchall()
    answered = Counter(request_id for request_id, status in rows if status == 200)
    assert len(answered) == LINES and set(answered.values()) == {1}


def test_a_line_answered_and_recorded_just_before_a_kill_is_recorded_once(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    tmp_path: Path,
    bg: BackgroundLoop,
) -> None:
    """The narrow window the test above reaches only sometimes, set up exactly: a dead run left its
    line claimed (lease run out) but had already recorded the line's answer in the ledger."""
    state = tmp_path / "state"

    async def dead_run() -> str:
        store = SqliteBatchStore(state / "batches.sqlite")
        content = orjson.dumps({
            "custom_id": "only", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "auto", "messages": [{"role": "user", "content": "Question?"}]},
        })  # fmt: skip
        source = await store.create_file("", "batch", "in.jsonl", content)
        lines = parse_batch_input(content, "/v1/chat/completions")
        batch = await store.create_batch("", source.id, "/v1/chat/completions", "24h", None, lines)
        await store.claim("the-dead-replica", 1, 0.5)  # its lease runs out half a second later
        await store.aclose()
        return batch.id

    batch_id = asyncio.run(dead_run())
    ledger = SqliteLedgerStore(state / "ledger.sqlite")
    answered = SpendRecord(
        id="rec-from-the-dead-run", request_id=f"{batch_id}-1", at=time.time(), team=None, key_id=None,
        policy="default", route="frontier", rule="default", deployment="big", model="fake-model",
        stream=False, status=200, prompt_tokens=5, completion_tokens=5, cost_usd=0.00002,
    )  # fmt: skip
    ledger.insert([answered])
    ledger.close()
    spec = {
        "deployments": {
            "big": openai_deployment(upstreams(), price={"input_per_mtok": 1, "output_per_mtok": 2})
        },
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
    }
    gw = gateway(spec, state_dir=state)
    client = gw.client()
    deadline = time.monotonic() + 30
    while (done := client.batches.retrieve(batch_id)).status != "completed":
        assert time.monotonic() < deadline, f"batch still {done.status}"
        time.sleep(0.1)
    rows = [row for row in ledger_rows(gw, bg) if row["request_id"] == f"{batch_id}-1"]
    assert [(row["id"], row["status"]) for row in rows] == [("rec-from-the-dead-run", 200)]
