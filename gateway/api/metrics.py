"""`GET /metrics`: the gateway's metrics in Prometheus text format. Spend per team is finance's
business, so a gateway with keys asks for one with role admin or finance (a scraper sends it as a
bearer token); an open gateway (loopback only) serves it to anyone."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from gateway.api.access import ServicesDep
from gateway.identity.auth import require_role

router = APIRouter()


@router.get("/metrics", response_model=None)
async def metrics(
    request: Request, services: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> Response:
    require_role(services.auth.principal(authorization), "admin", "finance")
    body, content_type = services.telemetry.prometheus_text()
    return Response(body, media_type=content_type)
