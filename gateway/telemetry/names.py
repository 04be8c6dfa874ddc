"""Every span name, attribute key, metric name, unit and bucket boundary the gateway emits, in one place.

Dashboards and alerts are written against these strings, so renaming one is a breaking change: change it
here, in the dashboards and in tests/telemetry together. Where the OpenTelemetry GenAI semantic conventions
define a name it is used as written there (tests/telemetry/test_names.py checks them against the
`opentelemetry-semantic-conventions` package); the `gateway.*` names are the gateway's own.

Spans carry rich, per-request attributes (`gen_ai.*`, `gateway.*`). Metrics carry only short, bounded labels
(route, team, deployment, status, cache outcome, token type, rule or limit name, priority class, admission
action): never a request id, key id or model string sent by a client, because every distinct label set is a
time series kept forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# --- Span names ----------------------------------------------------------------------------------------
# The root span of one chat request (kind SERVER); the others are its children.
SPAN_REQUEST: Final = "gateway.chat"
SPAN_POLICY: Final = "gateway.policy.decide"
SPAN_EMBEDDING: Final = "gateway.embedding"
SPAN_CACHE: Final = "gateway.cache.lookup"
SPAN_BUDGET: Final = "gateway.budget"
# One call to one upstream deployment (kind CLIENT); a request with fallbacks has several.
SPAN_UPSTREAM: Final = "gateway.upstream"

# --- Span attributes: OpenTelemetry GenAI and HTTP semantic conventions --------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_OPERATION_CHAT: Final = "chat"
# The GenAI conventions' operation of each inbound API the gateway serves (chat for the rest).
GEN_AI_OPERATIONS: Final = {"embeddings": "embeddings", "completions": "text_completion"}


def operation_of(api: str) -> str:
    """`gen_ai.operation.name` for a request that came through `api` (the ledger's name for it)."""
    return GEN_AI_OPERATIONS.get(api, GEN_AI_OPERATION_CHAT)


# `gen_ai.system` is the older name of `gen_ai.provider.name`; set both while backends migrate.
GEN_AI_SYSTEM: Final = "gen_ai.system"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
GEN_AI_TOKEN_TYPE_INPUT: Final = "input"
GEN_AI_TOKEN_TYPE_OUTPUT: Final = "output"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
ERROR_TYPE: Final = "error.type"

# --- Span attributes: the gateway's own ----------------------------------------------------------------
GATEWAY_REQUEST_ID: Final = "gateway.request_id"
GATEWAY_POLICY: Final = "gateway.policy"
GATEWAY_ROUTE: Final = "gateway.route"
GATEWAY_RULE: Final = "gateway.rule"
GATEWAY_TEAM: Final = "gateway.team"
GATEWAY_DEPLOYMENT: Final = "gateway.deployment"
# The cache outcome: miss, exact or semantic.
GATEWAY_CACHE: Final = "gateway.cache"
GATEWAY_COST_USD: Final = "gateway.cost_usd"
GATEWAY_SAVED_USD: Final = "gateway.saved_usd"
# True when the upstream sent no usage and the gateway counted the tokens itself.
GATEWAY_ESTIMATED_USAGE: Final = "gateway.estimated_usage"

# --- Metric labels (attribute keys on gateway.* metrics) -----------------------------------------------
# Short and unprefixed because they become Prometheus labels as written: sum by (route) (...).
LABEL_ROUTE: Final = "route"
LABEL_TEAM: Final = "team"
LABEL_DEPLOYMENT: Final = "deployment"
LABEL_STATUS: Final = "status"
LABEL_CACHE: Final = "cache"
LABEL_OUTCOME: Final = "outcome"
LABEL_TOKEN_TYPE: Final = "type"
LABEL_POLICY: Final = "policy"
LABEL_BUDGET: Final = "budget"
LABEL_LIMIT: Final = "limit"
# The request's priority class (interactive, standard or deferrable).
LABEL_PRIORITY: Final = "priority"
# What admission control did over a route's latency objective: queued, deferred, downgraded or shed.
LABEL_ACTION: Final = "action"
# Values of LABEL_TOKEN_TYPE. `cached` is part of `input`, `reasoning` part of `output` (as OpenAI counts).
TOKEN_INPUT: Final = "input"
TOKEN_OUTPUT: Final = "output"
TOKEN_CACHED: Final = "cached"
TOKEN_REASONING: Final = "reasoning"

# --- Units (UCUM; the Prometheus exporter turns "s" into a _seconds suffix and drops {annotations}) -----
UNIT_SECONDS: Final = "s"
UNIT_TOKEN: Final = "{token}"
UNIT_REQUEST: Final = "{request}"
UNIT_LOOKUP: Final = "{lookup}"
UNIT_USD: Final = "USD"
# Watt-hours. UCUM writes W.h; "Wh" is what the ledger says (energy_wh), and the exporter keeps it as written.
UNIT_WH: Final = "Wh"

# --- Metrics (OpenTelemetry instrument names) ----------------------------------------------------------
# GenAI semantic conventions: one observation per upstream call (not for cache hits or rejections).
METRIC_GEN_AI_TOKEN_USAGE: Final = "gen_ai.client.token.usage"  # histogram, {token}, by gen_ai.token.type
METRIC_GEN_AI_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"  # histogram, s
# The gateway's own: one observation per answered (or failed) request.
METRIC_REQUESTS: Final = "gateway.requests"  # counter
METRIC_REQUEST_DURATION: Final = "gateway.request.duration"  # histogram, s: arrival to last byte
METRIC_TIME_TO_FIRST_BYTE: Final = "gateway.request.time_to_first_byte"  # histogram, s
METRIC_OVERHEAD: Final = "gateway.request.overhead"  # histogram, s: total minus time inside upstreams
METRIC_TOKENS: Final = "gateway.tokens"  # counter, by type
METRIC_COST: Final = "gateway.cost"  # counter, USD; requests with an unknown price add nothing
# Savings against the policy's reference route. A counter cannot go down, so a request that cost more
# than its reference adds to gateway.overspend instead: net saving = savings - overspend.
METRIC_SAVINGS: Final = "gateway.savings"  # counter, USD
METRIC_OVERSPEND: Final = "gateway.overspend"  # counter, USD
# Estimated energy (gateway/energy.py); requests whose energy is unknown add nothing. Saved against the
# policy's reference route as money is: net energy saved = energy.savings - energy.overspend.
METRIC_ENERGY: Final = "gateway.energy"  # counter, Wh
METRIC_ENERGY_SAVINGS: Final = "gateway.energy.savings"  # counter, Wh
METRIC_ENERGY_OVERSPEND: Final = "gateway.energy.overspend"  # counter, Wh
# Time waited for a place at a deployment with a capacity limit (0 without one), by priority class; only
# requests that reached a deployment.
METRIC_QUEUE_DURATION: Final = "gateway.queue.duration"  # histogram, s
# What admission control did with requests over their route's latency objective, by action and priority.
METRIC_ADMISSIONS: Final = "gateway.admission.decisions"  # counter
METRIC_CACHE_LOOKUPS: Final = "gateway.cache.lookups"  # counter, by outcome
# Semantic hits checked live against a fresh answer: outcome agree, disagree or failed.
METRIC_CACHE_AUDITS: Final = "gateway.cache.audits"  # counter, by outcome and route
METRIC_POLICY_REJECTIONS: Final = "gateway.policy.rejections"  # counter, by rule
METRIC_BUDGET_REJECTIONS: Final = "gateway.budget.rejections"  # counter, by budget
METRIC_RATE_LIMIT_REJECTIONS: Final = "gateway.rate_limit.rejections"  # counter, by limit

# What GET /metrics shows for each metric, as the OpenTelemetry Prometheus exporter names it: dots become
# underscores, the unit is appended, counters end in _total. Histograms expose <name>_bucket, _sum, _count.
PROMETHEUS_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        METRIC_GEN_AI_TOKEN_USAGE: "gen_ai_client_token_usage",
        METRIC_GEN_AI_OPERATION_DURATION: "gen_ai_client_operation_duration_seconds",
        METRIC_REQUESTS: "gateway_requests_total",
        METRIC_REQUEST_DURATION: "gateway_request_duration_seconds",
        METRIC_TIME_TO_FIRST_BYTE: "gateway_request_time_to_first_byte_seconds",
        METRIC_OVERHEAD: "gateway_request_overhead_seconds",
        METRIC_TOKENS: "gateway_tokens_total",
        METRIC_COST: "gateway_cost_USD_total",
        METRIC_SAVINGS: "gateway_savings_USD_total",
        METRIC_OVERSPEND: "gateway_overspend_USD_total",
        METRIC_ENERGY: "gateway_energy_Wh_total",
        METRIC_ENERGY_SAVINGS: "gateway_energy_savings_Wh_total",
        METRIC_ENERGY_OVERSPEND: "gateway_energy_overspend_Wh_total",
        METRIC_QUEUE_DURATION: "gateway_queue_duration_seconds",
        METRIC_ADMISSIONS: "gateway_admission_decisions_total",
        METRIC_CACHE_LOOKUPS: "gateway_cache_lookups_total",
        METRIC_CACHE_AUDITS: "gateway_cache_audits_total",
        METRIC_POLICY_REJECTIONS: "gateway_policy_rejections_total",
        METRIC_BUDGET_REJECTIONS: "gateway_budget_rejections_total",
        METRIC_RATE_LIMIT_REJECTIONS: "gateway_rate_limit_rejections_total",
    }
)

# --- Histogram bucket boundaries (the `le` labels dashboards read) -------------------------------------
# Whole requests and time to first byte: 1 ms (a cache hit) to 120 s (a long reasoning answer).
LATENCY_BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
# The gateway's own share is normally well under a millisecond, so these start at 0.1 ms.
OVERHEAD_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
# Queue time: 0 (a place was free, or no capacity limit) on its own, then 1 ms to 120 s (a deferrable
# request waiting for spare capacity).
QUEUE_BUCKETS_S: Final = (
    0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
# The boundaries the GenAI semantic conventions advise for their two histograms.
GEN_AI_DURATION_BUCKETS_S: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
GEN_AI_TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
