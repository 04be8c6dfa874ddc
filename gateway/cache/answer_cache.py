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

No model runs on the event loop: the question's embedding comes from the request's memo (the policy's
`prepare_embeddings` put it there) or from the embedder's batcher, and the verifier runs on a worker
thread of its own (`MicroBatcher`). An exact-only answer is written before the answer leaves (one
write, so every replica finds it next); keeping one with its question's vector is off the response
path: `remember` starts a background store and returns; a lookup in the same namespace and context
waits for the stores still under way there (so a replica reads its own writes), `flush` waits for all
of them, `aclose` too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from gateway.cache.keys import CacheKeys, cache_keys, embedding_cache_keys
from gateway.cache.pair_judge import PairJudge
from gateway.cache.store import CachedAnswer, CacheStore
from gateway.cache.verifier import PairScorer
from gateway.embedding.batcher import EmbeddingBatcher, MicroBatcher, ModelBusy, short_text
from gateway.policy.schema import CacheDirective
from gateway.policy.signals import QUESTION_MEMO, TextEmbedder
from gateway.wire import Completion

if TYPE_CHECKING:
    from gateway.cache.semantic_index import Vectors

logger = logging.getLogger("gateway.cache")

DEFAULT_TTL_SECONDS = 3600
# The nearest cached questions the verifier reads, at most (~3 ms each on this machine's CPU): the right
# one is nearly always the nearest, and this bounds what a lookup can cost.
VERIFIED_CANDIDATES = 2
# Verifier scores remembered (a pair scores the same every time: a question asked again in the same
# words as before, and answered by the same entry, skips the cross-encoder).
RECENT_PAIRS = 2048
# Stores under way at most; past it a fresh answer is not kept (counted in `stores_skipped`).
MAX_PENDING_STORES = 1024


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
    if choices is None and isinstance(parsed, dict) and isinstance(parsed.get("data"), list):
        return bool(parsed["data"])  # an embeddings answer
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
    # The score the rule's accept test gave (the judge's probability, or the verifier's).
    score: float | None = None


# A rule's semantic score: (question, cached question, cosine, verifier probability) → score, served at
# or above the rule's threshold.
Scores = Callable[[str, str, float, float], float]
# The request's memo key for a semantic hit found but not served, and why (read by the answer step).
WITHHELD_MEMO = ("cache", "withheld")
# Entries whose hits were found wrong, remembered by this replica (least recently marked go first).
MAX_MARKED_ENTRIES = 100_000


class AnswerCache:
    """Exact lookups by key; semantic lookups by the last user turn's embedding (shared with the
    policy's semantic signals through the request's memo), verified before they count."""

    def __init__(
        self,
        store: CacheStore,
        embedder: TextEmbedder | None = None,
        verifier: PairScorer | None = None,
        *,
        judge: PairJudge | None = None,
        batcher: EmbeddingBatcher | None = None,
        max_pending_stores: int = MAX_PENDING_STORES,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.verifier = verifier
        # Turns a rule's `max_error` into an accept rule over cosine and verifier together.
        self.judge = judge
        # The embedder's batcher (shared with the policy's signals); without one, a worker thread per call.
        self.batcher = batcher
        self._verify: MicroBatcher[tuple[str, str], float] | None = None
        if verifier is not None:
            self._verify = MicroBatcher(
                _scorer(verifier), name="gateway-verifier", recent=RECENT_PAIRS, memorable=_short_pair
            )
        self._max_pending = max_pending_stores
        # Every store under way, and those that are writing, by (namespace, context key).
        self._stores: set[asyncio.Task[None]] = set()
        self._writing: dict[tuple[str, str], set[asyncio.Task[None]]] = {}
        self.stores_skipped = 0
        self.stores_failed = 0
        self.semantic_skipped = 0
        # Entry key → the highest score at which one of its hits was found wrong (`mark_wrong`).
        self._wrong_at: dict[str, float] = {}

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

    def embedding_keys(
        self,
        body: Mapping[str, Any],
        directive: CacheDirective,
        team: str | None,
        route: str,
        no_cache: bool,
    ) -> CacheKeys | None:
        """An embeddings request's keys (exact only), else None."""
        if not directive.enabled or no_cache:
            return None
        return embedding_cache_keys(body, namespace_of(directive, team), route)

    async def question_vector(self, keys: CacheKeys, memo: dict[Any, Any]) -> Vectors | None:
        """The last user turn's embedding, computed at most once per request, never on the loop."""
        if QUESTION_MEMO not in memo:
            if self.batcher is not None:
                memo[QUESTION_MEMO] = await self.batcher.embed(keys.question)
            elif self.embedder is not None:
                vectors = await asyncio.to_thread(self.embedder.embed, [keys.question])
                memo[QUESTION_MEMO] = vectors[0]
            else:
                return None
        vector: Vectors = memo[QUESTION_MEMO]
        return vector

    async def lookup(
        self, keys: CacheKeys, directive: CacheDirective, memo: dict[Any, Any]
    ) -> CacheHit | None:
        if self._writing:
            writing = self._writing.get((keys.namespace, keys.context))
            if writing:
                await asyncio.wait(set(writing))
        exact = await self.store.get(keys.namespace, keys.exact)
        if exact is not None:
            return CacheHit(exact, "exact", keys.exact)
        acceptance = self._acceptance(directive)
        if acceptance is None or self._verify is None:
            return None
        scores, threshold = acceptance
        try:
            vector = await self.question_vector(keys, memo)
        except ModelBusy:  # the embedder is swamped: this request goes without the semantic layer
            self.semantic_skipped += 1
            return None
        if vector is None:
            return None
        for neighbour in self.store.nearest(keys.namespace, keys.context, vector, VERIFIED_CANDIDATES):
            found = await self.store.get(keys.namespace, neighbour.key)
            if found is None:
                continue
            try:
                verified = await self._verify.result((keys.question, found.question))
            except ModelBusy:
                self.semantic_skipped += 1
                return None
            score = scores(keys.question, found.question, neighbour.cosine, verified)
            if score < threshold:
                continue
            wrong_at = self._wrong_at.get(neighbour.key)
            if wrong_at is not None and score <= wrong_at:
                # This entry served a question this close wrongly before: its own bar is higher.
                memo[WITHHELD_MEMO] = (found, f"this entry answered a question scored {wrong_at:.3f} wrongly")
                continue
            return CacheHit(found, "semantic", neighbour.key, neighbour.cosine, verified, score)
        return None

    def mark_wrong(self, key: str, score: float) -> None:
        """A semantic hit on the entry `key`, served at `score`, was found wrong (a live check): the
        entry serves only questions it scores higher from now on — its own threshold, learned from
        evidence as it serves, in the spirit of vCache's per-entry thresholds."""
        marked = self._wrong_at
        marked[key] = max(score, marked.pop(key, score))
        while len(marked) > MAX_MARKED_ENTRIES:
            marked.pop(next(iter(marked)))

    def _acceptance(self, directive: CacheDirective) -> tuple[Scores, float] | None:
        """The rule's semantic score and threshold; None: no semantic hits (a rule without them; a
        `max_error` no threshold keeps, or without the judge's file)."""
        if directive.max_error is not None:
            judge = self.judge
            if judge is None:
                return None
            threshold = judge.threshold_for(directive.max_error)
            if threshold >= 1.0:
                return None
            return judge.probability, threshold
        least = directive.similarity
        if least is None:
            return None
        return (lambda query, cached, cosine, verified: verified), least

    async def remember(
        self,
        keys: CacheKeys,
        directive: CacheDirective,
        completion: Completion,
        route: str,
        deployment: str,
        memo: dict[Any, Any],
    ) -> bool:
        """Whether the answer is to be kept; keeping it happens in the background (see `flush`)."""
        if not keepable(completion, directive):
            return False
        if len(self._stores) >= self._max_pending:
            self.stores_skipped += 1
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
        can_embed = self.batcher is not None or self.embedder is not None
        semantic = can_embed and self._acceptance(directive) is not None
        if not semantic:
            # One write and no index: kept before the answer leaves, so every replica finds it next.
            await self._store(keys, answer, None, True)
            return True
        # Usually the lookup left the vector in the memo: the store starts writing at once, and a lookup
        # in its group waits for it from now on. Otherwise it embeds first and only then writes.
        ready = not semantic or QUESTION_MEMO in memo
        task = asyncio.create_task(self._store(keys, answer, memo if semantic else None, ready))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)
        if ready:
            self._writing_in(keys, task)
        return True

    async def _store(
        self, keys: CacheKeys, answer: CachedAnswer, memo: dict[Any, Any] | None, writing: bool
    ) -> None:
        try:
            vector = None
            if memo is not None:
                vector = await self.question_vector(keys, memo)
            if not writing:
                task = asyncio.current_task()
                assert task is not None
                self._writing_in(keys, task)
            await self.store.put(keys.namespace, keys.exact, answer, vector)
        except Exception as error:  # a store that fails loses one entry, never the request
            self.stores_failed += 1
            logger.warning("cache: keeping an answer in %s failed: %r", keys.namespace, error)

    def _writing_in(self, keys: CacheKeys, task: asyncio.Task[None]) -> None:
        group = (keys.namespace, keys.context)
        self._writing.setdefault(group, set()).add(task)

        def done(finished: asyncio.Task[None]) -> None:
            tasks = self._writing.get(group)
            if tasks is not None:
                tasks.discard(finished)
                if not tasks:
                    del self._writing[group]

        task.add_done_callback(done)

    async def flush(self) -> None:
        """Wait until every answer `remember` accepted so far is in the store."""
        while self._stores:
            await asyncio.wait(set(self._stores))

    async def aclose(self) -> None:
        """Finish the stores under way, then stop the verifier's thread."""
        await self.flush()
        if self._verify is not None:
            await self._verify.aclose()


def _short_pair(pair: tuple[str, str]) -> bool:
    return short_text(pair[0]) and short_text(pair[1])


def _scorer(verifier: PairScorer) -> Callable[[tuple[str, str]], float]:
    def score(pair: tuple[str, str]) -> float:
        return verifier.score(*pair)

    return score
