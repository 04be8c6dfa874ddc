"""The names dashboards rely on: GenAI ones as the conventions spell them, and every metric on /metrics
under the Prometheus name recorded in `names.PROMETHEUS_NAMES`."""

from __future__ import annotations

import math

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.semconv.attributes import error_attributes, http_attributes
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry import names
from gateway.telemetry.telemetry import Telemetry
from tests.telemetry.conftest import make_record, scrape

METRICS = {value for key, value in vars(names).items() if key.startswith("METRIC_")}
HISTOGRAMS = {
    names.METRIC_GEN_AI_TOKEN_USAGE,
    names.METRIC_GEN_AI_OPERATION_DURATION,
    names.METRIC_REQUEST_DURATION,
    names.METRIC_TIME_TO_FIRST_BYTE,
    names.METRIC_OVERHEAD,
    names.METRIC_QUEUE_DURATION,
}


def test_gen_ai_names_are_the_semantic_conventions() -> None:
    ours = {
        "GEN_AI_OPERATION_NAME": names.GEN_AI_OPERATION_NAME,
        "GEN_AI_OPERATION_CHAT": names.GEN_AI_OPERATION_CHAT,
        "GEN_AI_SYSTEM": names.GEN_AI_SYSTEM,
        "GEN_AI_PROVIDER_NAME": names.GEN_AI_PROVIDER_NAME,
        "GEN_AI_REQUEST_MODEL": names.GEN_AI_REQUEST_MODEL,
        "GEN_AI_RESPONSE_MODEL": names.GEN_AI_RESPONSE_MODEL,
        "GEN_AI_REQUEST_MAX_TOKENS": names.GEN_AI_REQUEST_MAX_TOKENS,
        "GEN_AI_REQUEST_STREAM": names.GEN_AI_REQUEST_STREAM,
        "GEN_AI_USAGE_INPUT_TOKENS": names.GEN_AI_USAGE_INPUT_TOKENS,
        "GEN_AI_USAGE_OUTPUT_TOKENS": names.GEN_AI_USAGE_OUTPUT_TOKENS,
        "GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS": names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
        "GEN_AI_USAGE_REASONING_OUTPUT_TOKENS": names.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
        "GEN_AI_TOKEN_TYPE": names.GEN_AI_TOKEN_TYPE,
        "GEN_AI_TOKEN_TYPE_INPUT": names.GEN_AI_TOKEN_TYPE_INPUT,
        "GEN_AI_TOKEN_TYPE_OUTPUT": names.GEN_AI_TOKEN_TYPE_OUTPUT,
        "HTTP_RESPONSE_STATUS_CODE": names.HTTP_RESPONSE_STATUS_CODE,
        "ERROR_TYPE": names.ERROR_TYPE,
        "METRIC_GEN_AI_TOKEN_USAGE": names.METRIC_GEN_AI_TOKEN_USAGE,
        "METRIC_GEN_AI_OPERATION_DURATION": names.METRIC_GEN_AI_OPERATION_DURATION,
    }
    conventions = {
        "GEN_AI_OPERATION_NAME": gen_ai.GEN_AI_OPERATION_NAME,
        "GEN_AI_OPERATION_CHAT": gen_ai.GenAiOperationNameValues.CHAT.value,
        "GEN_AI_SYSTEM": gen_ai.GEN_AI_SYSTEM,
        "GEN_AI_PROVIDER_NAME": gen_ai.GEN_AI_PROVIDER_NAME,
        "GEN_AI_REQUEST_MODEL": gen_ai.GEN_AI_REQUEST_MODEL,
        "GEN_AI_RESPONSE_MODEL": gen_ai.GEN_AI_RESPONSE_MODEL,
        "GEN_AI_REQUEST_MAX_TOKENS": gen_ai.GEN_AI_REQUEST_MAX_TOKENS,
        "GEN_AI_REQUEST_STREAM": gen_ai.GEN_AI_REQUEST_STREAM,
        "GEN_AI_USAGE_INPUT_TOKENS": gen_ai.GEN_AI_USAGE_INPUT_TOKENS,
        "GEN_AI_USAGE_OUTPUT_TOKENS": gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS,
        "GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS": gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
        "GEN_AI_USAGE_REASONING_OUTPUT_TOKENS": gen_ai.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
        "GEN_AI_TOKEN_TYPE": gen_ai.GEN_AI_TOKEN_TYPE,
        "GEN_AI_TOKEN_TYPE_INPUT": gen_ai.GenAiTokenTypeValues.INPUT.value,
        "GEN_AI_TOKEN_TYPE_OUTPUT": gen_ai.GenAiTokenTypeValues.OUTPUT.value,
        "HTTP_RESPONSE_STATUS_CODE": http_attributes.HTTP_RESPONSE_STATUS_CODE,
        "ERROR_TYPE": error_attributes.ERROR_TYPE,
        "METRIC_GEN_AI_TOKEN_USAGE": gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE,
        "METRIC_GEN_AI_OPERATION_DURATION": gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION,
    }
    assert ours == conventions


def test_every_metric_has_a_prometheus_name() -> None:
    assert set(names.PROMETHEUS_NAMES) == METRICS
    assert len(set(names.PROMETHEUS_NAMES.values())) == len(METRICS)


def test_span_names_and_label_keys_are_unique() -> None:
    span_names = [value for key, value in vars(names).items() if key.startswith("SPAN_")]
    labels = [value for key, value in vars(names).items() if key.startswith("LABEL_")]
    assert len(set(span_names)) == len(span_names)
    assert len(set(labels)) == len(labels)


def test_every_metric_is_on_metrics_under_its_prometheus_name(telemetry: Telemetry) -> None:
    telemetry.observe(make_record())
    telemetry.observe(make_record(cost_usd=2.0, reference_usd=1.0))  # over the reference: overspend
    telemetry.observe(make_record(energy_wh=0.2, reference_energy_wh=0.1, admission="queued: over"))
    telemetry.count_cache_lookup("miss", "cheap")
    telemetry.count_cache_audit("agree", "cheap")
    telemetry.count_rejection("policy", "no-secrets", "search")
    telemetry.count_rejection("budget", "search-monthly", "search")
    telemetry.count_rejection("rate_limit", "search-rpm", "search")

    body, content_type = telemetry.prometheus_text()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    exposed = {name for name, _ in scrape(telemetry)}
    for metric in METRICS:
        prometheus_name = names.PROMETHEUS_NAMES[metric]
        if metric in HISTOGRAMS:
            assert families.get(prometheus_name) == "histogram", metric
            assert {
                f"{prometheus_name}_bucket",
                f"{prometheus_name}_sum",
                f"{prometheus_name}_count",
            } <= exposed
        else:
            assert families.get(prometheus_name.removesuffix("_total")) == "counter", metric
            assert prometheus_name in exposed, metric
            assert f"# TYPE {prometheus_name} counter" in text
    # The strings as the exporter really writes them, for the dashboards.
    for line in (
        "gateway_requests_total{",
        "gateway_request_duration_seconds_bucket{",
        "gateway_request_time_to_first_byte_seconds_bucket{",
        "gateway_request_overhead_seconds_bucket{",
        "gateway_tokens_total{",
        "gateway_cost_USD_total{",
        "gateway_savings_USD_total{",
        "gateway_overspend_USD_total{",
        "gateway_energy_Wh_total{",
        "gateway_energy_savings_Wh_total{",
        "gateway_energy_overspend_Wh_total{",
        "gateway_queue_duration_seconds_bucket{",
        "gateway_admission_decisions_total{",
        "gateway_cache_lookups_total{",
        "gateway_cache_audits_total{",
        "gateway_policy_rejections_total{",
        "gateway_budget_rejections_total{",
        "gateway_rate_limit_rejections_total{",
        "gen_ai_client_token_usage_bucket{",
        "gen_ai_client_operation_duration_seconds_bucket{",
    ):
        assert f"\n{line}" in text, line


def test_histograms_use_the_bucket_boundaries_in_names(telemetry: Telemetry) -> None:
    telemetry.observe(make_record())
    exposed = scrape(telemetry)

    def bounds(histogram: str) -> list[float]:
        return sorted(
            {float(dict(labels)["le"]) for name, labels in exposed if name == f"{histogram}_bucket"}
        )

    assert bounds("gateway_request_duration_seconds") == [*names.LATENCY_BUCKETS_S, math.inf]
    assert bounds("gateway_request_time_to_first_byte_seconds") == [*names.LATENCY_BUCKETS_S, math.inf]
    assert bounds("gateway_request_overhead_seconds") == [*names.OVERHEAD_BUCKETS_S, math.inf]
    assert bounds("gateway_queue_duration_seconds") == [*names.QUEUE_BUCKETS_S, math.inf]
    assert bounds("gen_ai_client_operation_duration_seconds") == [*names.GEN_AI_DURATION_BUCKETS_S, math.inf]
    assert bounds("gen_ai_client_token_usage") == [*names.GEN_AI_TOKEN_BUCKETS, math.inf]


def test_each_inbound_apis_operation_is_a_genai_convention_value() -> None:
    values = {member.value for member in gen_ai.GenAiOperationNameValues}
    for api in ("chat.completions", "responses", "messages", "embeddings", "completions"):
        assert names.operation_of(api) in values, api
    assert names.operation_of("embeddings") == gen_ai.GenAiOperationNameValues.EMBEDDINGS.value
    assert names.operation_of("completions") == gen_ai.GenAiOperationNameValues.TEXT_COMPLETION.value
