"""Who may call an endpoint, as FastAPI dependencies. They run before the body is read and validated, so a
caller without the right key learns nothing from validation errors: 401 or 403 comes first."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from gateway import wire
from gateway.api.http import credentials
from gateway.identity.auth import Principal, require_role
from gateway.inbound.response_store import tenant_of
from gateway.services import Services


def services(request: Request) -> Services:
    """The running gateway's services (the lifespan's state)."""
    found: Services = request.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]


def caller(
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    """The principal of the bearer key, or of Anthropic's `x-api-key` (401 without a valid one, unless
    the gateway is open)."""
    return services.auth.principal(credentials(authorization, x_api_key))


def tenant(principal: Annotated[Principal, Depends(caller)]) -> str:
    """Whose stored responses, files and batches the caller reads and writes: as the Responses adapter
    stores responses (`inbound/response_store.tenant_of`: its team, else its key)."""
    return tenant_of(wire.Caller(team=principal.team, key=principal.key_id))


def admin(principal: Annotated[Principal, Depends(caller)]) -> Principal:
    require_role(principal, "admin")
    return principal


Caller = Annotated[Principal, Depends(caller)]
Tenant = Annotated[str, Depends(tenant)]
# The admin acting (FastAPI resolves it once per request, however many times a route names it).
Admin = Annotated[Principal, Depends(admin)]
# For a router whose every route is for admins: `APIRouter(..., dependencies=ADMIN_ONLY)`.
ADMIN_ONLY = [Depends(admin)]
