"""`POST /v1/route/explain`: the routing decision for a request, with every signal and rule.

No model is called. A body without `model` is explained as `auto`. The body is a chat completions
request unless `?api=` names another inbound API (`responses`, `messages`, `embeddings`,
`completions`): it is then read as that API's adapter reads it, so the decision is the one the request
would get.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request

from gateway.api.access import ServicesDep
from gateway.api.http import body_within, caller_of, credentials_of, wanted_headers
from gateway.api.openapi import CHAT_BODY
from gateway.errors import InvalidRequest
from gateway.inbound.chat_completions import parse_chat_request
from gateway.inbound.json_body import json_object
from gateway.routing.catalog import AUTO
from gateway.wire import ChatRequest

router = APIRouter()


@router.post("/v1/route/explain", openapi_extra={"requestBody": CHAT_BODY})
async def explain_route(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    api: str = "chat.completions",
) -> dict[str, Any]:
    headers = wanted_headers(request.scope["headers"])
    principal = services.auth.principal(credentials_of(headers))
    raw = await body_within(request, services.settings.max_body_bytes)
    request_id = services.request_ids.of(headers.get(b"x-request-id"))
    caller = caller_of(headers, principal)
    if api == "chat.completions":
        chat = ChatRequest(body=parse_chat_request(raw, default_model=AUTO), request_id=request_id)
    else:
        inbound = {endpoint.api.name: endpoint.api for endpoint in services.endpoints.values()}
        if api not in inbound:
            known = ", ".join(sorted(inbound))
            raise InvalidRequest(f"Unknown api '{api}': choose from {known}.", param="api")
        body = json_object(raw)
        body.setdefault("model", AUTO)
        chat = await inbound[api].parse(orjson.dumps(body), request_id, caller)
    explained = await services.path.explain(chat, caller)
    explained["api"] = chat.api
    return explained
