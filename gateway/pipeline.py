"""One chat request from start to end: decide where it goes (the policy, for `model: auto`), apply the
rule's overrides, then call upstreams in order.

Accounting wraps the call: rate limits and a budget reservation before it (`Accountant`), and the
request's `Ticket` travels with the answer so the HTTP layer can record and settle it once the answer
has been sent (for a stream, at its end). The HTTP layer only parses, calls `ChatPipeline.answer`,
writes what comes back and calls `finish`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

from gateway.accountant import Accountant, Reroute, Ticket
from gateway.pricing import Spend
from gateway.cache.answer_cache import AnswerCache, CacheHit
from gateway.cache.audit import CacheAudit
from gateway.cache.capture import KeepingStream
from gateway.cache.keys import CacheKeys
from gateway.cache.replay import ReplayStream
from gateway.errors import BudgetExceeded, GatewayError
from gateway.policy.compile import CompiledPolicy
from gateway.policy.decide import Decision, decide
from gateway.policy.records import DecisionLog, DecisionRecord
from gateway.policy.schema import Overrides, Policy
from gateway.policy.signals import RequestFacts
from gateway.policy.store import PolicyStore
from gateway.providers.base import ChatRequest, ChatStream, Completion, Deadline, Provider, Usage
from gateway.providers.stream_usage import usage_of_cut_stream
from gateway.routing.catalog import AUTO, Catalog, Target
from gateway.routing.executor import Outcome, RouteExecutor
from gateway.routing.shadow import ShadowCopies
from gateway.telemetry.names import SPAN_POLICY, SPAN_UPSTREAM

# nginx's status for a request whose client closed the connection before the answer was complete.
CLIENT_CLOSED = 499
# The rule reported for requests that named a route or deployment themselves.
EXPLICIT_RULE = "explicit"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request, as far as the gateway knows."""

    team: str | None = None
    key: str | None = None
    role: str | None = None
    tags: tuple[str, ...] = ()
    # The client's W3C `traceparent`: the gateway's spans join the client's trace.
    traceparent: str | None = None
    # `Cache-Control: no-cache`: answer from the upstream, whatever the policy says.
    no_cache: bool = False


@dataclass(frozen=True, slots=True)
class Routing:
    target: Target
    rule: str
    decision: Decision | None
    policy: CompiledPolicy
    # What the policy looked at; its memo (the question's embedding) is shared with the cache.
    facts: RequestFacts | None = None


@dataclass(slots=True)
class Answer:
    route: str
    deployment: str
    rule: str
    fallback: str | None
    upstream_seconds: float
    completion: Completion | None = None
    stream: ChatStream | None = None
    ticket: Ticket | None = None
    # miss / exact / semantic when the rule caches, None when the cache was not asked.
    cache: str | None = None
    # The entry's key (for invalidation), when the cache was asked.
    cache_key: str | None = None
    # Semantic hits: the questions' cosine and the verifier's probability that they mean the same.
    similarity: float | None = None
    verified: float | None = None

    @property
    def spend(self) -> Spend | None:
        """Known for answers whose usage came with them (not streams: their usage comes at the end)."""
        return self.ticket.spend if self.ticket is not None else None

    @property
    def log_bodies(self) -> bool:
        """Whether the policy wants the answer's text in the ledger (streams then keep their bytes)."""
        policy = self.ticket.policy if self.ticket is not None else None
        return policy is not None and policy.log_bodies


class ChatPipeline:
    def __init__(
        self,
        catalog: Catalog,
        policies: PolicyStore,
        executor: RouteExecutor,
        request_timeout: float,
        records: DecisionLog | None = None,
        shadows: ShadowCopies | None = None,
        accountant: Accountant | None = None,
        cache: AnswerCache | None = None,
        audit: CacheAudit | None = None,
    ) -> None:
        self.accountant = accountant
        self.cache = cache
        self.audit = audit
        self.catalog = catalog
        self.policies = policies
        self._records = records
        self._shadows = shadows
        self._executor = executor
        self._request_timeout = request_timeout

    def facts(self, request: ChatRequest, caller: Caller, policy: Policy) -> RequestFacts:
        accountant = self.accountant
        return RequestFacts(
            body=request.body,
            team=caller.team,
            key=caller.key,
            role=caller.role,
            tags=caller.tags,
            request_id=request.request_id,
            route_healthy=lambda route: self.catalog.route_healthy(policy, route),
            budget_spent=(
                None
                if accountant is None
                else lambda: accountant.budget_spent(policy, caller.team, caller.key)
            ),
        )

    def route(self, request: ChatRequest, caller: Caller, *, explain: bool = False) -> Routing:
        """Where the request goes, and which rule said so; calls no model."""
        compiled = self.policies.current
        if request.body["model"] != AUTO:
            target = self.catalog.resolve(request.body["model"], compiled.policy, request.request_id)
            return Routing(target, EXPLICIT_RULE, None, compiled)
        facts = self.facts(request, caller, compiled.policy)
        decision = decide(compiled, facts, explain=explain)
        target = self.catalog.for_decision(decision, compiled.policy, request.request_id)
        return Routing(target, decision.rule, decision, compiled, facts)

    def explain(self, request: ChatRequest, caller: Caller) -> dict[str, Any]:
        """What `answer` would do with this request, and why, without calling any model: the same
        routing code, with every rule and signal evaluated."""
        routing = self.route(request, caller, explain=True)
        target = routing.target
        if routing.decision is not None:
            explained = routing.decision.as_json()
        else:
            explained = {"rule": EXPLICIT_RULE, "route": target.route}
        explained["policy"] = routing.policy.name
        explained["candidates"] = [
            {
                "route": candidate.route,
                "deployment": candidate.provider.deployment.name,
                "usable": self.catalog.deployment_usable(candidate.provider.deployment.name),
            }
            for candidate in target.candidates
        ]
        return explained

    async def answer(
        self, request: ChatRequest, caller: Caller = Caller(), started: float | None = None
    ) -> Answer:
        ticket = Ticket(request, caller.team, caller.key, time.time(), started or time.perf_counter())
        accountant = self.accountant
        if accountant is not None and accountant.telemetry is not None:
            ticket.span = accountant.telemetry.start_request(
                request.request_id, str(request.body["model"]), request.stream, traceparent=caller.traceparent
            )
        routing: Routing | None = None
        status, deployment = 200, None
        try:
            if accountant is not None:
                await accountant.admit_rates(ticket, self.policies.current.policy)
            if ticket.span is not None:
                with ticket.span.child(SPAN_POLICY):
                    routing = self.route(request, caller)
            else:
                routing = self.route(request, caller)
            _fill(ticket, routing)
            keys = self._cache_keys(request, caller, routing)
            if keys is not None:
                hit = await self._lookup(keys, routing)
                if hit is not None:
                    return self._from_cache(request, routing, ticket, hit)
            if accountant is not None:
                reroute = await self._reserve(ticket, routing)
                if reroute is not None:
                    routing = self._rerouted(routing, reroute, request)
                    _fill(ticket, routing)
            decision = routing.decision
            if decision is not None and decision.shadow is not None and self._shadows is not None:
                self._shadows.send(request, decision.rule, decision.shadow, routing.policy.policy)
            if ticket.span is not None:
                ticket.upstream_span = ticket.span.start_child(SPAN_UPSTREAM)
            if accountant is not None and routing.target.candidates:
                accountant.intend(ticket, routing.target.candidates[0].provider.deployment.name)
            answer = await self._call(request, routing, ticket)
            deployment = answer.deployment
            ticket.route, ticket.deployment = answer.route, answer.deployment
            ticket.upstream_seconds = answer.upstream_seconds
            answer.ticket = ticket
            if keys is not None:
                answer.cache, answer.cache_key = "miss", keys.exact
                await self._keep(answer, keys, routing)
            if accountant is not None and answer.completion is not None:
                ticket.spend = accountant.spend(
                    routing.policy.policy, answer.route, answer.deployment, answer.completion.usage
                )
            return answer
        except GatewayError as error:
            # The client is told which rule and route failed it, as on success.
            if routing is not None:
                error.rule, error.route = routing.rule, routing.target.route
            status = error.status
            if accountant is not None:
                accountant.account(ticket, status=status, error=error.code or error.error_type)
                accountant.settle_later(ticket)
            raise
        except (asyncio.CancelledError, Exception) as failure:
            # The client left during the call (cancelled), or a bug: still recorded, and the budget
            # reservation released, or it would stay held until the period ends.
            status = CLIENT_CLOSED if isinstance(failure, asyncio.CancelledError) else 500
            if accountant is not None:
                reason = "client_disconnected" if status == CLIENT_CLOSED else "internal_error"
                accountant.account(ticket, status=status, error=reason, interrupted=True)
                accountant.settle_later(ticket)
            raise
        finally:
            if routing is not None and routing.decision is not None and self._records is not None:
                decision, latency_ms = routing.decision, (time.perf_counter() - ticket.started) * 1000
                self._records.add(
                    DecisionRecord(
                        request.request_id, ticket.at, routing.policy.name, caller.team, decision.rule,
                        decision.route, deployment, status, latency_ms, decision.signals,
                    )
                )  # fmt: skip

    def _cache_keys(self, request: ChatRequest, caller: Caller, routing: Routing) -> CacheKeys | None:
        if self.cache is None or routing.decision is None:
            return None
        directive = routing.decision.cache
        return self.cache.keys(request.body, directive, caller.team, routing.target.route, caller.no_cache)

    async def _lookup(self, keys: CacheKeys, routing: Routing) -> CacheHit | None:
        assert self.cache is not None and routing.decision is not None and routing.decision.cache is not None
        memo = routing.facts.memo if routing.facts is not None else {}
        hit = await self.cache.lookup(keys, routing.decision.cache, memo)
        telemetry = self.accountant.telemetry if self.accountant is not None else None
        if telemetry is not None:
            telemetry.count_cache_lookup(hit.kind if hit is not None else "miss", routing.target.route)
        return hit

    def _from_cache(self, request: ChatRequest, routing: Routing, ticket: Ticket, hit: CacheHit) -> Answer:
        """The cached answer, as a body or replayed as a stream; it costs nothing."""
        cached = hit.answer
        ticket.cache = hit.kind
        ticket.route, ticket.deployment = routing.target.route, cached.deployment
        usage = Usage(
            cached.prompt_tokens, cached.completion_tokens, cached.prompt_tokens + cached.completion_tokens
        )
        answer = Answer(
            routing.target.route, cached.deployment, routing.rule, None, 0.0, cache=hit.kind, ticket=ticket,
            cache_key=hit.key, similarity=hit.similarity, verified=hit.verified,
        )  # fmt: skip
        if request.stream:
            answer.stream = ReplayStream(cached.body, request.include_usage)
        else:
            answer.completion = Completion(cached.body, usage, 0.0)
            if self.accountant is not None:
                ticket.spend = self.accountant.spend(
                    routing.policy.policy, routing.target.route, cached.deployment, usage, hit.kind
                )
        directive = routing.decision.cache if routing.decision is not None else None
        if hit.kind == "semantic" and self.audit is not None and directive is not None:
            self.audit.maybe_check(request, routing.target, cached, directive.verify_sample)
        return answer

    async def _keep(self, answer: Answer, keys: CacheKeys, routing: Routing) -> None:
        """Keep a fresh answer for the next time; a stream is kept once it has finished."""
        cache = self.cache
        directive = routing.decision.cache if routing.decision is not None else None
        if cache is None or directive is None:
            return
        memo = routing.facts.memo if routing.facts is not None else {}
        route, deployment = answer.route, answer.deployment
        if answer.completion is not None:
            await cache.remember(keys, directive, answer.completion, route, deployment, memo)
        elif answer.stream is not None:

            async def keep(body: bytes, usage: Usage | None) -> None:
                await cache.remember(keys, directive, Completion(body, usage, 0.0), route, deployment, memo)

            answer.stream = KeepingStream(answer.stream, keep)

    async def _reserve(self, ticket: Ticket, routing: Routing) -> Reroute | None:
        accountant = self.accountant
        assert accountant is not None
        policy = routing.policy.policy
        prices, longest = [], None
        for candidate in routing.target.candidates:
            name = candidate.provider.deployment.name
            prices.append(accountant.spend_price(policy, candidate.route, name))
            longest = max(longest or 0, accountant.prices.max_output_of(name) or 0) or None
        return await accountant.reserve(ticket, policy, prices, longest)

    def _rerouted(self, routing: Routing, reroute: Reroute, request: ChatRequest) -> Routing:
        """The policy's zero-cost route for a caller whose budget is spent, if it really is free."""
        policy = routing.policy.policy
        target = self.catalog.resolve(reroute.route, policy, request.request_id)
        accountant = self.accountant
        assert accountant is not None
        for candidate in target.candidates:
            price = accountant.spend_price(policy, candidate.route, candidate.provider.deployment.name)
            if price is None or price.input or price.output:
                raise BudgetExceeded(
                    f"Budget exhausted: the {reroute.budget} is used up, and route '{reroute.route}' that "
                    "the policy names for this case is not free."
                )
        return Routing(target, f"{routing.rule} (budget exhausted)", routing.decision, routing.policy)

    def finish(
        self,
        answer: Answer,
        *,
        status: int = 200,
        error: str | None = None,
        ttfb_seconds: float | None = None,
        streamed: list[bytes] | None = None,
    ) -> None:
        """Record an answer that was sent (or broke off) and settle its budget reservation, once;
        `streamed` is what a stream sent: a stream cut short (no usage from the upstream) is paid for
        the tokens counted in it, and the text is kept when the policy logs bodies."""
        if self.accountant is None or answer.ticket is None or answer.ticket.record is not None:
            return
        usage, sent = None, b"".join(streamed) if streamed else None
        if answer.completion is not None:
            usage, sent = answer.completion.usage, answer.completion.body
        if answer.stream is not None:
            usage = answer.stream.usage
            if usage is None and sent is not None:
                usage = usage_of_cut_stream(self.accountant.tokens, answer.ticket.request.body, sent)
        self.accountant.account(
            answer.ticket, status=status, usage=usage, error=error, ttfb_seconds=ttfb_seconds, answer=sent
        )
        self.accountant.settle_later(answer.ticket)

    async def _call(self, request: ChatRequest, routing: Routing, ticket: Ticket) -> Answer:
        target, rule, decision = routing.target, routing.rule, routing.decision
        timeout = self._request_timeout
        if decision is not None and decision.overrides is not None:
            request = _with_overrides(request, decision.overrides)
            timeout = min(timeout, decision.overrides.timeout_seconds or timeout)
        deadline = Deadline.after(timeout)

        def calling(provider: Provider) -> Provider:
            ticket.in_flight = provider.deployment.name  # what a cut-off call is paid for
            return provider

        if request.stream:
            streamed: Outcome[ChatStream] = await self._executor.run(
                target, lambda provider: calling(provider).open_stream(request, deadline), deadline
            )
            return Answer(
                streamed.route, streamed.deployment, rule, streamed.fallback, streamed.upstream_seconds,
                stream=streamed.result,
            )  # fmt: skip
        completed: Outcome[Completion] = await self._executor.run(
            target, lambda provider: calling(provider).complete(request, deadline), deadline
        )
        return Answer(
            completed.route, completed.deployment, rule, completed.fallback, completed.upstream_seconds,
            completion=completed.result,
        )  # fmt: skip


def _fill(ticket: Ticket, routing: Routing) -> None:
    ticket.policy, ticket.policy_name = routing.policy.policy, routing.policy.name
    ticket.rule, ticket.route = routing.rule, routing.target.route
    if routing.decision is not None:
        ticket.signals = routing.decision.signals


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
