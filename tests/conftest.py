"""Real servers on loopback for the tests: fake upstreams and the gateway itself, on a background loop,
and a real Redis."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis
import redis.asyncio
import uvicorn
import yaml

from gateway.app import GatewayApp, create_app
from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.settings import Settings


@pytest.fixture(scope="session")
def bg() -> Iterator[BackgroundLoop]:
    with BackgroundLoop() as loop:
        yield loop


@pytest.fixture
def upstreams(bg: BackgroundLoop) -> Iterator[Callable[..., FakeOpenAIUpstream]]:
    """Start fake OpenAI-compatible upstreams; all are stopped after the test."""
    started: list[FakeOpenAIUpstream] = []

    def start(default: Behaviour | None = None) -> FakeOpenAIUpstream:
        upstream = FakeOpenAIUpstream(default=default or Behaviour())
        bg.run(upstream.start())
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        bg.run(upstream.stop())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RunningGateway:
    url: str
    app: GatewayApp
    server: uvicorn.Server
    task: concurrent.futures.Future[Any] | None = None
    clients: list[openai.OpenAI] = field(default_factory=list)
    anthropic_clients: list[anthropic.Anthropic] = field(default_factory=list)
    browsers: list[httpx.Client] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, **options: Any) -> openai.OpenAI:
        """The official client pointed at the gateway; closed when the test ends."""
        options.setdefault("api_key", "none")
        options.setdefault("max_retries", 0)
        created = openai.OpenAI(base_url=self.base_url, **options)
        self.clients.append(created)
        return created

    def anthropic(self, **options: Any) -> anthropic.Anthropic:
        """Anthropic's official client pointed at the gateway; closed when the test ends."""
        options.setdefault("api_key", "none")
        options.setdefault("max_retries", 0)
        created = anthropic.Anthropic(base_url=self.url, **options)
        self.anthropic_clients.append(created)
        return created

    def browser(self) -> httpx.Client:
        """An HTTP client that keeps cookies (a dashboard session); closed when the test ends."""
        created = httpx.Client(base_url=self.url, timeout=30)
        self.browsers.append(created)
        return created


def ledger_rows(gateway: RunningGateway, bg: BackgroundLoop) -> list[dict[str, Any]]:
    """The spend records of a gateway on the embedded SQLite ledger, once its spool is drained."""
    services = gateway.app.services
    bg.run(services.ledger.drain())
    db = sqlite3.connect(services.settings.state_dir / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute("SELECT * FROM ledger ORDER BY at")]
    finally:
        db.close()


def openai_deployment(upstream: FakeOpenAIUpstream, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": "fake-model", "api_base": upstream.base_url, **extra}


POLICY_KEYS = (
    "routes", "signals", "rules", "default_route", "fallback_route", "reference_route", "budgets",
    "rate_limits", "log_bodies", "tests", "embeddings_route", "embeddings_cache", "model_aliases",
    "priorities",
)  # fmt: skip


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A test's one dict as the gateway's two files: deployments, and the routing policy (where a
    route may be written as a plain list of deployments)."""
    deployments = {k: v for k, v in config.items() if k not in POLICY_KEYS}
    policy = {k: v for k, v in config.items() if k in POLICY_KEYS}
    policy["routes"] = {
        name: {"deployments": route} if isinstance(route, list) else route
        for name, route in config.get("routes", {}).items()
    }
    return deployments, policy


@pytest.fixture
def gateway(bg: BackgroundLoop, tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    """Start the gateway in-process on a free port with the given configuration (a dict)."""
    running: list[RunningGateway] = []

    def start(
        spec: dict[str, Any] | None = None, environ: dict[str, str] | None = None, **settings: Any
    ) -> RunningGateway:
        """`spec` is one dict for both files; without it, `config=` and `policy=` name the files."""
        if spec is not None:
            deployments, policy = split_config(spec)
            settings["config"] = tmp_path / f"deployments-{len(running)}.yaml"
            settings["config"].write_text(yaml.safe_dump(deployments))
            settings["policy"] = tmp_path / f"policy-{len(running)}.yaml"
            settings["policy"].write_text(yaml.safe_dump(policy))
        port = free_port()
        settings.setdefault("policy_reload_interval", 0)
        settings.setdefault("state_dir", tmp_path / f"state-{len(running)}")
        app = create_app(Settings(port=port, **settings), environ=environ or {})
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, lifespan="on", access_log=False, log_level="warning"
            )
        )
        gateway = RunningGateway(f"http://127.0.0.1:{port}", app, server)

        async def serve() -> None:
            try:
                await server.serve()
            except SystemExit as exc:  # uvicorn's way to say start-up failed: not the loop's end
                raise RuntimeError("the gateway failed to start (see its log above)") from exc

        gateway.task = asyncio.run_coroutine_threadsafe(serve(), bg.loop)

        async def wait_started() -> None:
            while not server.started:
                if gateway.task is not None and gateway.task.done():
                    raise RuntimeError("the gateway did not start")
                await asyncio.sleep(0.01)

        bg.run(wait_started(), timeout=30)
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        for opened in gateway.clients:
            opened.close()
        for client in gateway.anthropic_clients:
            client.close()
        for browser in gateway.browsers:
            browser.close()
        gateway.server.should_exit = True
        if gateway.task is not None:
            gateway.task.result(timeout=30)


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def answers_ping(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1) as client:
            return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if answers_ping(DEFAULT_REDIS_URL):
        yield DEFAULT_REDIS_URL
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("no Redis on 127.0.0.1:6379 and no redis-server to start one")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    process = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not answers_ping(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def redis_prefix(redis_url: str, bg: BackgroundLoop) -> Iterator[str]:
    """A key prefix no other test uses; whatever the test left under it is deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix

    async def delete_keys() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            keys = [key async for key in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    bg.run(delete_keys())
