"""`POST /v1/messages/count_tokens` (Anthropic's Messages API): how many input tokens a Messages request
holds, counted offline with the gateway's tokenizer (an estimate for models with other tokenizers), in
Anthropic's format, errors included."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from gateway.api.access import ServicesDep
from gateway.api.http import body_within, credentials
from gateway.errors import GatewayError
from gateway.inbound.anthropic_messages import AnthropicMessages, count_input_tokens

router = APIRouter()


@router.post("/v1/messages/count_tokens")
async def count_tokens(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Response:
    api = AnthropicMessages()
    try:
        services.auth.principal(credentials(authorization, x_api_key))
        raw = await body_within(request, services.settings.max_body_bytes)
        tokens = count_input_tokens(raw, services.tokens)
    except GatewayError as error:
        return Response(api.error_body(error), status_code=error.status, media_type="application/json")
    return Response(f'{{"input_tokens":{tokens}}}', media_type="application/json")
