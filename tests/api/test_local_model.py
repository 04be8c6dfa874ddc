"""The embedded default end to end: the gateway starts the real local model and answers through it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import RunningGateway

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.local_model
def test_the_shipped_configuration_answers_from_the_real_local_model(
    gateway: Callable[..., RunningGateway],
) -> None:
    policies = REPO / "policies"
    # No provider keys: the frontier route is unavailable.
    gw = gateway(config=policies / "deployments.yaml", policy=policies / "default.yaml", environ={})
    deadline = time.monotonic() + 90
    while httpx.get(f"{gw.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the local model did not become ready"
        time.sleep(0.2)
    client = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0, timeout=60)
    question = [{"role": "user", "content": "What is 2+2? Answer with a number."}]

    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=question, max_tokens=24, temperature=0
    )
    answer = raw.parse()
    assert raw.headers["x-gateway-rule"] == "short-questions-local"
    assert raw.headers["x-gateway-route"] == "local"
    assert raw.headers["x-gateway-deployment"] == "smollm2"
    assert "x-gateway-fallback" not in raw.headers
    assert "4" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    # Its energy, from the CPU time the server used for it (at 7 W a busy core): some, and far less
    # than the frontier would have used for the same tokens (the reference route, by the defaults).
    energy = float(raw.headers["x-gateway-energy-wh"])
    assert 0 < energy < 0.05
    # One request at a time: the managed model's capacity.
    gate = gw.app.services.capacity.gate("smollm2")
    assert gate is not None and gate.limit == 1

    chunks = list(
        client.chat.completions.create(
            model="local",
            messages=question,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "4" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    code = [{"role": "user", "content": "Fix this: def f(x) return x"}]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=code, max_tokens=8)
    assert raw.headers["x-gateway-rule"] == "code-and-tools-to-frontier"
    assert raw.headers["x-gateway-route"] == "local"  # the policy's fallback route
    assert "OPENAI_API_KEY is not set" in raw.headers["x-gateway-fallback"]

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="frontier", messages=question)
    assert caught.value.status_code == 503

    local_model = gw.app.services.local_model
    assert local_model is not None and local_model.pid is not None
