"""Two gateways on one Redis share each deployment's capacity: one limit across both, not one each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import RunningGateway, openai_deployment


def test_two_replicas_keep_one_limit_between_them(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    redis_url: str,
    redis_prefix: str,
) -> None:
    upstream = upstreams(Behaviour(latency=0.3))
    spec = {
        "deployments": {"big": openai_deployment(upstream, capacity={"max_concurrency": 1, "queue": 8})},
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
    }
    replicas = [gateway(spec, redis_url=redis_url, redis_prefix=redis_prefix) for _ in range(2)]

    async def main() -> tuple[list[httpx.Response], float]:
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post(f"{gw.base_url}/chat/completions", json=body) for gw in replicas * 2)
            )
        return list(answers), time.perf_counter() - started

    answers, took = asyncio.run(main())
    assert [answer.status_code for answer in answers] == [200] * 4
    # One at a time across both: four 0.3 s answers in turn (a limit per replica would take 0.6 s).
    assert took >= 1.15
    assert sum("x-gateway-queue-ms" in answer.headers for answer in answers) == 3
