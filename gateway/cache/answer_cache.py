"""The pipeline's cache step (exact layer): which requests may be answered from the cache, under
which keys, and which answers may be kept.

Only what a policy rule marks cacheable is considered, only deterministic requests (temperature 0,
unless the rule allows any), and never for a client that sent `Cache-Control: no-cache`. Only whole,
plain answers are kept: no errors, no answers cut at `max_tokens` and no tool calls unless the rule
allows them. Every entry lives in its tenant's namespace (`team:NAME`), or in a shared one the
rule names (`shared:NAME`): one team never receives another team's answer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.cache.keys import CacheKeys, cache_keys
from gateway.cache.store import CachedAnswer, CacheStore
from gateway.policy.schema import CacheDirective
from gateway.providers.base import Completion

DEFAULT_TTL_SECONDS = 3600


def namespace_of(directive: CacheDirective, team: str | None) -> str:
    if directive.namespace is not None:
        return f"shared:{directive.namespace}"
    return f"team:{team or ''}"


def cacheable_request(body: Mapping[str, Any], directive: CacheDirective | None, no_cache: bool) -> bool:
    if directive is None or not directive.enabled or no_cache:
        return False
    if directive.any_temperature:
        return True
    # OpenAI's default temperature is 1: a request that says nothing is not deterministic.
    return body.get("temperature") == 0


def keepable(completion: Completion, directive: CacheDirective) -> bool:
    try:
        parsed = orjson.loads(completion.body)
    except orjson.JSONDecodeError:
        return False
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            return False
        finish = choice.get("finish_reason")
        message = choice.get("message") or {}
        if finish == "length" and not directive.truncated:
            return False
        if (
            finish in ("tool_calls", "function_call") or message.get("tool_calls")
        ) and not directive.tool_calls:
            return False
        if finish not in ("stop", "length", "tool_calls", "function_call"):
            return False
    return True


class AnswerCache:
    def __init__(self, store: CacheStore) -> None:
        self.store = store

    def keys(
        self,
        body: Mapping[str, Any],
        directive: CacheDirective | None,
        team: str | None,
        route: str,
        no_cache: bool,
    ) -> CacheKeys | None:
        """The request's keys when it may be answered from (and stored in) the cache, else None."""
        if directive is None or not cacheable_request(body, directive, no_cache):
            return None
        return cache_keys(body, namespace_of(directive, team), route)

    async def lookup(self, keys: CacheKeys) -> CachedAnswer | None:
        return await self.store.get(keys.namespace, keys.exact)

    async def remember(
        self, keys: CacheKeys, directive: CacheDirective, completion: Completion, route: str, deployment: str
    ) -> bool:
        if not keepable(completion, directive):
            return False
        usage = completion.usage
        ttl = directive.ttl_seconds or DEFAULT_TTL_SECONDS
        answer = CachedAnswer(
            body=completion.body,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            route=route,
            deployment=deployment,
            expires_at=time.time() + ttl,
        )
        await self.store.put(keys.namespace, keys.exact, answer)
        return True
