"""OpenAI wire JSON rebuilt from litellm's response objects (as dicts), for the litellm adapter.

litellm's own `model_dump()` carries provider extras and fields OpenAI clients do not expect; these
functions keep exactly OpenAI's shapes, with the deployment's model name.
"""

from __future__ import annotations

import time
from typing import Any

DELTA_FIELDS = ("role", "content", "refusal", "reasoning_content")


def usage_json(usage: Any) -> dict[str, Any] | None:
    """OpenAI's usage object, without litellm's provider-specific extras and nulls."""
    if not isinstance(usage, dict):
        return None
    clean: dict[str, Any] = {
        name: int(usage.get(name) or 0) for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    for name in ("prompt_tokens_details", "completion_tokens_details"):
        details = usage.get(name)
        if isinstance(details, dict) and (kept := {k: v for k, v in details.items() if v is not None}):
            clean[name] = kept
    return clean


def tool_calls_json(calls: list[dict[str, Any]], *, delta: bool) -> list[dict[str, Any]]:
    clean = []
    for call in calls:
        function = {k: v for k, v in (call.get("function") or {}).items() if k in ("name", "arguments")}
        item: dict[str, Any] = {"index": call.get("index", 0)} if delta else {}
        item.update({k: call[k] for k in ("id", "type") if call.get(k) is not None})
        item["function"] = {k: v for k, v in function.items() if v is not None}
        clean.append(item)
    return clean


def completion_json(raw: dict[str, Any], model: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    choices = []
    for choice in raw.get("choices") or []:
        source = choice.get("message") or {}
        message: dict[str, Any] = {"role": source.get("role") or "assistant"}
        message["content"] = source.get("content")
        message.update({k: source[k] for k in DELTA_FIELDS[2:] if source.get(k) is not None})
        if source.get("tool_calls"):
            message["tool_calls"] = tool_calls_json(source["tool_calls"], delta=False)
        choices.append(
            {
                "index": choice.get("index", 0),
                "message": message,
                "logprobs": choice.get("logprobs"),
                "finish_reason": choice.get("finish_reason"),
            }
        )
    usage = usage_json(raw.get("usage"))
    body = {
        "id": raw.get("id"),
        "object": "chat.completion",
        "created": raw.get("created") or int(time.time()),
        "model": model,
        "system_fingerprint": raw.get("system_fingerprint"),
        "choices": choices,
        "usage": usage,
    }
    return body, usage


def chunk_json(raw: dict[str, Any], model: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    choices = []
    for choice in raw.get("choices") or []:
        source = choice.get("delta") or {}
        delta = {k: source[k] for k in DELTA_FIELDS if source.get(k) is not None}
        if source.get("tool_calls"):
            delta["tool_calls"] = tool_calls_json(source["tool_calls"], delta=True)
        choices.append(
            {
                "index": choice.get("index", 0),
                "delta": delta,
                "logprobs": choice.get("logprobs"),
                "finish_reason": choice.get("finish_reason"),
            }
        )
    chunk = {
        "id": raw.get("id"),
        "object": "chat.completion.chunk",
        "created": raw.get("created") or int(time.time()),
        "model": model,
        "system_fingerprint": raw.get("system_fingerprint"),
        "choices": choices,
    }
    return chunk, usage_json(raw.get("usage"))
