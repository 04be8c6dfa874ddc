"""What makes two requests the same question in the same situation.

The *context key* covers everything that shapes the answer except the last user turn: the tenant's
namespace, the route, the system prompt and earlier turns, tools, response format and the sampling
parameters. The *exact key* adds the last user turn, normalised (case and spacing). A later semantic
layer matches the last user turn by meaning, but only among entries with an equal context key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.tokens import content_text

# Request fields that change the answer; everything else (user, metadata, stream options, ...) does not.
SHAPING_FIELDS = (
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "seed", "stop",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls",
    "response_format", "reasoning_effort", "modalities",
)  # fmt: skip
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class CacheKeys:
    namespace: str
    context: str
    exact: str
    # The last user turn as the semantic layer will embed it.
    question: str


def cache_keys(body: Mapping[str, Any], namespace: str, route: str) -> CacheKeys | None:
    """None when the request has no user turn to key on."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    question = content_text(last.get("content"))
    context = {
        "route": route,
        "earlier": messages[:-1],
        # A last turn with images or audio is context too: the text alone does not say what was asked.
        "parts": [p for p in last.get("content") or [] if isinstance(p, dict) and p.get("type") != "text"]
        if isinstance(last.get("content"), list)
        else [],
        **{name: body[name] for name in SHAPING_FIELDS if name in body},
    }
    context_key = _digest(namespace, orjson.dumps(context, option=orjson.OPT_SORT_KEYS))
    exact_key = _digest(context_key, normalise(question).encode())
    return CacheKeys(namespace, context_key, exact_key, question)


# What shapes an embeddings answer besides its inputs.
EMBEDDING_FIELDS = ("encoding_format", "dimensions")


def embedding_cache_keys(body: Mapping[str, Any], namespace: str, route: str) -> CacheKeys:
    """An embeddings request's keys: the same inputs (exactly: no normalising), encoding and dimensions
    on the same route."""
    context = {
        "route": route,
        "api": "embeddings",
        **{name: body[name] for name in EMBEDDING_FIELDS if name in body},
    }
    context_key = _digest(namespace, orjson.dumps(context, option=orjson.OPT_SORT_KEYS))
    exact_key = _digest(context_key, orjson.dumps(body["input"]))
    return CacheKeys(namespace, context_key, exact_key, "")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def _digest(prefix: str, data: bytes) -> str:
    return hashlib.sha256(prefix.encode() + b"\0" + data).hexdigest()
