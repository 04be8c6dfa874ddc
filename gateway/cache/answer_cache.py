"""The pipeline's cache step: which requests may be answered from the cache, under
which keys, and which answers may be kept.

Only what a policy rule marks cacheable is considered, only deterministic requests (temperature 0,
unless the rule allows any), and never for a client that sent `Cache-Control: no-cache`. Only whole,
plain answers are kept: no errors, no answers cut at `max_tokens` and no tool calls unless the rule
allows them. Every entry lives in its tenant's namespace (`team:NAME`), or in a shared one the
rule names (`shared:NAME`): one team never receives another team's answer.

Two layers: the exact key (the normalised request), then, when the rule sets `similarity`, the
semantic layer: the nearest cached questions with the same context key (`SemanticIndex`), each
checked by the verifier before it counts as a hit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.cache.keys import CacheKeys, cache_keys
from gateway.cache.semantic_index import Vectors
from gateway.cache.store import CachedAnswer, CacheStore
from gateway.cache.verifier import PairScorer
from gateway.policy.schema import CacheDirective
from gateway.policy.signals import QUESTION_MEMO, TextEmbedder
from gateway.providers.base import Completion

DEFAULT_TTL_SECONDS = 3600
# The nearest cached questions the verifier reads, at most (~3 ms each on this machine's CPU): the right
# one is nearly always the nearest, and this bounds what a lookup can cost.
VERIFIED_CANDIDATES = 2


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


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: CachedAnswer
    kind: Literal["exact", "semantic"]
    # The entry's exact key (for invalidation).
    key: str
    # Semantic hits: the questions' cosine and the verifier's probability that they mean the same.
    similarity: float | None = None
    verified: float | None = None


class AnswerCache:
    """Exact lookups by key; semantic lookups by the last user turn's embedding (shared with the
    policy's semantic signals through the request's memo), verified before they count."""

    def __init__(
        self, store: CacheStore, embedder: TextEmbedder | None = None, verifier: PairScorer | None = None
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.verifier = verifier

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

    def question_vector(self, keys: CacheKeys, memo: dict[Any, Any]) -> Vectors | None:
        """The last user turn's embedding, computed at most once per request."""
        if self.embedder is None:
            return None
        if QUESTION_MEMO not in memo:
            memo[QUESTION_MEMO] = self.embedder.embed([keys.question])[0]
        vector: Vectors = memo[QUESTION_MEMO]
        return vector

    async def lookup(
        self, keys: CacheKeys, directive: CacheDirective, memo: dict[Any, Any]
    ) -> CacheHit | None:
        exact = await self.store.get(keys.namespace, keys.exact)
        if exact is not None:
            return CacheHit(exact, "exact", keys.exact)
        if directive.similarity is None or self.verifier is None:
            return None
        vector = self.question_vector(keys, memo)
        if vector is None:
            return None
        for neighbour in self.store.nearest(keys.namespace, keys.context, vector, VERIFIED_CANDIDATES):
            found = await self.store.get(keys.namespace, neighbour.key)
            if found is None:
                continue
            verified = self.verifier.score(keys.question, found.question)
            if verified >= directive.similarity:
                return CacheHit(found, "semantic", neighbour.key, neighbour.cosine, verified)
        return None

    async def remember(
        self,
        keys: CacheKeys,
        directive: CacheDirective,
        completion: Completion,
        route: str,
        deployment: str,
        memo: dict[Any, Any],
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
            context=keys.context,
            question=keys.question,
        )
        vector = self.question_vector(keys, memo) if directive.similarity is not None else None
        await self.store.put(keys.namespace, keys.exact, answer, vector)
        return True
