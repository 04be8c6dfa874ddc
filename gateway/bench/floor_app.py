"""The Python floor: a raw ASGI app that forwards chat requests with aiohttp and does nothing else.

Measured beside the gateway in the same run, it shows how much of the gateway's cost is its own
logic and how much any Python forwarder on uvicorn and aiohttp pays. Not part of the gateway.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import orjson

Message = MutableMapping[str, Any]
UPSTREAM_ENV = "BENCH_FLOOR_UPSTREAM"


class FloorForwarder:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._url = ""

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = orjson.loads(b"".join(chunks))
        body["model"] = "fake-model"
        assert self._session is not None
        async with self._session.post(
            self._url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
        ) as response:
            if body.get("stream"):
                headers = [(b"content-type", b"text/event-stream")]
                await send({"type": "http.response.start", "status": response.status, "headers": headers})
                async for data in response.content.iter_any():
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            data = await response.read()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _lifespan(
        self, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._url = os.environ[UPSTREAM_ENV].rstrip("/") + "/chat/completions"
                self._session = aiohttp.ClientSession()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = FloorForwarder()
