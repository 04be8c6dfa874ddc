"""A gateway killed (SIGKILL) while its batch lines wait for an upstream's Batch API: after a restart on
the same state the lines find their submission again, nothing is sent upstream twice, and the ledger
holds one answered record per line at the batch price (no interrupted record: nothing was called)."""

from __future__ import annotations

import io
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.batch_upstream import FakeBatchUpstream
from tests.gateway_process import start_gateway, write_spec

LINES = 8
PRICE = {"input_per_mtok": 10, "output_per_mtok": 30, "batch_input_per_mtok": 5, "batch_output_per_mtok": 15}


@pytest.fixture
def held_upstream(bg: BackgroundLoop) -> Iterator[FakeBatchUpstream]:
    upstream = FakeBatchUpstream(held=True)
    bg.run(upstream.start())
    yield upstream
    bg.run(upstream.stop())


def test_lines_waiting_upstream_survive_a_kill_and_are_sent_once(
    held_upstream: FakeBatchUpstream, tmp_path: Path
) -> None:
    spec: dict[str, Any] = {
        "deployments": {
            "big": {
                "provider": "openai", "model": "upstream-model", "api_base": held_upstream.base_url,
                "price": PRICE, "batch_api": True,
            }
        },
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
    }  # fmt: skip
    settings = {
        **write_spec(spec, tmp_path / "policy"),
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "GATEWAY_BATCH_LEASE_SECONDS": "2",
        "GATEWAY_UPSTREAM_BATCH_FLUSH_SECONDS": "0.5",
        "GATEWAY_UPSTREAM_BATCH_POLL_SECONDS": "0.2",
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
        while not held_upstream.batches:
            assert time.monotonic() < deadline, "no upstream batch was created"
            time.sleep(0.05)
    finally:
        first.kill()  # every line is waiting for the upstream batch
    (submitted,) = held_upstream.created()
    assert len(submitted.lines) == LINES
    second = start_gateway(settings, tmp_path / "second.log")
    try:
        client = openai.OpenAI(base_url=second.base_url, api_key="none", max_retries=0)
        time.sleep(2.5)  # the killed replica's leases run out; its lines are claimed again and wait
        held_upstream.held = False
        deadline = time.monotonic() + 60
        while (done := client.batches.retrieve(batch.id)).status != "completed":
            assert time.monotonic() < deadline, f"batch still {done.status}"
            time.sleep(0.2)
        assert done.request_counts.completed == LINES  # type: ignore[union-attr]
    finally:
        second.stop()
    assert len(held_upstream.batches) == 1 and held_upstream.chat_calls == 0
    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    rows = db.execute(
        "SELECT request_id, status, cost_usd, prompt_tokens, completion_tokens FROM ledger"
        " WHERE request_id LIKE ?",
        (f"{batch.id}-%",),
    ).fetchall()
    assert sorted(row[0] for row in rows) == sorted(f"{batch.id}-{n}" for n in range(1, LINES + 1))
    for _, status, cost, prompt, completion in rows:
        assert status == 200
        assert cost == pytest.approx((prompt * 5 + completion * 15) / 1e6)
