"""What an upstream that speaks the Responses API itself is sent (`ResponsesInbound.native_body`): the
client's body as it is, but for the conversation the gateway keeps.

The gateway owns stored responses, whichever upstream answered: a pass-through request goes with
`store: false` and without `previous_response_id`, its earlier turns spelled out as input items from
the stored (chat) conversation — messages, function calls and their outputs; reasoning is not kept, as
on the translated path.
"""

from __future__ import annotations

from typing import Any


def native_body(
    body: dict[str, Any], earlier: list[dict[str, Any]], previous_response_id: str | None
) -> dict[str, Any]:
    """The body to send an upstream that speaks the Responses API (its `model` is the deployment's)."""
    native = {key: value for key, value in body.items() if key != "previous_response_id"}
    native["store"] = False
    if previous_response_id is not None:
        given = body["input"]
        new = [{"role": "user", "content": given}] if isinstance(given, str) else list(given)
        native["input"] = [*items_of_conversation(earlier), *new]
    return native


def items_of_conversation(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages as Responses input items."""
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id"),
                    "output": _text(message.get("content")),
                }
            )
        elif role == "assistant":
            text = _text(message.get("content"))
            if text:
                output_text = {"type": "output_text", "text": text, "annotations": []}
                items.append({"type": "message", "role": "assistant", "content": [output_text]})
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id"),
                        "name": function.get("name"),
                        "arguments": function.get("arguments") or "",
                    }
                )
        else:
            items.append({"type": "message", "role": role, "content": _input_parts(message.get("content"))})
    return items


def _input_parts(content: object) -> str | list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text(content)
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            parts.append({"type": "input_text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            image = part.get("image_url") or {}
            url = image.get("url") if isinstance(image, dict) else image
            parts.append({"type": "input_image", "image_url": url, "detail": "auto"})
    return parts


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""
