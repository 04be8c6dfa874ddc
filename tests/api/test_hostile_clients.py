"""Clients that send what no client should: JSON nested thousands deep, headers of 100 KB, bytes that
are not UTF-8, or a request trickled in a byte at a time. Each gets a clean 4xx (or its connection
closed) and nothing reaches an upstream; a slow client does not hold up anyone else."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.api.test_chat import single_route
from tests.conftest import RunningGateway

Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "auto", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b'{"model": "auto", "messages": [{"role": "user", "content": '
        + b'{"a": ' * 3000
        + b"1"
        + b"}" * 3000
        + b"}]}",
    ],
    ids=["arrays 5000 deep", "not utf-8", "objects 3000 deep"],
)
def test_deep_or_undecodable_json_gets_a_400_in_openai_format(
    upstreams: Upstreams, gateway: Gateway, body: bytes
) -> None:
    upstream = upstreams()
    gw = gateway(single_route(upstream))
    response = httpx.post(
        f"{gw.base_url}/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []
    assert httpx.get(f"{gw.url}/healthz").status_code == 200


def test_oversized_headers_are_refused_and_the_gateway_goes_on(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams()
    gw = gateway(single_route(upstream))
    try:
        response = httpx.post(
            f"{gw.base_url}/chat/completions",
            json={"model": "auto", "messages": []},
            headers={"x-junk": "j" * 200_000},
        )
        assert 400 <= response.status_code < 500
    except httpx.RemoteProtocolError:
        pass  # the server closed the connection: refused all the same
    assert upstream.requests == []
    assert httpx.get(f"{gw.url}/healthz").status_code == 200


def test_a_client_trickling_its_request_does_not_hold_up_others(
    upstreams: Upstreams, gateway: Gateway
) -> None:
    upstream = upstreams(Behaviour(content="fine"))
    gw = gateway(single_route(upstream))
    host, port = gw.url.removeprefix("http://").split(":")
    stop = threading.Event()

    def trickle() -> None:
        with socket.create_connection((host, int(port))) as slow:
            request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
            for byte in request + b"{" * 1000:
                if stop.is_set():
                    return
                slow.send(bytes([byte]))
                time.sleep(0.01)

    slow_clients = [threading.Thread(target=trickle) for _ in range(20)]
    for thread in slow_clients:
        thread.start()
    try:
        time.sleep(0.3)
        client = gw.client()
        for n in range(10):
            answer = client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": f"q{n}"}]
            )
            assert answer.choices[0].message.content == "fine"
    finally:
        stop.set()
        for thread in slow_clients:
            thread.join(10)
