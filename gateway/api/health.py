"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.api.access import ServicesDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """503 only when no deployment can answer. A backing service that is away (the ledger's database,
    the key store, Redis) makes the replica `degraded`, still 200: chat goes on (records are spooled,
    the last keys kept, counters local), and taking every replica out of the load balancer for it
    would stop serving altogether. What is wrong is listed under `problems`."""
    ready = services.ready()
    backing = services.backing_services()
    problems = [
        f"{name}: {state.get('error') or 'unhealthy'}" for name, state in backing.items() if not state["ok"]
    ]
    status = "not ready" if not ready else "degraded" if problems else "ready"
    body: dict[str, Any] = {"status": status, "services": backing}
    if problems:
        body["problems"] = problems
    states = services.health.states()
    body["deployments"] = {
        name: {"available": provider.available, "circuit": states[name].value}
        for name, provider in services.catalog.providers.items()
    }
    return JSONResponse(body, status_code=200 if ready else 503)
