"""`POST /v1/route/explain`: the routing decision for a request, with every signal and rule.

No model is called. A body without `model` is explained as `auto`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from gateway.api.access import ServicesDep
from gateway.api.http import caller_of, wanted_headers
from gateway.api.openapi import CHAT_BODY
from gateway.errors import BodyTooLarge
from gateway.inbound.chat_completions import parse_chat_request
from gateway.routing.catalog import AUTO
from gateway.wire import ChatRequest

router = APIRouter()


@router.post("/v1/route/explain", openapi_extra={"requestBody": CHAT_BODY})
async def explain_route(
    request: Request, services: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    principal = services.auth.principal(authorization)
    raw = await request.body()
    if len(raw) > services.settings.max_body_bytes:
        raise BodyTooLarge(f"The request body exceeds the limit of {services.settings.max_body_bytes} bytes.")
    body = parse_chat_request(raw, default_model=AUTO)
    headers = wanted_headers(request.scope["headers"])
    chat = ChatRequest(body=body, request_id=services.request_ids.of(headers.get(b"x-request-id")))
    return await services.path.decide.explain(chat, caller_of(headers, principal))
