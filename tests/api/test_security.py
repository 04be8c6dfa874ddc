"""Security properties checked across the whole app: every admin route needs the admin role, CORS is off,
and no provider key, virtual key or prompt text reaches the logs or the state files at rest."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import RunningGateway, openai_deployment
from tests.gateway_process import start_gateway, write_spec

Gateway = Callable[..., RunningGateway]
ADMIN_KEY = "sk-security-admin-3f9a1c"
PROVIDER_KEY = "sk-provider-planted-7d2e4b9c"
PROMPT = "PLANTED-PROMPT-TEXT-c41d8e2a"


def spec(upstream: FakeOpenAIUpstream, *, log_bodies: bool = False) -> dict[str, Any]:
    deployment = openai_deployment(upstream, api_key_env="SECURITY_TEST_PROVIDER_KEY")
    return {
        "deployments": {"big": deployment},
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
        "log_bodies": log_bodies,
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def admin_routes(gw: RunningGateway) -> list[tuple[str, str]]:
    """(method, path) of every /admin route the app serves (from its OpenAPI description), path
    parameters filled in."""
    paths: dict[str, dict[str, Any]] = gw.app.api.openapi()["paths"]
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "1", path))
        for path, operations in paths.items()
        if path.startswith("/admin")
        for method in operations
    ]


def test_every_admin_route_needs_an_admin_key(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    gw = gateway(spec(upstreams(Behaviour(content="ok"))), admin_keys=[ADMIN_KEY])
    keys = {}
    for role in ("client", "finance"):
        made = httpx.post(f"{gw.url}/admin/keys", json={"team": "t", "role": role}, headers=bearer(ADMIN_KEY))
        keys[role] = made.json()["key"]
    routes = admin_routes(gw)
    assert len(routes) >= 8  # keys, policies, cache: a route list that went empty would pass vacuously
    for method, path in routes:
        assert httpx.request(method, f"{gw.url}{path}").status_code == 401, (method, path)
        for role, key in keys.items():
            answered = httpx.request(method, f"{gw.url}{path}", headers=bearer(key))
            assert answered.status_code == 403, (method, path, role)
            assert answered.json()["error"]["code"] == "permission_denied"


def test_cors_is_off_by_default(upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway) -> None:
    gw = gateway(spec(upstreams(Behaviour(content="ok"))), admin_keys=[ADMIN_KEY])
    origin = {"origin": "https://evil.example"}
    preflight = httpx.options(
        f"{gw.url}/v1/chat/completions",
        headers={
            **origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization",
        },
    )
    assert "access-control-allow-origin" not in preflight.headers
    listed = httpx.get(f"{gw.url}/v1/models", headers={**origin, **bearer(ADMIN_KEY)})
    assert listed.status_code == 200 and "access-control-allow-origin" not in listed.headers


@pytest.mark.parametrize("log_level", ["debug"])
def test_no_secret_or_prompt_in_logs_or_state_files(
    upstreams: Callable[..., FakeOpenAIUpstream], tmp_path: Path, log_level: str
) -> None:
    upstream = upstreams(Behaviour(content="an answer"))
    state = tmp_path / "state"
    settings = {
        **write_spec(spec(upstream), tmp_path / "config"),
        "GATEWAY_ADMIN_KEYS": ADMIN_KEY,
        "GATEWAY_STATE_DIR": str(state),
        "GATEWAY_LOG_LEVEL": log_level,
        "SECURITY_TEST_PROVIDER_KEY": PROVIDER_KEY,
    }
    log = tmp_path / "gateway.log"
    gw = start_gateway(settings, log)
    try:
        made = httpx.post(f"{gw.url}/admin/keys", json={"team": "t"}, headers=bearer(ADMIN_KEY))
        virtual = made.json()["key"]
        for key in (virtual, ADMIN_KEY, "sk-wrong-planted-key-5b1f"):
            body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}
            httpx.post(f"{gw.base_url}/chat/completions", json=body, headers=bearer(key), timeout=30)
        httpx.post(
            f"{gw.base_url}/chat/completions", content=PROMPT.encode(), headers=bearer(virtual), timeout=30
        )
        # An upstream error that echoes the prompt back.
        upstream.script(Behaviour(status=500, error_message=f"cannot answer {PROMPT}"))
        body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}
        httpx.post(f"{gw.base_url}/chat/completions", json=body, headers=bearer(virtual), timeout=30)
        # A client that leaves mid-request is logged, by request id: the log does see requests.
        upstream.script(Behaviour(latency=3.0))
        with pytest.raises(httpx.ReadTimeout):
            headers = {**bearer(virtual), "x-request-id": "security-visible-id"}
            httpx.post(f"{gw.base_url}/chat/completions", json=body, headers=headers, timeout=0.5)
        time.sleep(0.5)
    finally:
        gw.stop()
    logged = log.read_text()
    assert "security-visible-id" in logged  # the log did capture the traffic
    planted = {"provider key": PROVIDER_KEY, "virtual key": virtual, "admin key": ADMIN_KEY,
               "rejected key": "sk-wrong-planted-key-5b1f", "prompt": PROMPT}  # fmt: skip
    assert [name for name, secret in planted.items() if secret in logged] == []
    # At rest: keys are stored as digests; without log_bodies the ledger and spool hold no text.
    files = [path for path in state.rglob("*") if path.is_file()]
    assert {"keys.sqlite", "ledger.sqlite"} <= {path.name for path in files}
    for path in files:
        data = path.read_bytes()
        leaked = [name for name, secret in planted.items() if secret.encode() in data]
        assert leaked == [], path
