"""The answer step: from the cache when the rule caches and it holds the answer (at $0), else from the
route's upstreams in order, with retries and fallbacks (`RouteExecutor`); a fresh answer is kept for the
next time, a shadow copy sent where the rule asks. Its `Answer` and `Attempt` are its own."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from gateway.cache.answer_cache import WITHHELD_MEMO, AnswerCache, CacheHit
from gateway.cache.capture import KeepingStream
from gateway.cache.keys import CacheKeys
from gateway.cache.replay import ReplayStream
from gateway.cache.store import CachedAnswer
from gateway.capacity.gate import Slot
from gateway.path.decide import EMBEDDINGS, Routing
from gateway.policy.schema import Overrides
from gateway.providers.base import Provider
from gateway.routing.catalog import Target
from gateway.routing.executor import Outcome, RouteExecutor
from gateway.routing.shadow import Labelling, PrimaryAnswer, ShadowCopies
from gateway.telemetry.telemetry import Telemetry
from gateway.wire import Caller, ChatRequest, ChatStream, Completion, Deadline, Usage


class BatchApis(Protocol):
    """Upstreams' own Batch APIs (`deferred/upstream_batches.py`): batch lines routed to a deployment
    that has one are answered there, at its batch price."""

    def serves(self, deployment: str, request: ChatRequest) -> bool: ...

    async def answer(self, deployment: str, request: ChatRequest) -> Completion: ...


class CacheAudits(Protocol):
    """Re-asks the upstream for a share of semantic hits, to measure the cache's live precision."""

    def maybe_check(
        self,
        request: ChatRequest,
        target: Target,
        cached: CachedAnswer,
        share: float,
        entry: tuple[str, float] | None = None,
    ) -> None:
        """Maybe re-ask the route and compare; `entry` (key, score) is marked when the hit was wrong."""
        ...

    def suspended(self, route: str, max_error: float) -> str | None:
        """Why a rule promising `max_error` must not serve semantic hits on the route now (None: it may)."""
        ...

    def observe(self, route: str, cached: CachedAnswer, fresh: Completion) -> None:
        """A withheld hit's answer against the fresh one the client got."""
        ...


@dataclass(slots=True)
class Answer:
    route: str
    deployment: str
    rule: str
    fallback: str | None
    upstream_seconds: float
    completion: Completion | None = None
    stream: ChatStream | None = None
    # miss / exact / semantic when the rule caches, None when the cache was not asked.
    cache: str | None = None
    # The entry's key (for invalidation), when the cache was asked.
    cache_key: str | None = None
    # Semantic hits: the questions' cosine and the verifier's probability that they mean the same.
    similarity: float | None = None
    verified: float | None = None
    # Seconds spent waiting for a place at deployments with a capacity limit.
    queued_seconds: float = 0.0
    # The answering deployment's place, held while a stream runs; released when the request is recorded.
    slot: Slot | None = None
    # Answered by the deployment's own Batch API: priced at its batch price.
    batch: bool = False
    # A labelled shadow copy waiting for this answer's text (`routing/shadow.py`).
    shadow: PrimaryAnswer | None = None
    # Why a semantic hit was not served (the rule's live precision is under its bound).
    withheld: str | None = None

    @property
    def native(self) -> bool:
        """The upstream answered in the inbound API's own format (passed through, not translated)."""
        if self.completion is not None:
            return self.completion.native
        return self.stream is not None and self.stream.native


@dataclass(slots=True)
class Attempt:
    """The deployment being called right now: what a call cut off by the client is paid for."""

    in_flight: str | None = None


class Answering:
    def __init__(
        self,
        executor: RouteExecutor,
        cache: AnswerCache,
        audit: CacheAudits,
        shadows: ShadowCopies,
        telemetry: Telemetry,
        request_timeout: float,
        batch_apis: BatchApis | None = None,
    ) -> None:
        self.cache = cache
        self._batch_apis = batch_apis
        self._executor = executor
        self._audit = audit
        self._shadows = shadows
        self._telemetry = telemetry
        self._request_timeout = request_timeout

    def cache_keys(self, request: ChatRequest, caller: Caller, routing: Routing) -> CacheKeys | None:
        """The request's cache keys when its rule (or the policy, for embeddings) caches and it may be
        cached, else None."""
        directive = routing.cache
        if directive is None:
            return None
        if request.api == EMBEDDINGS:
            return self.cache.embedding_keys(
                request.body, directive, caller.team, routing.target.route, caller.no_cache
            )
        return self.cache.keys(request.body, directive, caller.team, routing.target.route, caller.no_cache)

    async def from_cache(self, request: ChatRequest, routing: Routing, keys: CacheKeys) -> Answer | None:
        """The cached answer, as a body or replayed as a stream (it costs nothing); None on a miss."""
        directive = routing.cache
        assert directive is not None  # keys come only with a cache directive
        memo = routing.facts.memo if routing.facts is not None else {}
        hit = await self.cache.lookup(keys, directive, memo)
        self._telemetry.count_cache_lookup(hit.kind if hit is not None else "miss", routing.target.route)
        if hit is None:
            return None
        if hit.kind == "semantic":
            why = (
                self._audit.suspended(routing.target.route, directive.max_error)
                if directive.max_error
                else None
            )
            if why is not None:
                memo[WITHHELD_MEMO] = (hit.answer, why)  # answered upstream; the two compared after
                return None
            entry = (hit.key, hit.score) if hit.score is not None else None
            self._audit.maybe_check(request, routing.target, hit.answer, directive.verify_sample, entry)
        return _cached_answer(request, routing, hit)

    async def from_upstream(
        self, request: ChatRequest, routing: Routing, attempt: Attempt, keys: CacheKeys | None
    ) -> Answer:
        decision, primary = routing.decision, None
        if decision is not None and decision.shadow is not None:
            primary = self._send_shadow(request, routing, decision.rule, decision.shadow)
        try:
            answer = await self._call(request, routing, attempt)
        except BaseException:
            if primary is not None:
                primary.answered(None)  # the copy has nothing to compare with
            raise
        answer.shadow = primary
        withheld = routing.facts.memo.pop(WITHHELD_MEMO, None) if routing.facts is not None else None
        if withheld is not None:
            cached, answer.withheld = withheld
            if answer.completion is not None:
                self._audit.observe(routing.target.route, cached, answer.completion)
        if keys is not None:
            answer.cache, answer.cache_key = "miss", keys.exact
            await self._keep(answer, keys, routing)
        return answer

    def batched(self, request: ChatRequest, routing: Routing) -> str | None:
        """The deployment whose own Batch API will answer this batch line; None: it is called."""
        candidates, apis = routing.target.candidates, self._batch_apis
        if request.deferred is None or apis is None or not candidates:
            return None
        first = candidates[0].provider.deployment.name
        return first if apis.serves(first, request) else None

    def _send_shadow(
        self, request: ChatRequest, routing: Routing, rule_name: str, route: str
    ) -> PrimaryAnswer | None:
        policy = routing.policy.policy
        rule = next((rule for rule in policy.rules if rule.name == rule_name), None)
        share = rule.shadow_share if rule is not None else 1.0
        labelling = None
        if rule is not None and rule.shadow_labels and routing.facts is not None:
            question = routing.facts.text("last_user")
            labelling = Labelling(routing.facts.team, routing.target.route, rule.shadow_judge, question)
        return self._shadows.send(request, rule_name, route, policy, share=share, labelling=labelling)

    async def _call(self, request: ChatRequest, routing: Routing, attempt: Attempt) -> Answer:
        target, rule, decision = routing.target, routing.rule, routing.decision
        timeout = self._request_timeout
        if decision is not None and decision.overrides is not None:
            request = _with_overrides(request, decision.overrides)
            timeout = min(timeout, decision.overrides.timeout_seconds or timeout)
        batched = self.batched(request, routing)
        if batched is not None and self._batch_apis is not None:
            # Not called now, so not in flight: a line cut off while it waits owes nothing yet.
            completion = await self._batch_apis.answer(batched, request)
            return Answer(
                target.route, batched, rule, None, completion.upstream_seconds, completion=completion,
                batch=True,
            )  # fmt: skip
        deadline = Deadline.after(timeout)

        def calling(provider: Provider) -> Provider:
            attempt.in_flight = provider.deployment.name
            return provider

        executor, priority = self._executor, routing.priority
        if request.stream:
            streamed: Outcome[ChatStream] = await executor.run(
                target, lambda provider: calling(provider).open_stream(request, deadline), deadline,
                priority=priority, hold=True,
            )  # fmt: skip
            self._observe(streamed, True)
            return Answer(
                streamed.route, streamed.deployment, rule, streamed.fallback, streamed.upstream_seconds,
                stream=streamed.result, queued_seconds=streamed.queued_seconds, slot=streamed.slot,
            )  # fmt: skip
        completed: Outcome[Completion] = await executor.run(
            target, lambda provider: calling(provider).complete(request, deadline), deadline,
            priority=priority,
        )  # fmt: skip
        self._observe(completed, False)
        return Answer(
            completed.route, completed.deployment, rule, completed.fallback, completed.upstream_seconds,
            completion=completed.result, queued_seconds=completed.queued_seconds,
        )  # fmt: skip

    def _observe(self, outcome: Outcome[Any], stream: bool) -> None:
        """How long the answering deployment took to its first byte (a stream's first event, a plain
        answer's whole body), for admission's predictions; answers after retries are left out."""
        if outcome.attempts == 1:
            self._executor.capacity.observe_first_byte(outcome.deployment, stream, outcome.upstream_seconds)

    async def _keep(self, answer: Answer, keys: CacheKeys, routing: Routing) -> None:
        """Keep a fresh answer for the next time; a stream is kept once it has finished."""
        cache = self.cache
        directive = routing.cache
        if directive is None:
            return
        memo: dict[Any, Any] = routing.facts.memo if routing.facts is not None else {}
        route, deployment = answer.route, answer.deployment
        if answer.native:
            return  # the cache keeps the internal (chat) format, which any API's adapter renders
        if answer.completion is not None:
            await cache.remember(keys, directive, answer.completion, route, deployment, memo)
        elif answer.stream is not None:

            async def keep(body: bytes, usage: Usage | None) -> None:
                await cache.remember(keys, directive, Completion(body, usage, 0.0), route, deployment, memo)

            answer.stream = KeepingStream(answer.stream, keep)


def _cached_answer(request: ChatRequest, routing: Routing, hit: CacheHit) -> Answer:
    cached = hit.answer
    answer = Answer(
        routing.target.route, cached.deployment, routing.rule, None, 0.0, cache=hit.kind, cache_key=hit.key,
        similarity=hit.similarity, verified=hit.verified,
    )  # fmt: skip
    if request.stream:
        answer.stream = ReplayStream(cached.body, request.include_usage)
    else:
        usage = Usage(
            cached.prompt_tokens, cached.completion_tokens, cached.prompt_tokens + cached.completion_tokens
        )
        answer.completion = Completion(cached.body, usage, 0.0)
    return answer


def _with_overrides(request: ChatRequest, overrides: Overrides) -> ChatRequest:
    """Cap the answer's length as the rule says (the client's own lower limit stands)."""
    cap = overrides.max_tokens
    if cap is None:
        return request
    body: dict[str, Any] = dict(request.body)
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = body.get(field)
    if not isinstance(asked, int) or asked > cap:
        body[field] = cap
    return replace(request, body=body)
