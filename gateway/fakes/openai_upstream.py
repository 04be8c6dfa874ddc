"""A scriptable fake OpenAI-compatible upstream: a real aiohttp server on 127.0.0.1.

The gateway's tests script failures, delays and disconnects through it, and the benchmark pushes
thousands of requests per second through its fast path, so plain answers are built in one go with orjson.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import itertools
import math
import signal
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from gateway.fakes.responses_upstream import ResponsesBadRequest, answer, parse_request, refusal
from gateway.fakes.script import (
    TOOL_ARGUMENTS,
    Behaviour,
    default_content,
    error_body,
    first_tool_name,
    prompt_tokens,
    split_pieces,
    word_count,
)

FINGERPRINT = "fp_fake"
DEFAULT_MODEL = "fake-model"
# Stop waits this long for in-flight requests (hangs, long latencies) before cancelling them.
SHUTDOWN_TIMEOUT = 0.2
DONE = b"data: [DONE]\n\n"
GARBAGE = b'{"id": "chatcmpl-garbage", this is not json'
JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream"}
DEFAULT_BEHAVIOUR = Behaviour()
# Filler for answers sized by the request's max_tokens: one word per token, ~4 characters a word.
FILLER_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A chat request as the fake saw it, so tests can assert what the gateway forwarded."""

    headers: dict[str, str]
    body: dict[str, Any]
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Call:
    """The parts of one chat request that shape the answer."""

    id: str
    created: int
    model: str
    messages: list[Any]
    n: int
    stream: bool
    include_usage: bool
    tools: Any
    max_tokens: int | None = None


class BadRequest(Exception):
    """The request body is not a chat request; answered with a 400 like OpenAI's."""


def error_response(status: int, message: str, retry_after: float | None = None) -> web.Response:
    """OpenAI's error JSON; Retry-After only on 429/503 where real providers send it."""
    headers = dict(JSON_HEADERS)
    if retry_after is not None and status in (429, 503):
        whole = float(retry_after).is_integer()
        headers["Retry-After"] = str(int(retry_after)) if whole else str(retry_after)
    return web.Response(status=status, body=orjson.dumps(error_body(status, message)), headers=headers)


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _tool_id(call: Call) -> str:
    return "call_" + call.id.removeprefix("chatcmpl-")


def _within_limit(call: Call, behaviour: Behaviour) -> tuple[str, str]:
    """The answer's text and finish reason: as a real upstream, never more words (tokens) than the
    request's max_tokens, cut with finish_reason `length`."""
    content = behaviour.content if behaviour.content is not None else default_content(call.messages)
    words = content.split()
    if call.max_tokens is not None and len(words) > call.max_tokens:
        return " ".join(words[: call.max_tokens]), "length"
    return content, "stop"


def completion_body(call: Call, behaviour: Behaviour) -> dict[str, Any]:
    """A non-streamed `chat.completion` object with n identical choices."""
    message: dict[str, Any]
    if behaviour.tool_call:
        function = {"name": first_tool_name(call.tools), "arguments": TOOL_ARGUMENTS}
        tool_calls = [{"id": _tool_id(call), "type": "function", "function": function}]
        message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
        finish, words = "tool_calls", word_count(TOOL_ARGUMENTS)
    else:
        content, finish = _within_limit(call, behaviour)
        message = {"role": "assistant", "content": content}
        words = word_count(content)
    message["refusal"] = None
    message["annotations"] = []
    body: dict[str, Any] = {
        "id": call.id,
        "object": "chat.completion",
        "created": call.created,
        "model": call.model,
        "choices": [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(call.n)
        ],
    }
    if behaviour.usage:
        body["usage"] = _usage(prompt_tokens(call.messages, call.tools), words * call.n)
    body["service_tier"] = "default"
    body["system_fingerprint"] = FINGERPRINT
    return body


def stream_parts(call: Call, behaviour: Behaviour) -> tuple[bytes, list[bytes], bytes]:
    """SSE bytes of a stream as (role chunk, one entry per content step, finish+usage+[DONE]).

    Each entry holds one event per choice; the split lets the slow path pace and cut the stream.
    """
    base = {
        "id": call.id,
        "object": "chat.completion.chunk",
        "created": call.created,
        "model": call.model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    head = b"data: " + orjson.dumps(base)[:-1] + b',"choices":[{"index":'
    report_usage = call.include_usage and behaviour.usage
    tail = b',"usage":null}\n\n' if report_usage else b"}\n\n"
    # Byte templates around the delta: the benchmark streams thousands of these per second.
    opens = [head + str(i).encode() + b',"delta":' for i in range(call.n)]
    middle = b',"logprobs":null,"finish_reason":null}]' + tail

    def event(delta: bytes, end: bytes = middle) -> bytes:
        if call.n == 1:
            return opens[0] + delta + end
        return b"".join([start + delta + end for start in opens])

    if behaviour.tool_call:
        function = {"name": first_tool_name(call.tools), "arguments": ""}
        tool = {"index": 0, "id": _tool_id(call), "type": "function", "function": function}
        opening = event(orjson.dumps({"role": "assistant", "content": None, "tool_calls": [tool]}))
        pieces = split_pieces(TOOL_ARGUMENTS, min(behaviour.chunks, len(TOOL_ARGUMENTS)))
        steps = [
            event(orjson.dumps({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})) for p in pieces
        ]
        finish, words = "tool_calls", word_count(TOOL_ARGUMENTS)
    else:
        content, finish = _within_limit(call, behaviour)
        opening = event(b'{"role":"assistant","content":""}')
        pieces = split_pieces(content, behaviour.chunks)
        steps = [event(b'{"content":' + orjson.dumps(p) + b"}") for p in pieces]
        # The same count as the answer not streamed (a real upstream's tokenizer sees the same text).
        words = word_count("".join(pieces))
    closing = event(b"{}", b',"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]' + tail)
    if report_usage:
        usage = _usage(prompt_tokens(call.messages, call.tools), words * call.n)
        closing += b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
    return opening, steps, closing + DONE


def parse_call(raw: bytes, call_id: str, model_name: str | None) -> tuple[dict[str, Any], Call]:
    """Validate just enough of a chat request to answer it; raises BadRequest otherwise."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    messages = body.get("messages", [])
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be an array.")
    n = body.get("n")
    n = 1 if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BadRequest(f"{n!r} is not a valid value for 'n'.")
    model = body.get("model")
    options = body.get("stream_options")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    call = Call(
        id=call_id,
        created=int(time.time()),
        model=model_name or (model if isinstance(model, str) else DEFAULT_MODEL),
        messages=messages,
        n=n,
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        tools=body.get("tools"),
        max_tokens=limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None,
    )
    return body, call


def sized_answer(words: int) -> str:
    """`words` filler words: an answer whose completion tokens (its word count) are exactly `words`."""
    return " ".join(itertools.islice(itertools.cycle(FILLER_WORDS), words))


async def _abort(request: web.BaseRequest) -> None:
    """Drop the connection abruptly, after what was written reached the socket (abort discards buffers)."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(1000):
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.001)
    transport.abort()


def fake_vector(text: str, dimensions: int = 8) -> list[float]:
    """A unit vector that depends only on the text."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [byte - 127.5 for byte in digest[:dimensions]]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [value / norm for value in raw]


class FakeOpenAIUpstream:
    """An OpenAI-compatible server whose answers are scripted per request, recording what it received."""

    def __init__(
        self,
        *,
        default: Behaviour = DEFAULT_BEHAVIOUR,
        model_name: str | None = None,
        record: bool = True,
        answer_max_tokens: int = 0,
    ) -> None:
        self.default = default
        self.model_name = model_name
        self.record = record
        # > 0: a request with max_tokens (or max_completion_tokens) and no scripted content gets
        # min(max_tokens, answer_max_tokens) filler words, so a replayed trace gets answers of its sizes.
        # 0 (the default) keeps the echo answer.
        self.answer_max_tokens = answer_max_tokens
        self.requests: list[RecordedRequest] = []
        self.cancelled = 0
        self.request_count = 0
        self.base_url = ""
        self._script: deque[Behaviour] = deque()
        self._ids = itertools.count(1)
        self._runner: web.ServerRunner | None = None
        self._stopping = False

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next chat requests, one each; `default` applies once they run out."""
        self._script.extend(behaviours)

    def reset(self) -> None:
        """Forget the script, recorded requests and counters, so one server can serve many tests."""
        self._script.clear()
        self.requests.clear()
        self.cancelled = 0
        self.request_count = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = any free port) and return the OpenAI base URL, ending in /v1."""
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, backlog=4096).start()
        bound = self._runner.addresses[0][1]
        self._stopping = False
        self.base_url = f"http://{host}:{bound}/v1"
        return self.base_url

    async def stop(self) -> None:
        """Close the listener and in-flight requests; those are not counted as client cancellations."""
        if self._runner is None:
            return
        self._stopping = True
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == "/v1/chat/completions" and method == "POST":
            return await self._chat(request)
        if path == "/v1/embeddings" and method == "POST":
            return await self._embeddings(request)
        if path == "/v1/responses" and method == "POST":
            return await self._responses(request)
        if path == "/v1/models" and method == "GET":
            model = self.model_name or DEFAULT_MODEL
            listed = {"id": model, "object": "model", "created": 0, "owned_by": "fake"}
            return web.Response(body=orjson.dumps({"object": "list", "data": [listed]}), headers=JSON_HEADERS)
        return error_response(404, f"Unknown request URL: {method} {path}.")

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            body, call = parse_call(await request.read(), f"chatcmpl-fake{next(self._ids)}", self.model_name)
        except BadRequest as exc:
            return error_response(400, str(exc))
        self.request_count += 1
        if self.record:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append(RecordedRequest(headers=headers, body=body, query=dict(request.query)))
        try:
            behaviour = self._script.popleft()
        except IndexError:
            behaviour = self.default
        if self.answer_max_tokens > 0 and call.max_tokens is not None and behaviour.content is None:
            words = min(call.max_tokens, self.answer_max_tokens)
            behaviour = dataclasses.replace(behaviour, content=sized_answer(words))
        if behaviour.is_plain:
            if call.stream:
                opening, steps, closing = stream_parts(call, behaviour)
                return web.Response(body=b"".join((opening, *steps, closing)), headers=SSE_HEADERS)
            return web.Response(body=orjson.dumps(completion_body(call, behaviour)), headers=JSON_HEADERS)
        try:
            return await self._scripted(request, call, behaviour)
        except asyncio.CancelledError:
            self._client_went_away()
            raise

    async def _responses(self, request: web.BaseRequest) -> web.StreamResponse:
        """OpenAI's Responses API (gateway.fakes.responses_upstream), scripted from the chat queue."""
        try:
            body, call = parse_request(await request.read(), next(self._ids), self.model_name)
        except ResponsesBadRequest as exc:
            return error_response(400, str(exc))
        self.request_count += 1
        if self.record:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append(RecordedRequest(headers=headers, body=body, query=dict(request.query)))
        refused = refusal(call)
        if refused is not None:  # recorded, but no scripted behaviour spent on it
            return error_response(400, refused)
        try:
            b = self._script.popleft()
        except IndexError:
            b = self.default
        try:
            if b.hang:
                await asyncio.get_running_loop().create_future()
            if b.latency:
                await asyncio.sleep(b.latency)
            if b.status >= 400:
                return error_response(b.status, b.error_message, b.retry_after)
            return await answer(request, call, b, _abort, self._client_went_away)
        except asyncio.CancelledError:
            self._client_went_away()
            raise

    async def _embeddings(self, request: web.BaseRequest) -> web.StreamResponse:
        """Each input's vector is made from its words (the same text, the same vector); usage counts
        words, as chat's does."""
        try:
            body = orjson.loads(await request.read())
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            texts = [text if isinstance(text, str) else " ".join(map(str, text)) for text in inputs]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return error_response(400, f"Invalid embeddings request: {exc!r}")
        self.request_count += 1
        if self.record:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append(RecordedRequest(headers=headers, body=body, query=dict(request.query)))
        data = []
        for index, text in enumerate(texts):
            vector = fake_vector(text)
            encoded: object = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(text.split()) for text in texts)
        answer = {
            "object": "list",
            "data": data,
            "model": self.model_name or str(body.get("model")),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=orjson.dumps(answer), headers=JSON_HEADERS)

    def _client_went_away(self) -> None:
        if not self._stopping:
            self.cancelled += 1

    async def _scripted(self, request: web.BaseRequest, call: Call, b: Behaviour) -> web.StreamResponse:
        if b.hang:
            await asyncio.get_running_loop().create_future()
        if b.latency:
            await asyncio.sleep(b.latency)
        if b.status >= 400:
            return error_response(b.status, b.error_message, b.retry_after)
        if not call.stream:
            payload = GARBAGE if b.garbage else orjson.dumps(completion_body(call, b))
            if b.disconnect_after is None:
                return web.Response(status=b.status, body=payload, headers=JSON_HEADERS)
            response = web.StreamResponse(status=b.status, headers=JSON_HEADERS)
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            await _abort(request)
            return response
        response = web.StreamResponse(status=b.status, headers=SSE_HEADERS)
        await response.prepare(request)  # sends the headers now, so latency and first_chunk_delay differ
        try:
            await self._pace(request, response, call, b)
        except ConnectionResetError:
            self._client_went_away()
        return response

    async def _pace(
        self, request: web.BaseRequest, response: web.StreamResponse, call: Call, b: Behaviour
    ) -> None:
        """Write a stream event by event with the scripted delays, cutting the connection if asked to."""
        cut = b.disconnect_after
        if cut == 0:
            await _abort(request)
            return
        if b.first_chunk_delay:
            await asyncio.sleep(b.first_chunk_delay)
        if b.garbage:
            await response.write(b"data: " + GARBAGE + b"\n\n" + DONE)
            return
        opening, steps, closing = stream_parts(call, b)
        await response.write(opening)
        for index, step in enumerate(steps):
            if index == cut:
                await _abort(request)
                return
            if index and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            await response.write(step)
        if cut is not None:
            await _abort(request)
            return
        await response.write(closing)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class Servable(Protocol):
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str: ...

    async def stop(self) -> None: ...


async def serve_until_stopped(fake: Servable, host: str, port: int) -> None:
    """Serve `fake` until SIGTERM or SIGINT; prints `READY <base_url>` once it listens."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    url = await fake.start(host, port)
    print(f"READY {url}", flush=True)
    try:
        await stopped.wait()
    finally:
        await fake.stop()


async def _serve(args: argparse.Namespace) -> None:
    default = Behaviour(
        chunks=args.chunks, latency=args.latency_ms / 1000, chunk_delay=args.chunk_delay_ms / 1000
    )
    # The benchmark sends millions of requests: recording them would only grow memory.
    fake = FakeOpenAIUpstream(
        default=default, model_name=args.model_name, record=False, answer_max_tokens=args.answer_max_tokens
    )
    await serve_until_stopped(fake, args.host, args.port)


def main(argv: list[str] | None = None) -> None:
    """Run the fake until SIGTERM/SIGINT; prints `READY <base_url>` once listening."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=DEFAULT_BEHAVIOUR.chunks)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--model-name", default=None)
    parser.add_argument(
        "--answer-max-tokens",
        type=int,
        default=0,
        metavar="N",
        help="answer a request that sets max_tokens with min(max_tokens, N) words (0: echo the prompt)",
    )
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(args))


if __name__ == "__main__":
    main()
