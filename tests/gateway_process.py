"""The gateway as a separate process: `python -m gateway serve`, for tests that need two replicas or
a `kill -9`: started with GATEWAY_* settings, ready once /healthz answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import free_port, split_config


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def write_spec(spec: dict[str, Any], directory: Path) -> dict[str, str]:
    """The spec's two files, as GATEWAY_CONFIG and GATEWAY_POLICY."""
    deployments, policy = split_config(spec)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "deployments.yaml").write_text(yaml.safe_dump(deployments))
    (directory / "policy.yaml").write_text(yaml.safe_dump(policy))
    return {
        "GATEWAY_CONFIG": str(directory / "deployments.yaml"),
        "GATEWAY_POLICY": str(directory / "policy.yaml"),
    }


def start_gateway(settings: dict[str, str], log: Path, timeout: float = 60.0) -> GatewayProcess:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_PORT": str(port),
        "GATEWAY_POLICY_RELOAD_INTERVAL": "0",
        "GATEWAY_MANAGE_LOCAL_MODEL": "false",
        "GATEWAY_LOG_LEVEL": "warning",
        **settings,
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    running = GatewayProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{running.url}/healthz", timeout=1).status_code == 200:
                return running
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    running.kill()
    raise RuntimeError(f"the gateway did not start within {timeout} s:\n{log.read_text()[-3000:]}")


def run_command(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS...` run to its end (a CLI command, not the server), its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
