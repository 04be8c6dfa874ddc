"""One request from start to end, as named steps over one internal request (`wire.ChatRequest`):

    authenticate (the endpoint) → decide → admit (rates) → cache → overload → admit (budget) → answer → record

Each step owns its own state (`Routing`, `Admitted`, `Answer`/`Attempt`, `Trail`) and no record is
written by two of them. Any inbound API runs through here the same way: its adapter parses the body
into a `ChatRequest` at the edge and renders the `Answer` back.

`answer` returns an `Exchange` once the upstream has answered (for a stream, once its first event has
come); the endpoint sends it and calls `finish` when the answer is complete — for a stream, before its
end leaves — which records it and settles its budget reservation off the response path.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError, LoadShed
from gateway.ledger.record import SpendRecord
from gateway.ledger.redact import answer_text
from gateway.path.admit import Admission, Admitted
from gateway.path.answer import Answer, Answering, Attempt
from gateway.path.decide import Decide, Routing
from gateway.path.overload import Overload, OverloadNote
from gateway.path.record import Ending, Recording, Trail
from gateway.policy.store import PolicyStore
from gateway.providers.stream_usage import usage_of_cut_stream
from gateway.telemetry.names import SPAN_POLICY
from gateway.tokens import TokenCounter
from gateway.wire import Caller, ChatRequest

# nginx's status for a request whose client closed the connection before the answer was complete.
CLIENT_CLOSED = 499


@dataclass(slots=True)
class Exchange:
    """An answered request on its way to the client: the answer, and what finishing it needs."""

    answer: Answer
    routing: Routing
    admitted: Admitted
    trail: Trail
    # What admission control did (queued, deferred, downgraded), when the route was over its objective.
    overload: OverloadNote | None = None

    @property
    def log_bodies(self) -> bool:
        """Whether the policy wants the answer's text in the ledger (streams then keep their bytes)."""
        return self.routing.policy.policy.log_bodies


class RequestPath:
    def __init__(
        self,
        policies: PolicyStore,
        decide: Decide,
        admission: Admission,
        overload: Overload,
        answering: Answering,
        recording: Recording,
        tokens: TokenCounter,
    ) -> None:
        self.policies = policies
        self.decide = decide
        self.admission = admission
        self.overload = overload
        self.answering = answering
        self.recording = recording
        self._tokens = tokens

    async def answer(self, request: ChatRequest, caller: Caller, started: float | None = None) -> Exchange:
        """Decide, admit and answer; raises the GatewayError the client is to get (recorded)."""
        trail = self.recording.begin(request, caller, started or time.perf_counter())
        admitted = Admitted(request, caller.team, caller.key, trail.at)
        attempt = Attempt()
        routing: Routing | None = None
        answer: Answer | None = None
        note: OverloadNote | None = None
        status = 200
        try:
            await self.admission.admit_rates(admitted, self.policies.current.policy)
            with trail.span.child(SPAN_POLICY):
                routing = await self.decide.route(request, caller)
            keys = self.answering.cache_keys(request, caller, routing)
            if keys is not None:
                answer = await self.answering.from_cache(request, routing, keys)
                if answer is not None:
                    return Exchange(answer, routing, admitted, trail)
            routing, note = await self.overload.admit(routing, request)
            if note is not None and note.action == "shed":
                raise LoadShed(f"Shed under load: {note.reason}.", retry_after=note.retry_after)
            reroute = await self.admission.reserve(admitted, routing)
            if reroute is not None:
                routing = self.decide.reroute(routing, reroute.route, reroute.budget, request)
            if routing.target.candidates and self.answering.batched(request, routing) is None:
                first = routing.target.candidates[0].provider.deployment.name
                self.recording.calling(trail, routing, admitted, first)
            answer = await self.answering.from_upstream(request, routing, attempt, keys)
            return Exchange(answer, routing, admitted, trail, note)
        except GatewayError as error:
            # The client is told which rule and route failed it, as on success.
            if routing is not None:
                error.rule, error.route = routing.rule, routing.target.route
            status = error.status
            ending = Ending(status=status, error=error.code or error.error_type)
            self._end(trail, routing, admitted, None, attempt, ending, note)
            raise
        except (asyncio.CancelledError, Exception) as failure:
            # The client left during the call (cancelled), or a bug: still recorded, and the budget
            # reservation released, or it would stay held until the period ends.
            status = CLIENT_CLOSED if isinstance(failure, asyncio.CancelledError) else 500
            reason = "client_disconnected" if status == CLIENT_CLOSED else "internal_error"
            ending = Ending(status=status, error=reason, interrupted=True)
            self._end(trail, routing, admitted, None, attempt, ending, note)
            raise
        finally:
            if routing is not None:
                # The deployment that answered this request: none for an answer from the cache.
                called = answer.deployment if answer is not None and answer.cache in (None, "miss") else None
                self.recording.decided(trail, routing, called, status)

    async def explain(self, request: ChatRequest, caller: Caller) -> dict[str, Any]:
        """What the request path would do with this request, and why, calling no model: the routing
        decision with every rule and signal, its priority, and how admission control sees it now."""
        routing = await self.decide.route(request, caller, explain=True)
        explained = self.decide.explained(routing)
        explained["admission"] = await self.overload.explain(routing, request)
        return explained

    def finish(
        self,
        exchange: Exchange,
        *,
        status: int = 200,
        error: str | None = None,
        ttfb_seconds: float | None = None,
        streamed: list[bytes] | None = None,
    ) -> SpendRecord:
        """Record an answer that was sent (or broke off) and settle its budget reservation, once;
        `streamed` is what a stream sent: a stream cut short (no usage from the upstream) is paid for
        the tokens counted in it, and the text is kept when the policy logs bodies."""
        trail, answer = exchange.trail, exchange.answer
        if trail.record is not None:
            return trail.record
        usage, sent = None, b"".join(streamed) if streamed else None
        if answer.completion is not None:
            usage, sent = answer.completion.usage, answer.completion.body
        if answer.stream is not None:
            usage = answer.stream.usage
            if usage is None and sent is not None:
                usage = usage_of_cut_stream(self._tokens, trail.request.body, sent)
        ending = Ending(status=status, error=error, usage=usage, ttfb_seconds=ttfb_seconds, sent=sent)
        record = self._end(
            trail, exchange.routing, exchange.admitted, answer, None, ending, exchange.overload
        )
        if answer.shadow is not None:
            answer.shadow.answered(answer_text(sent) if sent is not None and status < 400 else None)
        return record

    def _end(
        self,
        trail: Trail,
        routing: Routing | None,
        admitted: Admitted,
        answer: Answer | None,
        attempt: Attempt | None,
        ending: Ending,
        overload: OverloadNote | None,
    ) -> SpendRecord:
        if answer is not None and answer.slot is not None:
            answer.slot.release()  # a stream's place, held until it ended
        in_flight = attempt.in_flight if attempt is not None else None
        record = self.recording.end(trail, routing, admitted, answer, in_flight, ending, overload)
        deferred = trail.request.deferred
        # A batch line recorded by an earlier run (see `wire.DeferredLine.record_id`) was counted then.
        charged = 0.0 if deferred is not None and deferred.record_id is not None else record.cost_usd
        self.admission.settle_later(admitted, charged, record.completion_tokens)
        return record
