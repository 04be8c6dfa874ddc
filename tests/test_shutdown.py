"""SIGTERM as Kubernetes sends it before a pod goes: the gateway stops taking new connections, lets the
stream in flight finish, writes its spend record, and exits 0."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import openai_deployment
from tests.gateway_process import start_gateway, write_spec

KEY = "sk-shutdown-client"


def test_sigterm_finishes_the_stream_in_flight_flushes_the_ledger_and_exits_0(
    upstreams: Callable[..., FakeOpenAIUpstream], tmp_path: Path
) -> None:
    # 20 chunks, 0.1 s apart: a 2 s stream, SIGTERM arriving about half way.
    upstream = upstreams(Behaviour(content=" ".join(f"w{n}" for n in range(20)), chunks=20, chunk_delay=0.1))
    spec = {
        "deployments": {"big": openai_deployment(upstream)},
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
    }
    state = tmp_path / "state"
    gw = start_gateway(
        {**write_spec(spec, tmp_path / "config"), "GATEWAY_API_KEYS": KEY, "GATEWAY_STATE_DIR": str(state)},
        tmp_path / "gw.log",
    )
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    received: list[str] = []
    try:
        stream = client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "go"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        first = next(iter(stream))
        received.append(first.choices[0].delta.content or "" if first.choices else "")
        timer = threading.Timer(0.5, lambda: gw.process.send_signal(signal.SIGTERM))
        timer.start()
        usage = None
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
        timer.join()
        # New connections are refused once shutdown began.
        time.sleep(0.2)
        try:
            refused = httpx.get(f"{gw.url}/healthz", timeout=2).status_code != 200
        except httpx.TransportError:
            refused = True
        assert refused
        assert gw.process.wait(timeout=30) == 0
    finally:
        client.close()
        gw.stop()
    assert "".join(received).split() == [f"w{n}" for n in range(20)]
    assert usage is not None and usage.completion_tokens > 0
    with sqlite3.connect(state / "ledger.sqlite") as db:
        rows = db.execute("SELECT status, completion_tokens, stream FROM ledger").fetchall()
    db.close()
    assert rows == [(200, usage.completion_tokens, 1)]
