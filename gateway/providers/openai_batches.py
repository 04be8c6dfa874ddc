"""An OpenAI-compatible upstream's own Batch API, as the gateway calls it (`deferred/upstream_batches.py`):
upload a JSONL input file, create a batch, find one by its metadata, read its status and its output
and error files. The calls go through the provider's pooled session with its credentials; an error
status or a broken connection raises the same `gateway.errors` a chat call would.

What the wire looks like (OpenAI's Files and Batch API reference): `POST {api_base}/files` is a
multipart form (`purpose=batch`, `file`); `POST {api_base}/batches` takes `input_file_id`, `endpoint`,
`completion_window` ("24h", the only window OpenAI offers) and `metadata`; `GET {api_base}/batches`
lists the newest first, paged by `after`; `GET {api_base}/files/{id}/content` is the file's bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.providers.openai_compat import (
    OpenAICompatProvider,
    translate_transport_error,
    upstream_status_error,
)

COMPLETION_WINDOW = "24h"
# How many pages of the upstream's batch list a search looks through (100 batches a page).
SEARCH_PAGES = 5
CALL_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10)


class OpenAIBatchApi:
    def __init__(self, chat: OpenAICompatProvider, session: aiohttp.ClientSession) -> None:
        """`chat` is the deployment's chat provider: its base URL and credentials are the batches' too."""
        self.deployment = chat.deployment.name
        self._base = chat.api_base
        self._session = session
        self._headers = {k: v for k, v in chat.headers.items() if k.lower() != "content-type"}

    async def upload(self, filename: str, content: bytes) -> str:
        """The uploaded input file's id."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        uploaded = await self._call("POST", "/files", data=form)
        return str(uploaded["id"])

    async def create(self, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> dict[str, Any]:
        body = {
            "input_file_id": input_file_id, "endpoint": endpoint,
            "completion_window": COMPLETION_WINDOW, "metadata": metadata,
        }  # fmt: skip
        return await self._call("POST", "/batches", json_body=body)

    async def find(self, key: str, value: str) -> dict[str, Any] | None:
        """The newest batch whose metadata has `key` set to `value`, among the latest few hundred."""
        after: str | None = None
        for _ in range(SEARCH_PAGES):
            query = "?limit=100" + (f"&after={after}" if after else "")
            page = await self._call("GET", f"/batches{query}")
            batches = page.get("data") or []
            for batch in batches:
                if isinstance(batch, dict) and (batch.get("metadata") or {}).get(key) == value:
                    return batch
            if not page.get("has_more") or not batches:
                return None
            after = str(batches[-1]["id"])
        return None

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/batches/{batch_id}")

    async def content(self, file_id: str) -> bytes:
        return await self._read("GET", f"/files/{file_id}/content")

    async def _call(
        self, method: str, path: str, *, json_body: Any = None, data: Any = None
    ) -> dict[str, Any]:
        raw = await self._read(method, path, json_body=json_body, data=data)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(
                f"Deployment '{self.deployment}' returned malformed JSON from {path}."
            ) from exc
        if not isinstance(parsed, dict):
            raise UpstreamError(f"Deployment '{self.deployment}' returned no JSON object from {path}.")
        return parsed

    async def _read(self, method: str, path: str, *, json_body: Any = None, data: Any = None) -> bytes:
        headers = dict(self._headers)
        if json_body is not None:
            data = orjson.dumps(json_body)
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method, f"{self._base}{path}", data=data, headers=headers, timeout=CALL_TIMEOUT
            ) as response:
                raw = await response.read()
                if response.status >= 300:
                    raise upstream_status_error(self.deployment, response.status, raw, response.headers)
                return raw
        except (GatewayError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise translate_transport_error(self.deployment, exc) from exc
