"""OpenAI's Files and Batch APIs, for batch work: `POST /v1/files` (a JSONL upload, purpose `batch`),
`GET /v1/files/{id}` and `/content`, `DELETE /v1/files/{id}`; `POST /v1/batches`, `GET /v1/batches`,
`GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`. Each is scoped to the caller's tenant (its
team, else its key): another tenant's id is a 404, as a missing one is.

The lines run later, in spare capacity, through the request path (`deferred/batch_runner.py`). An input
file that is not a valid batch makes a `failed` batch whose `errors` name the first bad line, as OpenAI
does, rather than an error response.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from gateway.api.access import Caller, ServicesDep, Tenant
from gateway.batches.lines import MAX_FILE_BYTES, BatchInputError, parse_batch_input
from gateway.batches.render import render_batch, render_file
from gateway.batches.rows import BatchRow, FileRow
from gateway.batches.store import BatchStoreUnavailable, ThreadedBatchStore
from gateway.deferred.background_responses import BACKGROUND_KEY
from gateway.errors import BodyTooLarge, GatewayError, InvalidRequest, NotFound

router = APIRouter()
T = TypeVar("T")


class BatchesUnavailable(GatewayError):
    status = 503
    error_type = "server_error"
    code: str | None = "batches_unavailable"

    @property
    def retryable(self) -> bool:
        return True


class NewBatch(BaseModel):
    """`POST /v1/batches`: what OpenAI's client sends."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def _store(services: ServicesDep) -> ThreadedBatchStore:
    return services.batches


async def _calling(work: Awaitable[T]) -> T:
    try:
        return await work
    except BatchStoreUnavailable as exc:
        raise BatchesUnavailable("Batches cannot be read or changed now; try again shortly.") from exc


async def _file(services: ServicesDep, tenant: str, file_id: str) -> FileRow:
    row = await _calling(_store(services).get_file(tenant, file_id))
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return row


async def _batch(services: ServicesDep, tenant: str, batch_id: str) -> BatchRow:
    row = await _calling(_store(services).get_batch(tenant, batch_id))
    if row is None:
        raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
    return row


@router.post("/v1/files")
async def create_file(
    services: ServicesDep,
    tenant: Tenant,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
) -> dict[str, Any]:
    if purpose != "batch":
        raise InvalidRequest(
            f"The gateway keeps files for batches only: purpose must be 'batch', not {purpose[:40]!r}.",
            param="purpose",
        )
    content = await file.read(MAX_FILE_BYTES + 1)
    if len(content) > MAX_FILE_BYTES:
        raise BodyTooLarge(f"A batch file may have at most {MAX_FILE_BYTES} bytes.")
    name = (file.filename or "upload.jsonl")[:255]
    row = await _calling(_store(services).create_file(tenant, purpose, name, content))
    return render_file(row)


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, services: ServicesDep, tenant: Tenant) -> dict[str, Any]:
    return render_file(await _file(services, tenant, file_id))


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, services: ServicesDep, tenant: Tenant) -> Response:
    content = await _calling(_store(services).file_content(tenant, file_id))
    if content is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return Response(content, media_type="application/jsonl")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, services: ServicesDep, tenant: Tenant) -> dict[str, Any]:
    deleted = await _calling(_store(services).delete_file(tenant, file_id))
    if not deleted:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return {"id": file_id, "object": "file", "deleted": True}


@router.post("/v1/batches")
async def create_batch(
    new: NewBatch, services: ServicesDep, tenant: Tenant, principal: Caller
) -> dict[str, Any]:
    store = _store(services)
    source = await _file(services, tenant, new.input_file_id)
    if source.purpose != "batch":
        raise InvalidRequest(f"File {source.id} is not a batch input file.", param="input_file_id")
    content = await _calling(store.file_content(tenant, source.id)) or b""
    arguments = (tenant, source.id, new.endpoint, new.completion_window, new.metadata)
    try:
        lines = parse_batch_input(content, new.endpoint)
    except BatchInputError as error:
        if error.param in ("endpoint",):
            raise InvalidRequest(error.message, param="endpoint") from error
        try:
            row = await _calling(store.create_failed_batch(*arguments, [error.as_batch_error()]))
        except ValueError as refused:
            raise InvalidRequest(str(refused)) from refused
        return render_batch(row)
    try:
        created = store.create_batch(*arguments, lines, team=principal.team, key_id=principal.key_id)
        row = await _calling(created)
    except ValueError as refused:
        raise InvalidRequest(str(refused)) from refused
    return render_batch(row)


@router.get("/v1/batches")
async def list_batches(
    services: ServicesDep,
    tenant: Tenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    rows = await _calling(_store(services).list_batches(tenant, after=after, limit=limit + 1))
    # A background response's job is the gateway's own: not listed.
    page = [render_batch(row) for row in rows[:limit] if BACKGROUND_KEY not in (row.metadata or {})]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(rows) > limit,
    }


@router.get("/v1/batches/{batch_id}")
async def get_batch(batch_id: str, services: ServicesDep, tenant: Tenant) -> dict[str, Any]:
    return render_batch(await _batch(services, tenant, batch_id))


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, services: ServicesDep, tenant: Tenant) -> dict[str, Any]:
    row = await _calling(_store(services).cancel_batch(tenant, batch_id))
    if row is None:
        raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
    return render_batch(row)
