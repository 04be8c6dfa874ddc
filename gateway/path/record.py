"""The record step: one request's trace span, the intent spooled before each upstream call, and, once
the answer has been sent (or broke off), its one spend record — spooled before the answer's last byte
leaves — with its metrics and its routing decision. Its `Trail` is its own; the other steps' states are
only read here."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.capacity.priority import INTERACTIVE
from gateway.energy import EnergyBook
from gateway.ledger.ledger import Ledger
from gateway.ledger.record import CacheOutcome, SpendRecord
from gateway.ledger.redact import answer_text, logged_body
from gateway.ledger.spool import Intent
from gateway.path.admit import Admitted
from gateway.path.answer import Answer
from gateway.path.cost import RoutePrices, cached_tokens, reference_deployment
from gateway.path.decide import Routing
from gateway.path.overload import OverloadNote
from gateway.policy.records import DecisionLog, DecisionRecord
from gateway.telemetry.names import SPAN_UPSTREAM, operation_of
from gateway.telemetry.spans import ChildSpan, RequestSpan
from gateway.telemetry.telemetry import Telemetry
from gateway.tokens import TOKENS_PER_MESSAGE, TokenCounter, content_text
from gateway.wire import Caller, ChatRequest, Usage


@dataclass(slots=True)
class Trail:
    """One request's record in the making."""

    request: ChatRequest
    team: str | None
    at: float
    started: float
    span: RequestSpan
    upstream_span: ChildSpan | None = None
    # The id the intent was spooled under: the record written when the request ends takes it too.
    record_id: str | None = None
    record: SpendRecord | None = None


@dataclass(frozen=True, slots=True)
class Ending:
    """How a request ended, as the endpoint saw it."""

    status: int = 200
    error: str | None = None
    usage: Usage | None = None
    ttfb_seconds: float | None = None
    # What was sent, when the policy logs bodies (the answer's text is then kept, redacted).
    sent: bytes | None = None
    # Cut off (the client left): its prompt was sent, and is paid for.
    interrupted: bool = False


class Recording:
    def __init__(
        self,
        prices: RoutePrices,
        tokens: TokenCounter,
        ledger: Ledger,
        telemetry: Telemetry,
        decisions: DecisionLog,
        energy: EnergyBook,
    ) -> None:
        self.ledger = ledger
        self.energy = energy
        self.telemetry = telemetry
        self._prices = prices
        self._tokens = tokens
        self._decisions = decisions
        # Record ids: random per process, then a counter (urandom per record cost ~5 µs).
        self._id_prefix = os.urandom(8).hex() + "-"
        self._ids = itertools.count()

    def begin(self, request: ChatRequest, caller: Caller, started: float) -> Trail:
        span = self.telemetry.start_request(
            request.request_id,
            str(request.body["model"]),
            request.stream,
            traceparent=caller.traceparent,
            operation=operation_of(request.api),
        )
        return Trail(request, caller.team, time.time(), started, span)

    def calling(self, trail: Trail, routing: Routing, admitted: Admitted, deployment: str) -> None:
        """Before the upstream call: its span starts, and what to record should this process die while
        `deployment` is called is spooled: the prompt was sent, so its estimated cost at the
        deployment's price (status 500, `interrupted`). Kept to a few µs: no tokenizer, no record object."""
        trail.upstream_span = trail.span.start_child(SPAN_UPSTREAM)
        self.energy.calling(deployment)
        trail.record_id = _earlier_record(trail.request) or self._new_id()
        request = trail.request
        known = admitted.prompt_tokens
        if known is None:
            known = request.prompt_tokens
        prompt = known if known is not None else _rough_prompt_tokens(request.body)
        policy = routing.policy.policy
        price = self._prices.price(policy, routing.target.route, deployment)
        priced = self._prices.book.deployment(deployment)
        fields = {
            "id": trail.record_id, "request_id": request.request_id, "at": trail.at,
            "team": trail.team, "key_id": admitted.key, "policy": routing.policy.name,
            "route": routing.target.route, "rule": routing.rule, "deployment": deployment,
            "model": priced.model if priced else None, "stream": request.stream, "status": 500,
            "error": "interrupted", "prompt_tokens": prompt, "estimated": True, "api": request.api,
            "cost_usd": prompt * price.input if price is not None else None,
        }  # fmt: skip
        self.ledger.intend(Intent(fields))

    def end(
        self,
        trail: Trail,
        routing: Routing | None,
        admitted: Admitted,
        answer: Answer | None,
        in_flight: str | None,
        ending: Ending,
        overload: OverloadNote | None = None,
    ) -> SpendRecord:
        """Write the request's spend record to the spool, end its span and count its metrics; once."""
        if trail.record is not None:
            return trail.record
        request = trail.request
        usage = ending.usage
        deployment = answer.deployment if answer is not None else None
        if ending.interrupted and usage is None and deployment is None and in_flight is not None:
            deployment = in_flight
            prompt = self._tokens.count_messages(request.body.get("messages") or ())
            usage = Usage(prompt, 0, prompt, estimated=True)
        policy = routing.policy.policy if routing is not None else None
        route = answer.route if answer is not None else (routing.target.route if routing else None)
        cache = _cache_outcome(answer)
        batch = answer is not None and answer.batch
        spend = None
        if deployment is not None or cache != "miss":
            spend = self._prices.spend(policy, route, deployment, usage, cache, batch)
        priced = self._prices.book.deployment(deployment) if deployment else None
        upstream_seconds = answer.upstream_seconds if answer is not None and cache == "miss" else None
        upstream_ms = upstream_seconds * 1000 if upstream_seconds is not None else None
        latency_ms = (time.perf_counter() - trail.started) * 1000
        details = usage.details if usage is not None else {}
        ttfb = ending.ttfb_seconds
        energy = self.energy
        # An answer from the cache used no model: what the reference would have used is all saved.
        energy_wh = energy.wh(deployment, usage) if cache == "miss" else (0.0 if usage else None)
        record = SpendRecord(
            id=trail.record_id or _earlier_record(request) or self._new_id(),
            request_id=request.request_id,
            api=request.api,
            at=trail.at,
            team=trail.team,
            key_id=admitted.key,
            policy=routing.policy.name if routing is not None else None,
            route=route,
            rule=routing.rule if routing is not None else None,
            deployment=deployment,
            model=priced.model if priced is not None else None,
            stream=request.stream,
            status=ending.status,
            error=ending.error,
            cache=cache,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=cached_tokens(usage),
            reasoning_tokens=int(
                (details.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
            ),
            estimated=bool(usage and usage.estimated),
            # Nothing answered, nothing spent; an answer without usage has an unknown cost.
            cost_usd=spend.cost_usd if spend else (0.0 if deployment is None else None),
            reference_usd=spend.reference_usd if spend else None,
            latency_ms=latency_ms,
            ttfb_ms=ttfb * 1000 if ttfb is not None else None,
            upstream_ms=upstream_ms,
            overhead_ms=latency_ms - upstream_ms if upstream_ms is not None else None,
            signals=_signals(routing),
            priority=routing.priority if routing is not None else INTERACTIVE,
            queue_ms=answer.queued_seconds * 1000 if answer is not None else 0.0,
            admission=_admission(overload, deployment if batch else None),
            energy_wh=energy_wh,
            reference_energy_wh=energy.reference_wh(reference_deployment(policy), usage),
        )
        if policy is not None and policy.log_bodies:
            text = answer_text(ending.sent) if ending.sent is not None else None
            record.body = logged_body(request.body.get("messages") or (), text)
        trail.record = record
        self.ledger.record(record)
        if trail.upstream_span is not None:
            trail.upstream_span.end(ending.error if ending.status >= 400 else None)
        trail.span.finish(record)
        self.telemetry.observe(record)
        return record

    def decided(self, trail: Trail, routing: Routing, deployment: str | None, status: int) -> None:
        """The policy's decision, for replay and explain (requests that named their route have none)."""
        decision = routing.decision
        if decision is None:
            return
        latency_ms = (time.perf_counter() - trail.started) * 1000
        self._decisions.add(
            DecisionRecord(
                trail.request.request_id, trail.at, routing.policy.name, trail.team, decision.rule,
                decision.route, deployment, status, latency_ms, decision.signals,
            )
        )  # fmt: skip

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"


def _earlier_record(request: ChatRequest) -> str | None:
    """A batch line's earlier run's record id, when that run was recorded answered (`DeferredLine`)."""
    return request.deferred.record_id if request.deferred is not None else None


def _admission(overload: OverloadNote | None, batch_api: str | None) -> str | None:
    """What admission control did, and whether the answer came from a deployment's own Batch API."""
    notes = [overload.text] if overload is not None else []
    if batch_api is not None:
        notes.append(f"batched: answered by {batch_api}'s Batch API at its batch price")
    return "; ".join(notes) or None


def _cache_outcome(answer: Answer | None) -> CacheOutcome:
    if answer is None:
        return "miss"
    if answer.cache == "exact":
        return "exact"
    return "semantic" if answer.cache == "semantic" else "miss"


def _signals(routing: Routing | None) -> Mapping[str, Any]:
    if routing is None or routing.decision is None:
        return {}
    return routing.decision.signals


def _rough_prompt_tokens(body: Mapping[str, Any]) -> int:
    """About four characters a token: an estimate for the record of an interrupted request, without
    running the tokenizer on every request."""
    messages = body.get("messages") or ()
    characters = sum(len(content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    return characters // 4 + 1 + TOKENS_PER_MESSAGE * len(messages)
