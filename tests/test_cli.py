"""`gateway serve` as a user runs it: a real process, a real port, a clean exit on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from tests.conftest import free_port, openai_deployment, split_config


def test_serve_answers_and_exits_cleanly_on_sigterm(
    upstreams: Callable[..., FakeOpenAIUpstream], tmp_path: Path
) -> None:
    upstream = upstreams()
    deployments, policy = split_config(
        {"deployments": {"d": openai_deployment(upstream)}, "routes": {"r": ["d"]}, "default_route": "r"}
    )
    config, policy_file = tmp_path / "deployments.yaml", tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump(deployments))
    policy_file.write_text(yaml.safe_dump(policy))
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_MANAGE_LOCAL_MODEL": "false",
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            *("--config", str(config), "--policy", str(policy_file)),
            "--port",
            str(port),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.05)
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr = process.stderr.read() if process.stderr else ""
        if process.stderr:
            process.stderr.close()
    assert "Traceback" not in stderr


def test_serve_refuses_a_database_url_it_cannot_use(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GATEWAY_MANAGE_LOCAL_MODEL": "false",
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "GATEWAY_DATABASE_URL": "mysql://db/ledger",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        "GATEWAY_DATABASE_URL must be postgresql://… or sqlite:///path, not 'mysql://db/ledger'"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
