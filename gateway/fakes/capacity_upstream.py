"""A fake OpenAI chat-completions upstream with a provider's capacity and a model's pace.

At most `concurrency` requests run at once. A request beyond that is either rejected
(`over_limit="reject"`: 429 with Retry-After, the whole seconds until the soonest running request is
due to end, at least 1, as a provider's rate limit answers) or waits its turn, first come first served
(`"queue"`: as llama.cpp's server waits for a free slot). A running request answers
min(max_tokens, `max_tokens`) filler words, one word a token, so usage counts them exactly: the first
`first_byte_s` after it got its slot, then one more every 1 / `tokens_per_s` seconds; streamed, each
word is its own content event. It holds its slot from then until its last byte is written.

The wire format, usage and errors are gateway.fakes.openai_upstream's (the same bodies and chunks).
`GET /stats` answers what it saw (`Stats`) since it started or since the last `DELETE /stats`, which
answers the same and starts the counters again. `python -m gateway.fakes.capacity_upstream`
serves one until SIGTERM and prints `READY <base_url>` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson
from aiohttp import web

from gateway.fakes.openai_upstream import (
    JSON_HEADERS,
    SHUTDOWN_TIMEOUT,
    SSE_HEADERS,
    BadRequest,
    Call,
    completion_body,
    error_response,
    loop_factory,
    parse_call,
    serve_until_stopped,
    sized_answer,
    stream_parts,
)
from gateway.fakes.script import Behaviour

OverLimit = Literal["reject", "queue"]


@dataclass(frozen=True, slots=True)
class Capacity:
    """How many requests the upstream runs at once, what it does with more, and how fast it answers."""

    concurrency: int
    first_byte_s: float
    tokens_per_s: float
    max_tokens: int
    over_limit: OverLimit = "reject"

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_tokens < 1:
            raise ValueError("concurrency and max_tokens must be >= 1")
        if self.first_byte_s < 0 or self.tokens_per_s <= 0:
            raise ValueError("first_byte_s must be >= 0 and tokens_per_s > 0")

    def tokens(self, requested: int | None) -> int:
        """Words (tokens) answered to a request asking for at most `requested` (None: no limit)."""
        return self.max_tokens if requested is None else max(1, min(requested, self.max_tokens))

    def service_seconds(self, tokens: int) -> float:
        """How long an answer of `tokens` holds its slot: the first token, then the rest at the pace."""
        return self.first_byte_s + (max(1, tokens) - 1) / self.tokens_per_s


@dataclass(slots=True)
class Stats:
    """What the upstream saw: requests received, answered, rejected (429) and cut short by the client,
    the most running at once, and seconds spent holding slots and waiting for one (queue mode)."""

    requests: int = 0
    answered: int = 0
    rejected: int = 0
    cancelled: int = 0
    most_running: int = 0
    service_seconds: float = 0.0
    queued_seconds: float = 0.0
    completion_tokens: int = 0

    def json(self) -> dict[str, Any]:
        return asdict(self)


class CapacityUpstream:
    """The server: `start` listens on loopback, `stop` closes it; `stats` and `running` read live."""

    def __init__(self, capacity: Capacity, *, model_name: str | None = None) -> None:
        self.capacity = capacity
        self.model_name = model_name
        self.stats = Stats()
        self.base_url = ""
        self._running = 0
        # When each running request is due to end (loop time), for Retry-After.
        self._ends: dict[int, float] = {}
        self._ids = itertools.count(1)
        self._slots = asyncio.Semaphore(capacity.concurrency)
        self._runner: web.ServerRunner | None = None

    @property
    def running(self) -> int:
        return self._running

    def reset(self) -> None:
        """Start the counters again; the most running at once from those running now."""
        self.stats = Stats(most_running=self._running)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0: a free port); the OpenAI base URL, ending in /v1."""
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, backlog=4096).start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/v1/chat/completions" and request.method == "POST":
            return await self._chat(request)
        if request.path == "/stats" and request.method in ("GET", "DELETE"):
            body = {**self.stats.json(), "running": self._running, "capacity": asdict(self.capacity)}
            if request.method == "DELETE":
                self.reset()
            return web.Response(body=orjson.dumps(body), headers=JSON_HEADERS)
        if request.path == "/v1/models" and request.method == "GET":
            listed = {
                "id": self.model_name or "fake-model",
                "object": "model",
                "created": 0,
                "owned_by": "fake",
            }
            return web.Response(body=orjson.dumps({"object": "list", "data": [listed]}), headers=JSON_HEADERS)
        return error_response(404, f"Unknown request URL: {request.method} {request.path}.")

    def _retry_after(self, now: float) -> int:
        soonest = min(self._ends.values(), default=now)
        return max(1, math.ceil(soonest - now))

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        number = next(self._ids)
        try:
            _, call = parse_call(await request.read(), f"chatcmpl-cap{number}", self.model_name)
        except BadRequest as exc:
            return error_response(400, str(exc))
        self.stats.requests += 1
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        if self.capacity.over_limit == "reject" and self._running >= self.capacity.concurrency:
            self.stats.rejected += 1
            limit = self.capacity.concurrency
            return error_response(
                429,
                f"Rate limit reached: {limit} requests at once. Please try again later.",
                self._retry_after(arrived),
            )
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        granted = loop.time()
        self.stats.queued_seconds += granted - arrived
        tokens = self.capacity.tokens(call.max_tokens)
        self._running += 1
        self.stats.most_running = max(self.stats.most_running, self._running)
        self._ends[number] = granted + self.capacity.service_seconds(tokens)
        try:
            response = await self._answer(request, call, tokens, granted)
        except (asyncio.CancelledError, ConnectionResetError):
            self.stats.cancelled += 1
            raise
        finally:
            self._running -= 1
            del self._ends[number]
            self._slots.release()
            self.stats.service_seconds += loop.time() - granted
        self.stats.answered += 1
        self.stats.completion_tokens += tokens * call.n
        return response

    async def _answer(
        self, request: web.BaseRequest, call: Call, tokens: int, granted: float
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        pace = 1 / self.capacity.tokens_per_s
        first = granted + self.capacity.first_byte_s
        behaviour = Behaviour(content=sized_answer(tokens), chunks=tokens)
        if not call.stream:
            await asyncio.sleep(max(0.0, first + (tokens - 1) * pace - loop.time()))
            return web.Response(body=orjson.dumps(completion_body(call, behaviour)), headers=JSON_HEADERS)
        opening, steps, closing = stream_parts(call, behaviour)
        await asyncio.sleep(max(0.0, first - loop.time()))
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await response.write(opening + steps[0])
        for index, step in enumerate(steps[1:], start=1):
            await asyncio.sleep(max(0.0, first + index * pace - loop.time()))
            await response.write(step)
        await response.write(closing)
        return response


async def _serve(args: argparse.Namespace) -> None:
    capacity = Capacity(
        args.concurrency, args.first_byte_ms / 1000, args.tokens_per_s, args.max_tokens, args.over_limit
    )
    await serve_until_stopped(CapacityUpstream(capacity, model_name=args.model_name), args.host, args.port)


def main(argv: list[str] | None = None) -> None:
    """Run the fake until SIGTERM/SIGINT; prints `READY <base_url>` once listening."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.fakes.capacity_upstream",
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=0)
    add("--concurrency", type=int, default=4, help="requests running at once")
    add("--over-limit", choices=("reject", "queue"), default="reject", help="429 beyond it, or wait")
    add("--first-byte-ms", type=float, default=400.0, help="from the slot to the first token")
    add("--tokens-per-s", type=float, default=50.0, help="pace of the tokens after the first")
    add("--max-tokens", type=int, default=200, help="longest answer, in tokens (words)")
    add("--model-name", default=None, help="the model answers name (default: the one asked for)")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(args))


if __name__ == "__main__":
    main()
