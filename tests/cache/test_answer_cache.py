"""Which answers the cache keeps, and the keys that keep tenants and contexts apart."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.cache.answer_cache import cacheable_request, keepable, namespace_of
from gateway.cache.keys import cache_keys
from gateway.policy.schema import CacheDirective
from gateway.wire import Completion

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def completion(finish: str, **message: Any) -> Completion:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}]}
    return Completion(orjson.dumps(body), None, 0.0)


@pytest.mark.parametrize(
    ("answer", "directive", "kept"),
    [
        (completion("stop", content="Paris"), CacheDirective(), True),
        (completion("length", content="Par"), CacheDirective(), False),
        (completion("length", content="Par"), CacheDirective(truncated=True), True),
        (completion("tool_calls", tool_calls=[{"id": "1"}]), CacheDirective(), False),
        (completion("tool_calls", tool_calls=[{"id": "1"}]), CacheDirective(tool_calls=True), True),
        (completion("content_filter", content=""), CacheDirective(), False),
        (Completion(b"not json", None, 0.0), CacheDirective(), False),
    ],
    ids=["whole", "cut", "cut allowed", "tool call", "tool call allowed", "filtered", "garbage"],
)
def test_which_answers_are_kept(answer: Completion, directive: CacheDirective, kept: bool) -> None:
    assert keepable(answer, directive) is kept


def test_which_requests_may_use_the_cache() -> None:
    body = {"messages": QUESTION, "temperature": 0}
    assert cacheable_request(body, CacheDirective(), no_cache=False)
    assert not cacheable_request(body, CacheDirective(), no_cache=True)
    assert not cacheable_request(body, CacheDirective(enabled=False), no_cache=False)
    assert not cacheable_request(body, None, no_cache=False)
    assert not cacheable_request({"messages": QUESTION}, CacheDirective(), no_cache=False)  # default is 1
    assert cacheable_request({"messages": QUESTION}, CacheDirective(any_temperature=True), no_cache=False)


def test_namespaces_are_per_team_unless_shared() -> None:
    assert namespace_of(CacheDirective(), "alpha") == "team:alpha"
    assert namespace_of(CacheDirective(namespace="faq"), "alpha") == "shared:faq"


def test_keys_separate_tenants_and_contexts_but_not_spacing() -> None:
    base = cache_keys({"messages": QUESTION}, "team:a", "frontier")
    assert base is not None
    spaced = cache_keys(
        {"messages": [{"role": "user", "content": " what is THE capital of france? "}]}, "team:a", "frontier"
    )
    other_team = cache_keys({"messages": QUESTION}, "team:b", "frontier")
    with_user = cache_keys({"messages": QUESTION, "user": "u1", "stream": True}, "team:a", "frontier")
    assert spaced is not None and other_team is not None and with_user is not None
    assert spaced.exact == base.exact and with_user.exact == base.exact
    assert other_team.exact != base.exact and other_team.context != base.context
    # The last turn is the question; everything before it is context.
    follow_up = cache_keys(
        {"messages": [*QUESTION, {"role": "assistant", "content": "Paris."}, *QUESTION]}, "team:a", "frontier"
    )
    assert follow_up is not None and follow_up.context != base.context
    assert cache_keys({"messages": [{"role": "assistant", "content": "hi"}]}, "team:a", "frontier") is None


def test_the_question_is_embedded_once_for_the_policy_and_the_cache() -> None:
    from gateway.cache.answer_cache import AnswerCache
    from gateway.cache.store import InProcessCacheStore
    from gateway.embedding.embedder import default_model_path
    from gateway.policy.schema import SemanticSignal
    from gateway.policy.signals import (
        QUESTION_MEMO,
        LazyEmbedder,
        RequestFacts,
        SignalTools,
        build_evaluator,
    )
    from gateway.tokens import TokenCounter

    embedder = LazyEmbedder(default_model_path())
    signal = SemanticSignal.model_validate(
        {"kind": "semantic", "categories": {"geo": ["What is the capital of Italy?"]}}
    )
    evaluate = build_evaluator(signal, SignalTools(TokenCounter(), embedder))
    body = {"model": "auto", "messages": QUESTION, "temperature": 0}
    facts = RequestFacts(body=body)
    assert evaluate(facts) == "geo"
    cache = AnswerCache(InProcessCacheStore(), embedder)
    keys = cache.keys(body, CacheDirective(similarity=0.5), "alpha", "frontier", no_cache=False)
    assert keys is not None
    assert asyncio.run(cache.question_vector(keys, facts.memo)) is facts.memo[QUESTION_MEMO]
    # Without the policy's embedding, the cache computes the same vector itself (off the loop).
    fresh: dict[object, object] = {}
    vector = asyncio.run(cache.question_vector(keys, fresh))
    assert vector is not None and np.array_equal(vector, facts.memo[QUESTION_MEMO])


class ThreadsOf:
    """A real model function that notes the threads it ran on."""

    def __init__(self, model: Callable[..., Any]) -> None:
        self.model = model
        self.threads: set[int] = set()

    def __call__(self, *args: Any) -> Any:
        self.threads.add(threading.get_ident())
        return self.model(*args)


class ScoredOn:
    """The real verifier (a PairScorer), noting the threads it ran on."""

    def __init__(self) -> None:
        from gateway.cache.verifier import LazyVerifier

        self.score = ThreadsOf(LazyVerifier().score)


ORIGINAL = "How can I improve my English speaking skills?"
PARAPHRASE = "How do I improve my spoken English?"


def ask(question: str) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": question}], "temperature": 0}


def test_lookups_and_stores_run_no_model_on_the_loop_and_stores_leave_the_response_path() -> None:
    from gateway.cache.answer_cache import AnswerCache
    from gateway.cache.store import InProcessCacheStore
    from gateway.cache.verifier import Verifier
    from gateway.embedding.batcher import EmbeddingBatcher
    from gateway.embedding.embedder import default_model_path
    from gateway.policy.signals import QUESTION_MEMO, LazyEmbedder

    embed = ThreadsOf(LazyEmbedder(default_model_path()).embed_one)
    verifier = ScoredOn()
    directive = CacheDirective(similarity=Verifier().card.recommended_threshold)
    store = InProcessCacheStore()
    answer = completion("stop", content="Practise every day.")

    async def scenario() -> tuple[int, Any]:
        batcher = EmbeddingBatcher(embed)
        cache = AnswerCache(store, None, verifier, batcher=batcher)
        try:
            first = cache.keys(ask(ORIGINAL), directive, "alpha", "frontier", no_cache=False)
            second = cache.keys(ask(PARAPHRASE), directive, "alpha", "frontier", no_cache=False)
            assert first is not None and second is not None
            memo: dict[Any, Any] = {}
            assert await cache.lookup(first, directive, memo) is None
            assert QUESTION_MEMO in memo  # embedded by the batcher for the semantic layer
            assert await cache.remember(first, directive, answer, "frontier", "big", memo)
            assert len(store) == 0  # kept in the background, not before the answer goes out
            # A lookup in the same context waits for the store under way: a replica reads its writes.
            hit = await cache.lookup(second, directive, {})
            assert hit is not None and hit.kind == "semantic" and hit.key == first.exact
            # Without the vector in the memo, the store embeds it first (still in the background).
            third = cache.keys(ask("What is a good name for a cat?"), directive, "alpha", "frontier", False)
            assert third is not None
            assert await cache.remember(third, directive, answer, "frontier", "big", {})
            await cache.flush()
            assert len(store) == 2
            return threading.get_ident(), batcher
        finally:
            await cache.aclose()
            await batcher.aclose()

    loop_thread, batcher = asyncio.run(scenario())
    assert embed.threads and loop_thread not in embed.threads
    assert verifier.score.threads and loop_thread not in verifier.score.threads
    assert batcher.stats.computed == 3  # each question once


def test_a_store_that_fails_loses_the_entry_not_the_request(tmp_path: Path) -> None:
    from gateway.cache.answer_cache import AnswerCache
    from gateway.cache.store import InProcessCacheStore
    from gateway.embedding.batcher import EmbeddingBatcher
    from gateway.policy.signals import LazyEmbedder

    # The question has to be embedded before it is stored, and the embedder's model is not there.
    batcher = EmbeddingBatcher(LazyEmbedder(tmp_path / "absent.onnx").embed_one)
    store = InProcessCacheStore()
    directive = CacheDirective(similarity=0.9)

    async def scenario() -> AnswerCache:
        cache = AnswerCache(store, batcher=batcher)
        keys = cache.keys(ask(ORIGINAL), directive, "alpha", "frontier", no_cache=False)
        assert keys is not None
        assert await cache.remember(keys, directive, completion("stop", content="x"), "f", "b", {})
        await cache.aclose()  # finishes the stores under way
        await batcher.aclose()
        return cache

    assert asyncio.run(scenario()).stores_failed == 1
    assert len(store) == 0


def test_a_swamped_embedder_turns_the_semantic_layer_off_for_the_request_not_the_request_down() -> None:
    from gateway.cache.answer_cache import AnswerCache
    from gateway.cache.store import InProcessCacheStore
    from gateway.embedding.batcher import EmbeddingBatcher
    from gateway.embedding.embedder import default_model_path
    from gateway.policy.signals import LazyEmbedder
    from tests.embedding.test_batcher import Gate, held

    gate = Gate(LazyEmbedder(default_model_path()).embed_one)
    directive = CacheDirective(similarity=0.5)

    async def scenario() -> AnswerCache:
        batcher = EmbeddingBatcher(gate, max_waiting=1, recent=0)
        cache = AnswerCache(InProcessCacheStore(), None, ScoredOn(), batcher=batcher)
        try:
            first = cache.keys(ask(ORIGINAL), directive, "alpha", "frontier", no_cache=False)
            second = cache.keys(ask(PARAPHRASE), directive, "alpha", "frontier", no_cache=False)
            assert first is not None and second is not None
            waiting = asyncio.ensure_future(cache.lookup(first, directive, {}))
            await held(gate)  # the one place in the queue is taken
            assert await cache.lookup(second, directive, {}) is None
            gate.open()
            assert await waiting is None
            return cache
        finally:
            await cache.aclose()
            await batcher.aclose()

    assert asyncio.run(scenario()).semantic_skipped == 1


def test_a_verifier_that_does_not_load_turns_semantic_hits_off_instead_of_failing(tmp_path: Path) -> None:
    from gateway.cache.verifier import DEFAULT_PATH, LazyVerifier, card_path_for, tokenizer_path_for

    broken = tmp_path / "verifier-int8.onnx"
    broken.write_bytes(b"not a model")
    for copy in (tokenizer_path_for, card_path_for):
        copy(broken).write_bytes(copy(DEFAULT_PATH).read_bytes())
    verifier = LazyVerifier(broken)
    assert verifier.score("a question", "the same question") == 0.0
    assert verifier.score("a question", "the same question") == 0.0  # logged once, not retried
    assert (
        LazyVerifier(DEFAULT_PATH).score("How do I reset my password?", "How can I reset my password?") > 0.5
    )
