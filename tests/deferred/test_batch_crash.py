"""A gateway killed (SIGKILL) in the middle of a batch loses no line and charges none twice: after a
restart on the same state, the batch completes, its output holds each line once, and the ledger holds
exactly one answered record per line (a line cut by the crash also leaves its interrupted record, at its
prompt's price: the upstream did receive it)."""

from __future__ import annotations

import io
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import openai_deployment
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
