"""A real Redis for the counters' tests: the one on 127.0.0.1:6379 if it answers, else a throwaway
server on a free port for the session. Each test gets its own key prefix and its keys are deleted after."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio

from gateway.fakes.background import BackgroundLoop
from tests.conftest import free_port

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
