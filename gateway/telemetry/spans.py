"""The spans of one chat request: a root span the pipeline opens and the record closes, and its children.

Both classes here are also their own no-op: when tracing is off `Telemetry.start_request` hands out one
shared `RequestSpan`, so the pipeline calls the same methods either way and pays almost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from gateway.telemetry import names
from gateway.telemetry.record import Attributes, FinishedRequest, error_type, present

# Upstream calls are CLIENT spans (GenAI conventions); every other child is INTERNAL.
_CHILD_KINDS: Final[Mapping[str, SpanKind]] = MappingProxyType({names.SPAN_UPSTREAM: SpanKind.CLIENT})


class ChildSpan:
    """One step of a request (policy, cache, upstream call). This base class is the no-op used when
    tracing is off; with a `with` block it ends itself, otherwise call `end()`."""

    __slots__ = ()

    def set(self, key: str, value: AttributeValue) -> None:
        """Adds an attribute learnt during the step (a cache outcome, the upstream's model)."""

    def end(self, error: str | None = None) -> None:
        """Ends the span, marking it failed with `error` as its error.type; a second call does nothing."""

    def __enter__(self) -> ChildSpan:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end(None if exc_type is None else exc_type.__qualname__)


# Stateless, so one serves every request while tracing is off.
_IDLE_CHILD: Final = ChildSpan()


class _RecordingChildSpan(ChildSpan):
    __slots__ = ("_ended", "_span")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._ended = False

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def end(self, error: str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if error is not None:
            self._span.set_attribute(names.ERROR_TYPE, error)
            self._span.set_status(Status(StatusCode.ERROR, error))
        self._span.end()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and not self._ended:
            self._span.record_exception(exc)
        super().__exit__(exc_type, exc, tb)


class RequestSpan:
    """The root span of one chat request ("gateway.chat", kind SERVER) and the way to its children.

    Children are started with this span as their explicit parent, never the ambient context, because a
    stream's upstream span ends after the handler has returned. This base class is the no-op used when
    tracing is off, so that the pipeline calls the same methods either way at almost no cost.
    """

    __slots__ = ()

    def start_child(self, name: str, attributes: Attributes | None = None) -> ChildSpan:
        """Starts a child span (a name from `names`) that the caller ends, e.g. when a stream finishes."""
        return _IDLE_CHILD

    def child(self, name: str, attributes: Attributes | None = None) -> ChildSpan:
        """As `start_child`, for a `with` block: the span ends with the block, failed if it raised."""
        return self.start_child(name, attributes)

    def finish(self, record: FinishedRequest) -> None:
        """Sets the outcome from the spend record and ends the span; a second call does nothing."""


class RecordingRequestSpan(RequestSpan):
    """A RequestSpan that records: what `Telemetry.start_request` returns when tracing is on."""

    __slots__ = ("_context", "_finished", "_span", "_tracer")

    def __init__(self, tracer: trace.Tracer, parent: Context, attributes: Attributes) -> None:
        self._tracer = tracer
        self._span = tracer.start_span(names.SPAN_REQUEST, parent, SpanKind.SERVER, attributes)
        self._context = trace.set_span_in_context(self._span, parent)
        self._finished = False

    def start_child(self, name: str, attributes: Attributes | None = None) -> ChildSpan:
        kind = _CHILD_KINDS.get(name, SpanKind.INTERNAL)
        return _RecordingChildSpan(self._tracer.start_span(name, self._context, kind, attributes))

    def finish(self, record: FinishedRequest) -> None:
        if self._finished:
            return
        self._finished = True
        span = self._span
        if span.is_recording():
            error = error_type(record)
            span.set_attributes(_span_attributes(record, error))
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
        span.end()


def _span_attributes(record: FinishedRequest, error: str | None) -> dict[str, AttributeValue]:
    return present(
        {
            names.GEN_AI_RESPONSE_MODEL: record.model,
            names.GEN_AI_USAGE_INPUT_TOKENS: record.prompt_tokens,
            names.GEN_AI_USAGE_OUTPUT_TOKENS: record.completion_tokens,
            names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: record.cached_tokens or None,
            names.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: record.reasoning_tokens or None,
            names.GATEWAY_POLICY: record.policy,
            names.GATEWAY_ROUTE: record.route,
            names.GATEWAY_RULE: record.rule,
            names.GATEWAY_TEAM: record.team,
            names.GATEWAY_DEPLOYMENT: record.deployment,
            names.GATEWAY_CACHE: record.cache,
            names.GATEWAY_COST_USD: record.cost_usd,
            names.GATEWAY_SAVED_USD: record.saved_usd,
            names.GATEWAY_ESTIMATED_USAGE: record.estimated,
            names.HTTP_RESPONSE_STATUS_CODE: record.status,
            names.ERROR_TYPE: error,
        }
    )
