"""Every inbound API together: each serves its own paths, and names itself for the ledger and spans."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.inbound import adapters
from gateway.stored_responses.backends import open_response_store
from gateway.tokens import TokenCounter


def test_every_adapter_serves_its_own_paths(tmp_path: Path) -> None:
    store = open_response_store(None, tmp_path)
    try:
        apis = adapters(TokenCounter(), store)
        served = [path for api in apis for path in api.paths]
        assert len(served) == len(set(served))
        assert {
            "/v1/chat/completions",
            "/v1/responses",
            "/v1/messages",
            "/v1/embeddings",
            "/v1/completions",
        } <= set(served)
        names = [api.name for api in apis]
        assert len(names) == len(set(names))
        assert {api.operation for api in apis} <= {"chat", "embeddings", "text_completion"}
    finally:
        asyncio.run(store.aclose())
