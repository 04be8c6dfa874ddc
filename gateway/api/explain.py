"""`POST /v1/route/explain`: the routing decision for a request, with every signal and rule.

No model is called. A body without `model` is explained as `auto`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from gateway.api.http import caller_of, request_id_of
from gateway.api.openapi import CHAT_BODY
from gateway.errors import BodyTooLarge
from gateway.providers.base import ChatRequest
from gateway.routing.catalog import AUTO
from gateway.runtime import Runtime
from gateway.wire import parse_chat_request

router = APIRouter()


@router.post("/v1/route/explain", openapi_extra={"requestBody": CHAT_BODY})
async def explain_route(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    runtime: Runtime = request.app.state.runtime
    assert runtime.auth is not None
    principal = runtime.auth.principal(authorization)
    assert runtime.pipeline is not None
    raw = await request.body()
    if len(raw) > runtime.settings.max_body_bytes:
        raise BodyTooLarge(f"The request body exceeds the limit of {runtime.settings.max_body_bytes} bytes.")
    body, _ = parse_chat_request(raw, default_model=AUTO)
    chat = ChatRequest(body=body, request_id=request_id_of(request.scope))
    return runtime.pipeline.explain(chat, caller_of(request.scope, principal))
