"""The embedded default end to end: the gateway starts the real local model and answers through it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import RunningGateway

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.local_model
def test_the_shipped_configuration_answers_from_the_real_local_model(
    gateway: Callable[..., RunningGateway],
) -> None:
    config = yaml.safe_load((REPO / "policies" / "gateway.yaml").read_text())
    gw = gateway(config, environ={})  # no provider keys: frontier is unavailable
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
    assert raw.headers["x-gateway-route"] == "local"
    assert raw.headers["x-gateway-deployment"] == "smollm2"
    assert "OPENAI_API_KEY is not set" in raw.headers["x-gateway-fallback"]
    assert "4" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.completion_tokens > 0

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

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="frontier", messages=question)
    assert caught.value.status_code == 503

    local_model = gw.app.runtime.local_model
    assert local_model is not None and local_model.pid is not None
