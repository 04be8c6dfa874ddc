"""The async step before `decide`: the embeddings a policy's rules can ask for, computed through the
batcher (off the event loop) and left in the request's memo, so `decide` only reads them."""

from __future__ import annotations

import asyncio
import textwrap
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from gateway.embedding.batcher import EmbeddingBatcher
from gateway.embedding.embedder import Embedder
from gateway.policy.compile import CompiledPolicy, compile_policy_text
from gateway.policy.decide import decide
from gateway.policy.prepare import embedding_evaluators, prepare_embeddings
from gateway.policy.signals import QUESTION_MEMO, LazyEmbedder, RequestFacts, SignalTools
from gateway.tokens import TokenCounter
from tests.policy.test_semantic import MODEL, POLICY

NO_EMBEDDINGS = """\
routes:
  frontier: {deployments: [big]}
  local: {deployments: [small]}
signals:
  long: {kind: size, of: prompt_tokens}
rules:
  - {name: big, when: {signal: long, gt: 1000}, route: frontier}
default_route: local
"""
# A semantic signal that no rule names, beside one that a rule does.
UNUSED = POLICY.replace(
    "rules:\n", "  unused: {kind: semantic, in: system, categories: {x: [anything at all]}}\nrules:\n"
)


class CountedEmbedder:
    """The real embedder, counting the synchronous calls made on whichever thread."""

    def __init__(self, embedder: LazyEmbedder) -> None:
        self._embedder = embedder
        self.calls = 0
        self.threads: set[int] = set()

    def embed(self, texts: Sequence[str]) -> Any:
        self.calls += 1
        return self._embedder.embed(texts)

    def embed_one(self, text: str) -> Any:
        self.threads.add(threading.get_ident())
        return self._embedder.embed_one(text)


@pytest.fixture(scope="module")
def lazy() -> LazyEmbedder:
    assert MODEL.exists(), f"{MODEL} is missing: run `make embedder` (make test builds it)"
    return LazyEmbedder(MODEL)


@pytest.fixture
def counted(lazy: LazyEmbedder) -> CountedEmbedder:
    return CountedEmbedder(lazy)


@pytest.fixture
def batcher(counted: CountedEmbedder) -> Iterator[EmbeddingBatcher]:
    batcher = EmbeddingBatcher(counted.embed_one)
    yield batcher
    asyncio.run(batcher.aclose())


def compiled(counted: CountedEmbedder, batcher: EmbeddingBatcher, text: str = POLICY) -> CompiledPolicy:
    tools = SignalTools(TokenCounter(), counted, batcher=batcher)
    return compile_policy_text(textwrap.dedent(text), "p.yaml", {"big", "small"}, tools, name="p")


def ask(text: str, **facts: Any) -> RequestFacts:
    return RequestFacts(body={"messages": [{"role": "user", "content": text}]}, **facts)


def test_decide_reads_the_prepared_embedding_and_computes_none_itself(
    counted: CountedEmbedder, batcher: EmbeddingBatcher
) -> None:
    policy = compiled(counted, batcher)
    facts = ask("How can I sort a dictionary by value in Python?")
    synchronous = counted.calls  # the exemplars, embedded at compile time

    loop_thread = asyncio.run(prepare_and_note_thread(policy, facts))
    assert np.array_equal(
        facts.memo[QUESTION_MEMO], Embedder(MODEL, max_tokens=128).embed_one(facts.text("last_user"))
    )
    decision = decide(policy, facts)
    assert decision.rule == "code" and decision.signals["topic"] == "coding"
    assert counted.calls == synchronous  # decide embedded nothing
    assert counted.threads and loop_thread not in counted.threads
    # Unprepared (the CLI, replay), decide still computes it, synchronously, to the same decision.
    unprepared = decide(policy, ask("How can I sort a dictionary by value in Python?"))
    assert unprepared == decision and counted.calls == synchronous + 1


async def prepare_and_note_thread(policy: CompiledPolicy, facts: RequestFacts) -> int:
    await prepare_embeddings(policy, facts)
    return threading.get_ident()


def test_a_policy_without_embedding_signals_costs_nothing(
    counted: CountedEmbedder, batcher: EmbeddingBatcher
) -> None:
    policy = compiled(counted, batcher, NO_EMBEDDINGS)
    facts = ask("How can I sort a dictionary by value in Python?")
    asyncio.run(prepare_embeddings(policy, facts))
    assert facts.memo == {} and batcher.stats.calls == 0 and embedding_evaluators(policy) == {}


def test_only_signals_a_rule_names_are_prepared_unless_explaining(
    counted: CountedEmbedder, batcher: EmbeddingBatcher
) -> None:
    policy = compiled(counted, batcher, UNUSED)
    assert set(embedding_evaluators(policy)) == {"topic"}
    assert set(embedding_evaluators(policy, explain=True)) == {"topic", "topic_of_everything", "unused"}
    facts = ask("My code throws a NullPointerException")
    asyncio.run(prepare_embeddings(policy, facts))
    assert set(facts.memo) == {QUESTION_MEMO}
    explained = ask("My code throws a NullPointerException")
    asyncio.run(prepare_embeddings(policy, explained, explain=True))
    assert set(explained.memo) == {QUESTION_MEMO, ("embedding", "all"), ("embedding", "system")}
    synchronous = counted.calls
    decide(policy, explained, explain=True)
    assert counted.calls == synchronous


def test_given_values_and_replays_are_not_embedded(
    counted: CountedEmbedder, batcher: EmbeddingBatcher
) -> None:
    policy = compiled(counted, batcher)
    given = ask("Write a Python function", given={"topic": "coding"})
    replayed = ask("", given={"topic": "coding"}, only_given=True)
    for facts in (given, replayed):
        asyncio.run(prepare_embeddings(policy, facts))
        assert facts.memo == {}
    assert batcher.stats.calls == 0


def test_a_learned_score_without_user_text_embeds_nothing(
    counted: CountedEmbedder, batcher: EmbeddingBatcher
) -> None:
    from tests.policy.test_semantic import LEARNED

    policy = compiled(counted, batcher, LEARNED)
    facts = RequestFacts(body={"messages": [{"role": "system", "content": "Be brief."}]})
    asyncio.run(prepare_embeddings(policy, facts))
    assert facts.memo == {} and decide(policy, facts).signals["strong_needed"] is None
    asked = ask("Prove that there are infinitely many primes.")
    asyncio.run(prepare_embeddings(policy, asked))
    assert set(asked.memo) == {QUESTION_MEMO}
