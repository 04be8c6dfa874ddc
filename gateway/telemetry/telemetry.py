"""Traces and metrics for the gateway, owned by the app: one `Telemetry` per app, nothing global.

Each `Telemetry` builds its own tracer and meter providers and prometheus_client registry, so two gateways
in one process (as in the tests) never see each other's spans or counts, and nothing outlives `shutdown()`.
Metrics come from finished spend records (`observe`), off the request path; spans are opened by the
pipeline (`start_request`) and closed with the same record (`RequestSpan.finish`).

A synchronous OpenTelemetry SDK measurement costs ~8 µs, and a record makes 18, so `observe` makes none:
counters are summed in `totals.Totals` and read by observable counters only when a reader collects, and
histograms are aggregated in `histograms.Histogram` and shown on /metrics by their own collector, in the
exporter's format. Each record's cells are found once per label set (`_Series`), so `observe` is a few
additions under one lock. Only with OTLP or extra metric readers does the SDK see histogram measurements:
they are kept and fed to SDK histograms in batches (`run`, and before each of those readers collects), on a
second MeterProvider that only those readers read, so that /metrics shows no histogram twice.
`python -m gateway.telemetry.bench` times both paths.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from gateway.telemetry import histograms, names
from gateway.telemetry.histograms import Buckets, Histogram, HistogramCollector, HistogramSpec
from gateway.telemetry.record import Attributes, FinishedRequest, error_type, present
from gateway.telemetry.spans import RecordingRequestSpan, RequestSpan
from gateway.telemetry.totals import Cell, Totals

RejectionKind = Literal["policy", "budget", "rate_limit"]

# Distinct label sets are few (routes x teams x deployments x statuses); this only stops a bug that makes
# them unbounded from growing the memo without end (the totals themselves are kept, see totals.py).
_MAX_LABEL_SETS: Final = 4096
HISTOGRAM_INTERVAL_S: Final = 0.25
_Callback = Callable[[CallbackOptions], Iterable[Observation]]
# Admission control has four actions; a series keeps no more cells than this however its text reads.
_MAX_ACTIONS: Final = 8

QUEUE_DURATION: Final = HistogramSpec(
    names.METRIC_QUEUE_DURATION, names.UNIT_SECONDS, "Waited for a place at a capacity-limited deployment.",
    names.QUEUE_BUCKETS_S,
)  # fmt: skip

# Every counter as an instrument: name, unit, description (in the order they are created).
_COUNTERS: Final = (
    (names.METRIC_REQUESTS, names.UNIT_REQUEST, "Chat requests answered or failed."),
    (names.METRIC_TOKENS, names.UNIT_TOKEN, "Tokens; cached is part of input, reasoning of output."),
    (names.METRIC_COST, names.UNIT_USD, "Spend of priced requests."),
    (names.METRIC_SAVINGS, names.UNIT_USD, "Saved against the policy's reference route."),
    (names.METRIC_OVERSPEND, names.UNIT_USD, "Spent beyond the policy's reference route."),
    (names.METRIC_CACHE_LOOKUPS, names.UNIT_LOOKUP, "Cache lookups by outcome."),
    (names.METRIC_CACHE_AUDITS, names.UNIT_LOOKUP, "Semantic hits checked against a fresh answer."),
    (
        names.METRIC_POLICY_REJECTIONS,
        names.UNIT_REQUEST,
        "Policy edits rejected (the running policy stayed), by policy.",
    ),
    (names.METRIC_BUDGET_REJECTIONS, names.UNIT_REQUEST, "Refused by a budget."),
    (names.METRIC_RATE_LIMIT_REJECTIONS, names.UNIT_REQUEST, "Over a rate limit."),
    (names.METRIC_ENERGY, names.UNIT_WH, "Estimated energy of requests whose energy is known."),
    (names.METRIC_ENERGY_SAVINGS, names.UNIT_WH, "Energy saved against the policy's reference route."),
    (names.METRIC_ENERGY_OVERSPEND, names.UNIT_WH, "Energy used beyond the policy's reference route."),
    (
        names.METRIC_ADMISSIONS,
        names.UNIT_REQUEST,
        "Admission control's decisions over a route's latency objective, by action.",
    ),
)


@dataclass(frozen=True, slots=True)
class _Counters:
    """The totals behind every counter, sharing one lock."""

    by_metric: Mapping[str, Totals]
    requests: Totals
    tokens: Totals
    cost: Totals
    savings: Totals
    overspend: Totals
    cache_lookups: Totals
    cache_audits: Totals
    rejections: Mapping[str, tuple[Totals, str]]
    energy: Totals
    energy_savings: Totals
    energy_overspend: Totals
    admissions: Totals

    @classmethod
    def make(cls, lock: threading.Lock) -> _Counters:
        totals = MappingProxyType({metric: Totals(lock) for metric, _, _ in _COUNTERS})
        return cls(
            by_metric=totals,
            requests=totals[names.METRIC_REQUESTS],
            tokens=totals[names.METRIC_TOKENS],
            cost=totals[names.METRIC_COST],
            savings=totals[names.METRIC_SAVINGS],
            overspend=totals[names.METRIC_OVERSPEND],
            cache_lookups=totals[names.METRIC_CACHE_LOOKUPS],
            cache_audits=totals[names.METRIC_CACHE_AUDITS],
            rejections=MappingProxyType(
                {
                    "policy": (totals[names.METRIC_POLICY_REJECTIONS], names.LABEL_POLICY),
                    "budget": (totals[names.METRIC_BUDGET_REJECTIONS], names.LABEL_BUDGET),
                    "rate_limit": (totals[names.METRIC_RATE_LIMIT_REJECTIONS], names.LABEL_LIMIT),
                }
            ),
            energy=totals[names.METRIC_ENERGY],
            energy_savings=totals[names.METRIC_ENERGY_SAVINGS],
            energy_overspend=totals[names.METRIC_ENERGY_OVERSPEND],
            admissions=totals[names.METRIC_ADMISSIONS],
        )

    def instrument(self, meter: Meter, first: _Callback | None = None) -> None:
        """Makes every counter an observable counter of `meter` reading these totals; `first`, if given,
        runs before them on every collection."""
        for index, (metric, unit, description) in enumerate(_COUNTERS):
            callbacks: list[_Callback] = [self.by_metric[metric].observe]
            if first is not None and index == 0:
                callbacks.insert(0, first)
            meter.create_observable_counter(metric, callbacks, unit, description)


@dataclass(frozen=True, slots=True)
class _Histograms:
    """Every histogram, sharing the counters' lock."""

    duration: Histogram
    ttfb: Histogram
    overhead: Histogram
    gen_ai_duration: Histogram
    gen_ai_tokens: Histogram
    queue: Histogram

    @classmethod
    def make(cls, lock: threading.Lock, *, export: bool) -> _Histograms:
        def histogram(spec: histograms.HistogramSpec) -> Histogram:
            return Histogram(spec, lock, export=export)

        return cls(
            duration=histogram(histograms.REQUEST_DURATION),
            ttfb=histogram(histograms.TIME_TO_FIRST_BYTE),
            overhead=histogram(histograms.OVERHEAD),
            gen_ai_duration=histogram(histograms.GEN_AI_OPERATION_DURATION),
            gen_ai_tokens=histogram(histograms.GEN_AI_TOKEN_USAGE),
            queue=histogram(QUEUE_DURATION),
        )

    def all(self) -> tuple[Histogram, ...]:
        """In the order /metrics has always shown them (the order of a record's first measurements), then
        those added since."""
        return (self.duration, self.ttfb, self.overhead, self.gen_ai_duration, self.gen_ai_tokens, self.queue)


@dataclass(frozen=True, slots=True)
class _Actions:
    """The admission-decision cells of one route and priority class, by action, made on first use (most
    requests are never over their objective, so a series makes none until one is)."""

    totals: Totals
    key: tuple[object, ...]
    labels: Attributes
    cells: dict[str, Cell] = field(default_factory=dict)

    def cell(self, admission: str) -> Cell:
        """The cell of the action `admission` names (`downgraded: ...` is action downgraded). Takes the
        totals' lock when it makes one: call it before taking that lock."""
        action = admission.split(":", 1)[0]
        found = self.cells.get(action)
        if found is None:
            found = self.totals.cell((*self.key, action), {**self.labels, names.LABEL_ACTION: action})
            if len(self.cells) < _MAX_ACTIONS:
                self.cells[action] = found
        return found


@dataclass(frozen=True, slots=True)
class _Series:
    """Every cell one record's metrics touch, made once per distinct label set and reused."""

    requests: Cell
    input_tokens: Cell
    output_tokens: Cell
    cached_tokens: Cell
    reasoning_tokens: Cell
    cost: Cell
    savings: Cell
    overspend: Cell
    energy: Cell
    energy_savings: Cell
    energy_overspend: Cell
    admissions: _Actions
    duration: Buckets
    ttfb: Buckets
    overhead: Buckets
    gen_ai_duration: Buckets
    gen_ai_input: Buckets
    gen_ai_output: Buckets
    queue: Buckets

    @classmethod
    def of(cls, record: FinishedRequest, counters: _Counters, histograms: _Histograms) -> _Series:
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
        latency_key = (record.route, record.deployment, record.status, record.cache)
        latency = present(
            {
                names.LABEL_ROUTE: record.route,
                names.LABEL_DEPLOYMENT: record.deployment,
                names.LABEL_STATUS: record.status,
                names.LABEL_CACHE: record.cache,
            }
        )
        queue_key = (record.route, record.deployment, record.priority)
        queue = present(
            {
                names.LABEL_ROUTE: record.route,
                names.LABEL_DEPLOYMENT: record.deployment,
                names.LABEL_PRIORITY: record.priority,
            }
        )
        operation = names.operation_of(record.api)
        gen_ai = present(
            {
                names.GEN_AI_OPERATION_NAME: operation,
                names.GEN_AI_REQUEST_MODEL: record.model,
            }
        )
        error = error_type(record)

        def tokens(kind: str) -> Cell:
            return counters.tokens.cell((*spend_key, kind), {**spend, names.LABEL_TOKEN_TYPE: kind})

        def token_usage(kind: str) -> Buckets:
            return histograms.gen_ai_tokens.cell(
                (record.model, operation, kind), {**gen_ai, names.GEN_AI_TOKEN_TYPE: kind}
            )

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
            energy=counters.energy.cell(spend_key, spend),
            energy_savings=counters.energy_savings.cell(spend_key, spend),
            energy_overspend=counters.energy_overspend.cell(spend_key, spend),
            admissions=_Actions(
                counters.admissions,
                (record.route, record.priority),
                present({names.LABEL_ROUTE: record.route, names.LABEL_PRIORITY: record.priority}),
            ),
            duration=histograms.duration.cell(latency_key, latency),
            ttfb=histograms.ttfb.cell(latency_key, latency),
            overhead=histograms.overhead.cell(latency_key, latency),
            gen_ai_duration=histograms.gen_ai_duration.cell(
                (record.model, operation, error), present({**gen_ai, names.ERROR_TYPE: error})
            ),
            gen_ai_input=token_usage(names.GEN_AI_TOKEN_TYPE_INPUT),
            gen_ai_output=token_usage(names.GEN_AI_TOKEN_TYPE_OUTPUT),
            queue=histograms.queue.cell(queue_key, queue),
        )


def _meter_provider(readers: Sequence[MetricReader], resource: Resource) -> MeterProvider:
    # Exemplars would tie metric points to traces, which /metrics (text format 0.0.4) cannot show.
    return MeterProvider(
        metric_readers=readers,
        resource=resource,
        exemplar_filter=AlwaysOffExemplarFilter(),
        shutdown_on_exit=False,
    )


class Telemetry:
    """The app's tracer and meter providers, its metrics and its Prometheus registry.

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
        exported_readers = list(metric_readers)
        if base_url is not None:
            # The OTLP exporters (protobuf) cost ~12 MB: loaded only when a collector is configured.
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            exported_readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=f"{base_url}/v1/metrics"),
                    export_interval_millis=metric_export_interval_s * 1000,
                )
            )

        self._lock = threading.Lock()
        self._counters = _Counters.make(self._lock)
        self._histograms = _Histograms.make(self._lock, export=bool(exported_readers))
        self._series: dict[tuple[object, ...], _Series] = {}
        self._closed = False

        # /metrics: the counters through the SDK and its Prometheus exporter, the histograms through ours.
        self._registry = CollectorRegistry()
        self._meter_providers = [
            _meter_provider(
                [PrometheusMetricReader(scope_info_enabled=False, registry=self._registry)], resource
            )
        ]
        self._counters.instrument(self._meter_providers[0].get_meter("gateway"))
        self._histogram_collector = HistogramCollector(self._lock, self._histograms.all())
        self._registry.register(self._histogram_collector)

        # OTLP and extra readers: the same counters, and SDK histograms fed what `observe` measured. A reader
        # belongs to one MeterProvider, so these readers have their own.
        self._exported: tuple[tuple[Histogram, SdkHistogram], ...] = ()
        if exported_readers:
            provider = _meter_provider(exported_readers, resource)
            self._meter_providers.append(provider)
            meter = provider.get_meter("gateway")
            self._exported = tuple(
                (
                    histogram,
                    meter.create_histogram(
                        histogram.spec.name,
                        histogram.spec.unit,
                        histogram.spec.description,
                        explicit_bucket_boundaries_advisory=histogram.spec.bounds,
                    ),
                )
                for histogram in self._histograms.all()
            )
            # Every collection by these readers runs the first counter's callbacks first, so it feeds the
            # histograms what was measured since the last batch before they are read.
            self._counters.instrument(meter, self._feed_histograms)

        self._tracer_provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if span_exporter is not None or base_url is not None:
            self._tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            if span_exporter is not None:
                self._tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
            if base_url is not None:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                self._tracer_provider.add_span_processor(
                    BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base_url}/v1/traces"))
                )
            self._tracer = self._tracer_provider.get_tracer("gateway")
        self._idle_span = RequestSpan()
        self._propagator = TraceContextTextMapPropagator()

    def _feed_histograms(self, options: CallbackOptions) -> Iterable[Observation]:
        self.record_histograms()
        return ()

    def start_request(
        self,
        request_id: str,
        requested_model: str,
        stream: bool,
        *,
        max_tokens: int | None = None,
        traceparent: str | None = None,
        operation: str = names.GEN_AI_OPERATION_CHAT,
    ) -> RequestSpan:
        """Opens the root span of one request; `traceparent` (the client's W3C header) joins its trace."""
        if self._tracer is None:
            return self._idle_span
        parent = Context()
        if traceparent is not None:
            parent = self._propagator.extract({"traceparent": traceparent}, parent)
        attributes: dict[str, AttributeValue] = {
            names.GEN_AI_OPERATION_NAME: operation,
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
        admission = record.admission
        decided = series.admissions.cell(admission) if admission is not None else None
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
            if record.energy_wh is not None:
                series.energy.value += record.energy_wh
            saved_wh = record.saved_energy_wh
            if saved_wh is not None:
                if saved_wh >= 0:
                    series.energy_savings.value += saved_wh
                else:
                    series.energy_overspend.value -= saved_wh
            if decided is not None:
                decided.value += 1
            series.duration.record(record.latency_ms / 1000.0)
            if record.ttfb_ms is not None:
                series.ttfb.record(record.ttfb_ms / 1000.0)
            if record.overhead_ms is not None:
                series.overhead.record(max(record.overhead_ms, 0.0) / 1000.0)
            # The GenAI metrics describe calls to a model, so cache hits and rejections add nothing to them.
            if record.upstream_ms is not None:
                series.gen_ai_duration.record(record.upstream_ms / 1000.0)
                if record.status < 400:
                    series.gen_ai_input.record(record.prompt_tokens)
                    series.gen_ai_output.record(record.completion_tokens)
            if record.deployment is not None:
                series.queue.record(record.queue_ms / 1000.0)

    def record_histograms(self) -> None:
        """Feeds the SDK histograms of OTLP and extra readers what `observe` measured since the last call
        (~8 µs a measurement, so in batches: every `HISTOGRAM_INTERVAL_S` in `run`, and before each of those
        readers collects). Without such readers it does nothing: /metrics needs no feeding."""
        for histogram, instrument in self._exported:
            for attributes, values in histogram.take_unexported():
                for value in values:
                    instrument.record(value, attributes)

    async def run(self) -> None:
        """`record_histograms` every `HISTOGRAM_INTERVAL_S`; returns at once when it has nothing to do."""
        if not self._exported:
            return
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
            record.api,
            record.priority,
        )
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= _MAX_LABEL_SETS:
                self._series.clear()
            series = self._series[key] = _Series.of(record, self._counters, self._histograms)
        return series

    def count_cache_lookup(self, outcome: Literal["miss", "exact", "semantic"], route: str | None) -> None:
        """Counts one cache lookup where it happens: a record's `cache` is "miss" also when none was made."""
        self._counters.cache_lookups.add(
            (outcome, route), present({names.LABEL_OUTCOME: outcome, names.LABEL_ROUTE: route})
        )

    def count_cache_audit(self, outcome: Literal["agree", "disagree", "failed"], route: str) -> None:
        """Counts one semantic hit checked live (see gateway.cache.audit)."""
        self._counters.cache_audits.add(
            (outcome, route), present({names.LABEL_OUTCOME: outcome, names.LABEL_ROUTE: route})
        )

    def count_rejection(self, kind: RejectionKind, name: str, team: str | None) -> None:
        """Counts a request refused by a policy rule, a budget or a rate limit, by that rule's name."""
        totals, label = self._counters.rejections[kind]
        totals.add((name, team), present({label: name, names.LABEL_TEAM: team}))

    def prometheus_text(self) -> tuple[bytes, str]:
        """The body and content type for GET /metrics (Prometheus text format 0.0.4)."""
        return generate_latest(self._registry), CONTENT_TYPE_PLAIN_0_0_4

    def force_flush(self, timeout_s: float = 10.0) -> None:
        """Pushes buffered spans and metrics to their exporters now."""
        self.record_histograms()
        if self._tracer_provider is not None:
            self._tracer_provider.force_flush(int(timeout_s * 1000))
        for provider in self._meter_providers:
            provider.force_flush(timeout_s * 1000)

    def shutdown(self) -> None:
        """Flushes and stops every provider (a final OTLP export, /metrics emptied). Blocks for up to the
        exporters' timeouts; from async code use `aclose`. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._registry.unregister(self._histogram_collector)
        self.record_histograms()
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        for provider in self._meter_providers:
            provider.shutdown()

    async def aclose(self) -> None:
        """`shutdown` in a worker thread, so that a slow collector does not stall the event loop."""
        await asyncio.to_thread(self.shutdown)
