"""Which answers the cache keeps, and the keys that keep tenants and contexts apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.cache.answer_cache import cacheable_request, keepable, namespace_of
from gateway.cache.keys import cache_keys
from gateway.policy.schema import CacheDirective
from gateway.providers.base import Completion

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
    assert cache.question_vector(keys, facts.memo) is facts.memo[QUESTION_MEMO]
    # Without the policy's embedding, the cache computes the same vector itself.
    fresh: dict[object, object] = {}
    vector = cache.question_vector(keys, fresh)
    assert vector is not None and float(vector @ facts.memo[QUESTION_MEMO]) == pytest.approx(1.0, abs=1e-5)


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
