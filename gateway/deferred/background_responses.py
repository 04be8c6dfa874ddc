"""The Responses API's `background: true`: the request is answered later, in spare capacity, and the
client polls `GET /v1/responses/{id}` until its status is `completed` (or `failed`).

A background response is a one-line batch of the tenant's (`deferred/batch_runner.py` runs it as it
runs any batch line, as `deferrable`): so it is as durable as batches are — in SQLite or PostgreSQL,
claimed with a lease, run again after a crash — and goes through the policy, the budgets and the
ledger like any request. What the client sees meanwhile is a stored response with status `queued`,
written before the job, so the answer (stored under the same id when the line runs) always comes after
it. The job's batch is marked in its metadata (`BACKGROUND_KEY`) and left out of the client's list of
batches; its line's custom id is `BACKGROUND_PREFIX` + the response id, which is how the runner knows to
give the answer that id.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.batches.lines import BatchLine
from gateway.batches.store import BatchStoreUnavailable, ThreadedBatchStore
from gateway.errors import GatewayError
from gateway.inbound.response_store import ResponseStore, StoredResponse
from gateway.inbound.responses_render import ResponsesInbound, response_object
from gateway.wire import Caller, ChatRequest

BACKGROUND_KEY = "gateway_background_response"
BACKGROUND_PREFIX = "gateway-background:"
RESPONSES_ENDPOINT = "/v1/responses"


class BackgroundUnavailable(GatewayError):
    status = 503
    error_type = "server_error"
    code: str | None = "background_unavailable"

    @property
    def retryable(self) -> bool:
        return True


def background_response_id(custom_id: str) -> str | None:
    """The response id a batch line answers, when it is a background response's."""
    return custom_id.removeprefix(BACKGROUND_PREFIX) if custom_id.startswith(BACKGROUND_PREFIX) else None


class BackgroundResponses:
    def __init__(self, batches: ThreadedBatchStore, responses: ResponseStore) -> None:
        self._batches = batches
        self._responses = responses

    async def enqueue(self, request: ChatRequest, caller: Caller) -> bytes:
        """Keep the request as a job and its Response as `queued`; the body to answer the client with."""
        inbound: ResponsesInbound = request.inbound
        queued = response_object(inbound, status="queued", output=[], usage=None)
        await self._put(inbound, queued)
        body = {**inbound.client_body, "background": False}
        line = BatchLine(1, BACKGROUND_PREFIX + inbound.response_id, "POST", RESPONSES_ENDPOINT, body)
        try:
            source = await self._batches.create_file(
                inbound.tenant, "batch", f"{inbound.response_id}.jsonl", _jsonl(line)
            )
            await self._batches.create_batch(
                inbound.tenant, source.id, RESPONSES_ENDPOINT, "24h",
                {BACKGROUND_KEY: inbound.response_id}, [line], team=caller.team, key_id=caller.key,
            )  # fmt: skip
        except BatchStoreUnavailable as exc:
            failed = {**queued, "status": "failed", "error": _error("The job could not be queued.")}
            await self._put(inbound, failed)
            raise BackgroundUnavailable("Background responses cannot be queued now; try again.") from exc
        return orjson.dumps(queued)

    async def failed(self, tenant: str, response_id: str, message: str) -> None:
        """A background response whose request failed: its stored Response says so."""
        stored = await self._responses.get(tenant, response_id)
        if stored is None:
            return
        response = {**stored.response, "status": "failed", "error": _error(message)}
        await self._responses.put(
            StoredResponse(
                stored.id, stored.tenant, response, stored.input_items, stored.conversation,
                stored.created_at,
            )
        )  # fmt: skip

    async def _put(self, inbound: ResponsesInbound, response: dict[str, Any]) -> None:
        stored = StoredResponse(
            inbound.response_id, inbound.tenant, response, inbound.input_items, inbound.conversation,
            float(inbound.created_at or time.time()),
        )  # fmt: skip
        try:
            await self._responses.put(stored)
        except Exception as exc:  # the backend's own errors: the contract names none
            raise BackgroundUnavailable("Background responses cannot be stored now; try again.") from exc


def _jsonl(line: BatchLine) -> bytes:
    record = {"custom_id": line.custom_id, "method": line.method, "url": line.url, "body": line.body}
    return orjson.dumps(record) + b"\n"


def _error(message: str) -> dict[str, str]:
    return {"code": "server_error", "message": message}
