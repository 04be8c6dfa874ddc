"""`GET /v1/models`: the route aliases and deployments a key may use, never their credentials."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from gateway.api.access import ServicesDep
from gateway.routing.catalog import AUTO

router = APIRouter()


@router.get("/v1/models")
@router.get("/models", include_in_schema=False)
async def list_models(
    request: Request, services: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    services.auth.principal(authorization)
    catalog, policies = services.catalog, services.policies
    assert catalog is not None and policies is not None
    policy = policies.current.policy
    created = int(time.time())
    models: list[dict[str, Any]] = [
        {
            "id": AUTO,
            "object": "model",
            "created": created,
            "owned_by": "gateway",
            "kind": "auto",
            "policy": policies.current.name,
            "default_route": policy.default_route,
        },
    ]
    for route, spec in policy.routes.items():
        members = spec.deployments if spec.deployments is not None else dict(spec.split or {})
        models.append(
            {
                "id": route,
                "object": "model",
                "created": created,
                "owned_by": "gateway",
                "kind": "route",
                "deployments": members,
            }
        )
    for name, provider in catalog.providers.items():
        models.append(
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": provider.deployment.provider,
                "kind": "deployment",
                "available": provider.available,
                **({} if provider.available else {"unavailable_reason": provider.unavailable_reason}),
            }
        )
    return {"object": "list", "data": models}
