"""Telemetry objects that are always shut down, spend records to feed them, and /metrics parsed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from gateway.ledger.record import SpendRecord
from gateway.telemetry.telemetry import Telemetry

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def make_record(**fields: Any) -> SpendRecord:
    """An answered, priced, non-streamed request through the `cheap` route; `fields` override."""
    values: dict[str, Any] = {
        "id": "rec-1",
        "request_id": "req-1",
        "at": 1_700_000_000.0,
        "team": "search",
        "key_id": "key-1",
        "policy": "default",
        "route": "cheap",
        "rule": "short-prompts",
        "deployment": "mini",
        "model": "gpt-4o-mini",
        "stream": False,
        "status": 200,
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cached_tokens": 40,
        "reasoning_tokens": 5,
        "cost_usd": 0.25,
        "reference_usd": 1.0,
        "latency_ms": 300.0,
        "ttfb_ms": 120.0,
        "upstream_ms": 299.5,
        "overhead_ms": 0.5,
    }
    values.update(fields)
    return SpendRecord(**values)


def scrape(telemetry: Telemetry) -> Samples:
    """Every sample of GET /metrics, by name and label set. The exporter writes a label a point lacks as
    "", which Prometheus reads as absent, so such labels are left out here too."""
    body, _ = telemetry.prometheus_text()
    return {
        (sample.name, frozenset((key, label) for key, label in sample.labels.items() if label)): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """Metrics only: tracing off."""
    created = Telemetry()
    yield created
    created.shutdown()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    """Tracing into the `spans` exporter."""
    created = Telemetry(span_exporter=spans)
    yield created
    created.shutdown()
