"""Property-based fuzzing of the HTTP API from its own OpenAPI description (/openapi.json), with
schemathesis: every operation, with bodies, paths, queries, headers and cookies that hypothesis makes
valid and invalid, against a real gateway on loopback and a fake upstream. No answer may be a 5xx, none
may take long, and the gateway must still answer normally afterwards.

Examples are derandomized, so a failure here is the same failure on the next run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.openapi import from_dict

from gateway.app import create_app
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.settings import Settings
from tests.conftest import RunningGateway, openai_deployment

ADMIN_KEY = "sk-fuzz-admin"
CLIENT_KEY = "sk-fuzz-client"
# Far above what any operation takes here (milliseconds): only a hang, or a lock held too long, trips it.
SLOWEST_SECONDS = 5.0

# The description is the app's, built without serving; the tests check /openapi.json serves the same.
DESCRIPTION = create_app(Settings(manage_local_model=False)).api.openapi()
schema = from_dict(DESCRIPTION)


@pytest.fixture
def fuzzed(
    gateway: Callable[..., RunningGateway], upstreams: Callable[..., FakeOpenAIUpstream]
) -> Iterator[RunningGateway]:
    spec = {
        "deployments": {"big": openai_deployment(upstreams()), "small": openai_deployment(upstreams())},
        "routes": {"frontier": ["big"], "local": ["small"]},
        "default_route": "frontier",
        "fallback_route": "local",
    }
    yield gateway(spec, admin_keys=ADMIN_KEY, api_keys=CLIENT_KEY)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_fails_or_hangs_on_any_input(case: schemathesis.Case, fuzzed: RunningGateway) -> None:
    # Inputs without a key of their own are sent as the admin, to reach past authentication.
    headers = (
        {} if case.headers and "authorization" in case.headers else {"authorization": f"Bearer {ADMIN_KEY}"}
    )
    started = time.monotonic()
    response = case.call(base_url=fuzzed.url, headers=headers, timeout=SLOWEST_SECONDS * 2)
    took = time.monotonic() - started
    case.validate_response(response, checks=[not_a_server_error])
    assert took < SLOWEST_SECONDS, f"{case.method} {case.path} took {took:.1f} s"
    if response.status_code >= 400 and response.headers.get("content-type", [""])[0].startswith(
        "application/json"
    ):
        error = response.json()["error"]  # OpenAI's error format, even for the fuzzer's nonsense
        assert isinstance(error["message"], str) and error["message"]
    # and the gateway still serves a client normally after it
    after = fuzzed.client(api_key=CLIENT_KEY).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "still there?"}]
    )
    assert after.choices[0].message.content


def test_the_description_covers_the_chat_hot_path_and_bodies_read_by_hand(fuzzed: RunningGateway) -> None:
    described = httpx.get(f"{fuzzed.url}/openapi.json").json()
    assert described == DESCRIPTION
    chat = described["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletionRequest"
    )
    request = described["components"]["schemas"]["ChatCompletionRequest"]
    assert set(request["required"]) == {"model", "messages"}
    assert "requestBody" in described["paths"]["/v1/route/explain"]["post"]
    assert "application/yaml" in described["paths"]["/admin/policies/{name}"]["put"]["requestBody"]["content"]
