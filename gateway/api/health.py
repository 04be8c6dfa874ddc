"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.runtime import Runtime

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    ready = runtime.ready()
    body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
    if runtime.catalog is not None and runtime.health is not None:
        states = runtime.health.states()
        body["deployments"] = {
            name: {"available": provider.available, "circuit": states[name].value}
            for name, provider in runtime.catalog.providers.items()
        }
    return JSONResponse(body, status_code=200 if ready else 503)
