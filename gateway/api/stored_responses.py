"""The Responses API's stored responses: `GET` and `DELETE /v1/responses/{id}` and
`GET /v1/responses/{id}/input_items`, each scoped to the caller's tenant (another team's id is a 404,
as a missing one is)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from gateway.api.access import ServicesDep, Tenant
from gateway.errors import NotFound
from gateway.inbound.response_store import StoredResponse
from gateway.inbound.responses import deleted_object, input_items_page
from gateway.inbound.responses_render import StoredResponsesUnavailable

router = APIRouter()


async def _stored(services: ServicesDep, tenant: str, response_id: str) -> StoredResponse:
    try:
        stored = await services.stored_responses.get(tenant, response_id)
    except Exception as exc:  # the backend's own errors (a database away or busy)
        raise StoredResponsesUnavailable("Stored responses cannot be read now; try again shortly.") from exc
    if stored is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return stored


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, services: ServicesDep, tenant: Tenant) -> dict[str, Any]:
    return (await _stored(services, tenant, response_id)).response


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    services: ServicesDep,
    tenant: Tenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    stored = await _stored(services, tenant, response_id)
    return input_items_page(stored, after=after, limit=limit, order=order)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, services: ServicesDep, tenant: Tenant) -> dict[str, Any]:
    try:
        deleted = await services.stored_responses.delete(tenant, response_id)
    except Exception as exc:
        raise StoredResponsesUnavailable(
            "Stored responses cannot be changed now; try again shortly."
        ) from exc
    if not deleted:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return deleted_object(response_id)
