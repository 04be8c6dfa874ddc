"""Traces and metrics for the gateway, owned by the app: one `Telemetry` per app, nothing global.

Each `Telemetry` builds its own TracerProvider, MeterProvider and prometheus_client registry, so two
gateways in one process (as in the tests) never see each other's spans or counts, and nothing outlives
`shutdown()`. Metrics come from finished spend records (`observe`), off the request path; spans are opened
by the pipeline (`start_request`) and closed with the same record (`RequestSpan.finish`).

Counters are summed in `totals.Totals` and read by the SDK only when it collects (a synchronous SDK
measurement costs ~10 µs); histogram measurements are queued by `observe` and fed to the SDK in
batches (`run`, and before every read), off the request path. `python -m gateway.telemetry.bench`
times both paths.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from gateway.telemetry import names
from gateway.telemetry.record import Attributes, FinishedRequest, error_type, present
from gateway.telemetry.spans import RecordingRequestSpan, RequestSpan
from gateway.telemetry.totals import Cell, Totals

RejectionKind = Literal["policy", "budget", "rate_limit"]

# Distinct label sets are few (routes x teams x deployments x statuses); this only stops a bug that makes
# them unbounded from growing the memo without end (the totals themselves are kept, see totals.py).
_MAX_LABEL_SETS: Final = 4096
HISTOGRAM_INTERVAL_S: Final = 0.25


@dataclass(frozen=True, slots=True)
class _Counters:
    """The totals behind every counter, sharing one lock."""

    requests: Totals
    tokens: Totals
    cost: Totals
    savings: Totals
    overspend: Totals
    cache_lookups: Totals
    rejections: Mapping[str, tuple[Totals, str]]


@dataclass(frozen=True, slots=True)
class _Series:
    """Everything one record's metrics touch, made once per distinct label set and reused: the counter
    cells to add to and the attribute sets for the histograms."""

    requests: Cell
    input_tokens: Cell
    output_tokens: Cell
    cached_tokens: Cell
    reasoning_tokens: Cell
    cost: Cell
    savings: Cell
    overspend: Cell
    latency: Attributes
    gen_ai_input: Attributes
    gen_ai_output: Attributes
    gen_ai_duration: Attributes

    @classmethod
    def of(cls, record: FinishedRequest, counters: _Counters) -> _Series:
        # Latency histograms leave out team: each of their series is ~20 buckets, and latency follows the
        # route and deployment, not who asked.
        spend_key = (record.route, record.team, record.deployment)
        spend = present(
            {
                names.LABEL_ROUTE: record.route,
                names.LABEL_TEAM: record.team,
                names.LABEL_DEPLOYMENT: record.deployment,
            }
        )
        latency = present(
            {
                names.LABEL_ROUTE: record.route,
                names.LABEL_DEPLOYMENT: record.deployment,
                names.LABEL_STATUS: record.status,
                names.LABEL_CACHE: record.cache,
            }
        )
        gen_ai = present(
            {
                names.GEN_AI_OPERATION_NAME: names.GEN_AI_OPERATION_CHAT,
                names.GEN_AI_REQUEST_MODEL: record.model,
            }
        )

        def tokens(kind: str) -> Cell:
            return counters.tokens.cell((*spend_key, kind), {**spend, names.LABEL_TOKEN_TYPE: kind})

        return cls(
            requests=counters.requests.cell(
                (*spend_key, record.status, record.cache),
                {**spend, names.LABEL_STATUS: record.status, names.LABEL_CACHE: record.cache},
            ),
            input_tokens=tokens(names.TOKEN_INPUT),
            output_tokens=tokens(names.TOKEN_OUTPUT),
            cached_tokens=tokens(names.TOKEN_CACHED),
            reasoning_tokens=tokens(names.TOKEN_REASONING),
            cost=counters.cost.cell(spend_key, spend),
            savings=counters.savings.cell(spend_key, spend),
            overspend=counters.overspend.cell(spend_key, spend),
            latency=latency,
            gen_ai_input={**gen_ai, names.GEN_AI_TOKEN_TYPE: names.GEN_AI_TOKEN_TYPE_INPUT},
            gen_ai_output={**gen_ai, names.GEN_AI_TOKEN_TYPE: names.GEN_AI_TOKEN_TYPE_OUTPUT},
            gen_ai_duration=present({**gen_ai, names.ERROR_TYPE: error_type(record)}),
        )


class Telemetry:
    """The app's tracer and meter providers, its instruments and its Prometheus registry.

    Prometheus text is always available (`prometheus_text`, for GET /metrics). With `otlp_endpoint`
    (the collector's base URL, e.g. http://127.0.0.1:4318) spans and metrics are also pushed over
    OTLP/HTTP. Without OTLP and without `span_exporter`, no tracer provider exists and `start_request`
    hands out a shared no-op span.
    """

    def __init__(
        self,
        *,
        service_name: str = "gateway",
        otlp_endpoint: str | None = None,
        span_exporter: SpanExporter | None = None,
        metric_readers: Sequence[MetricReader] = (),
        metric_export_interval_s: float = 60.0,
    ) -> None:
        resource = Resource.create({SERVICE_NAME: service_name})
        base_url = otlp_endpoint.rstrip("/") if otlp_endpoint else None

        self._registry = CollectorRegistry()
        readers: list[MetricReader] = [
            PrometheusMetricReader(scope_info_enabled=False, registry=self._registry),
            *metric_readers,
        ]
        if base_url is not None:
            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=f"{base_url}/v1/metrics"),
                    export_interval_millis=metric_export_interval_s * 1000,
                )
            )
        # Exemplars would tie metric points to traces, which /metrics (text format 0.0.4) cannot show.
        self._meter_provider = MeterProvider(
            metric_readers=readers,
            resource=resource,
            exemplar_filter=AlwaysOffExemplarFilter(),
            shutdown_on_exit=False,
        )

        self._tracer_provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if span_exporter is not None or base_url is not None:
            self._tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            if span_exporter is not None:
                self._tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
            if base_url is not None:
                self._tracer_provider.add_span_processor(
                    BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base_url}/v1/traces"))
                )
            self._tracer = self._tracer_provider.get_tracer("gateway")
        self._idle_span = RequestSpan()
        self._propagator = TraceContextTextMapPropagator()
        self._series: dict[tuple[object, ...], _Series] = {}
        self._lock = threading.Lock()
        self._unrecorded: list[tuple[FinishedRequest, _Series]] = []
        self._closed = False
        self._create_instruments()

    def _feed_histograms(self, options: CallbackOptions) -> Iterable[Observation]:
        self.record_histograms()
        return ()

    def _create_instruments(self) -> None:
        self._counters_made = False
        meter = self._meter_provider.get_meter("gateway")
        self._gen_ai_tokens = meter.create_histogram(
            names.METRIC_GEN_AI_TOKEN_USAGE, names.UNIT_TOKEN, "Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=names.GEN_AI_TOKEN_BUCKETS,
        )  # fmt: skip
        self._gen_ai_duration = meter.create_histogram(
            names.METRIC_GEN_AI_OPERATION_DURATION, names.UNIT_SECONDS, "GenAI operation duration.",
            explicit_bucket_boundaries_advisory=names.GEN_AI_DURATION_BUCKETS_S,
        )  # fmt: skip
        self._duration = meter.create_histogram(
            names.METRIC_REQUEST_DURATION, names.UNIT_SECONDS, "Whole request, arrival to last byte.",
            explicit_bucket_boundaries_advisory=names.LATENCY_BUCKETS_S,
        )  # fmt: skip
        self._ttfb = meter.create_histogram(
            names.METRIC_TIME_TO_FIRST_BYTE, names.UNIT_SECONDS, "Arrival to the first byte sent back.",
            explicit_bucket_boundaries_advisory=names.LATENCY_BUCKETS_S,
        )  # fmt: skip
        self._overhead = meter.create_histogram(
            names.METRIC_OVERHEAD, names.UNIT_SECONDS, "The gateway's own share: total minus upstream time.",
            explicit_bucket_boundaries_advisory=names.OVERHEAD_BUCKETS_S,
        )  # fmt: skip

        def counter(name: str, unit: str, description: str) -> Totals:
            totals = Totals(self._lock)
            # Every collection (any reader: Prometheus, OTLP, a test's) runs this counter's
            # callbacks first, so it feeds the queued histogram measurements in before they are read.
            callbacks = [totals.observe] if self._counters_made else [self._feed_histograms, totals.observe]
            self._counters_made = True
            meter.create_observable_counter(name, callbacks, unit, description)
            return totals

        self._counters = _Counters(
            requests=counter(names.METRIC_REQUESTS, names.UNIT_REQUEST, "Chat requests answered or failed."),
            tokens=counter(
                names.METRIC_TOKENS, names.UNIT_TOKEN, "Tokens; cached is part of input, reasoning of output."
            ),
            cost=counter(names.METRIC_COST, names.UNIT_USD, "Spend of priced requests."),
            savings=counter(
                names.METRIC_SAVINGS, names.UNIT_USD, "Saved against the policy's reference route."
            ),
            overspend=counter(
                names.METRIC_OVERSPEND, names.UNIT_USD, "Spent beyond the policy's reference route."
            ),
            cache_lookups=counter(names.METRIC_CACHE_LOOKUPS, names.UNIT_LOOKUP, "Cache lookups by outcome."),
            rejections=MappingProxyType(
                {
                    kind: (counter(metric, names.UNIT_REQUEST, description), label)
                    for kind, metric, label, description in (
                        (
                            "policy",
                            names.METRIC_POLICY_REJECTIONS,
                            names.LABEL_POLICY,
                            "Policy edits rejected (the running policy stayed), by policy.",
                        ),
                        (
                            "budget",
                            names.METRIC_BUDGET_REJECTIONS,
                            names.LABEL_BUDGET,
                            "Refused by a budget.",
                        ),
                        (
                            "rate_limit",
                            names.METRIC_RATE_LIMIT_REJECTIONS,
                            names.LABEL_LIMIT,
                            "Over a rate limit.",
                        ),
                    )
                }
            ),
        )

    def start_request(
        self,
        request_id: str,
        requested_model: str,
        stream: bool,
        *,
        max_tokens: int | None = None,
        traceparent: str | None = None,
    ) -> RequestSpan:
        """Opens the root span of one request; `traceparent` (the client's W3C header) joins its trace."""
        if self._tracer is None:
            return self._idle_span
        parent = Context()
        if traceparent is not None:
            parent = self._propagator.extract({"traceparent": traceparent}, parent)
        attributes: dict[str, AttributeValue] = {
            names.GEN_AI_OPERATION_NAME: names.GEN_AI_OPERATION_CHAT,
            names.GEN_AI_REQUEST_MODEL: requested_model,
            names.GEN_AI_REQUEST_STREAM: stream,
            names.GATEWAY_REQUEST_ID: request_id,
        }
        if max_tokens is not None:
            attributes[names.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
        return RecordingRequestSpan(self._tracer, parent, attributes)

    def observe(self, record: FinishedRequest) -> None:
        """Counts one finished request in every metric it touches."""
        series = self._series_of(record)
        with self._lock:
            series.requests.value += 1
            series.input_tokens.value += record.prompt_tokens
            series.output_tokens.value += record.completion_tokens
            series.cached_tokens.value += record.cached_tokens
            series.reasoning_tokens.value += record.reasoning_tokens
            if record.cost_usd is not None:
                series.cost.value += record.cost_usd
            saved = record.saved_usd
            if saved is not None:
                if saved >= 0:
                    series.savings.value += saved
                else:
                    series.overspend.value -= saved
            # Histograms cost ~10 µs per measurement in the SDK: recorded in batches, off the request.
            self._unrecorded.append((record, series))

    def record_histograms(self) -> None:
        """Feed the histograms what `observe` queued; runs every `HISTOGRAM_INTERVAL_S` (`run`) and
        before every read of the metrics."""
        with self._lock:
            queued, self._unrecorded = self._unrecorded, []
        for record, series in queued:
            self._duration.record(record.latency_ms / 1000.0, series.latency)
            if record.ttfb_ms is not None:
                self._ttfb.record(record.ttfb_ms / 1000.0, series.latency)
            if record.overhead_ms is not None:
                self._overhead.record(max(record.overhead_ms, 0.0) / 1000.0, series.latency)
            # The GenAI metrics describe calls to a model, so cache hits and rejections add nothing to them.
            if record.upstream_ms is not None:
                self._gen_ai_duration.record(record.upstream_ms / 1000.0, series.gen_ai_duration)
                if record.status < 400:
                    self._gen_ai_tokens.record(record.prompt_tokens, series.gen_ai_input)
                    self._gen_ai_tokens.record(record.completion_tokens, series.gen_ai_output)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(HISTOGRAM_INTERVAL_S)
            self.record_histograms()

    def _series_of(self, record: FinishedRequest) -> _Series:
        key = (
            record.route,
            record.team,
            record.deployment,
            record.status,
            record.cache,
            record.model,
            record.error,
        )
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= _MAX_LABEL_SETS:
                self._series.clear()
            series = self._series[key] = _Series.of(record, self._counters)
        return series

    def count_cache_lookup(self, outcome: Literal["miss", "exact", "semantic"], route: str | None) -> None:
        """Counts one cache lookup where it happens: a record's `cache` is "miss" also when none was made."""
        self._counters.cache_lookups.add(
            (outcome, route), present({names.LABEL_OUTCOME: outcome, names.LABEL_ROUTE: route})
        )

    def count_rejection(self, kind: RejectionKind, name: str, team: str | None) -> None:
        """Counts a request refused by a policy rule, a budget or a rate limit, by that rule's name."""
        totals, label = self._counters.rejections[kind]
        totals.add((name, team), present({label: name, names.LABEL_TEAM: team}))

    def prometheus_text(self) -> tuple[bytes, str]:
        """The body and content type for GET /metrics (Prometheus text format 0.0.4)."""
        self.record_histograms()
        return generate_latest(self._registry), CONTENT_TYPE_PLAIN_0_0_4

    def force_flush(self, timeout_s: float = 10.0) -> None:
        """Pushes buffered spans and metrics to their exporters now."""
        self.record_histograms()
        if self._tracer_provider is not None:
            self._tracer_provider.force_flush(int(timeout_s * 1000))
        self._meter_provider.force_flush(timeout_s * 1000)

    def shutdown(self) -> None:
        """Flushes and stops both providers (a final OTLP export, the Prometheus collector unregistered).
        Blocks for up to the exporters' timeouts; from async code use `aclose`. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self.record_histograms()
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        self._meter_provider.shutdown()

    async def aclose(self) -> None:
        """`shutdown` in a worker thread, so that a slow collector does not stall the event loop."""
        await asyncio.to_thread(self.shutdown)
