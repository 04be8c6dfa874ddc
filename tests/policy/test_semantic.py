"""The semantic-category signal: nearest labelled examples by the local embedder."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.compile import CompiledPolicy, PolicyError, compile_policy_text
from gateway.policy.decide import decide
from gateway.policy.signals import RequestFacts, SignalTools, load_signal_tools
from gateway.router.model import RouterModel
from gateway.settings import Settings
from gateway.tokens import TokenCounter

MODEL = Path(__file__).resolve().parents[2] / Settings.model_fields["embedder_path"].default
POLICY = """\
routes:
  frontier: {deployments: [big]}
  local: {deployments: [small]}
signals:
  topic:
    kind: semantic
    min_similarity: 0.25
    categories:
      coding:
        - Write a Python function that reverses a list
        - Why does my JavaScript code throw TypeError?
        - My program crashes with an error, how do I fix this bug?
      billing: ["I was charged twice on my credit card", "How do I get a refund for my subscription?"]
  topic_of_everything: {kind: semantic, in: all, categories: {coding: ["Fix this bug in my code"]}}
rules:
  - {name: code, when: {signal: topic, eq: coding}, route: frontier}
  - {name: money, when: {signal: topic, in: [billing]}, route: local}
default_route: local
tests:
  - name: a bug report is coding
    request: {body: {messages: [{role: user, content: "My Rust program panics with index out of bounds"}]}}
    expect: {rule: code, route: frontier}
  - name: a refund question is billing
    request: {body: {messages: [{role: user, content: "Can I have my money back? You billed me two times."}]}}
    expect: {rule: money, route: local}
"""


@pytest.fixture(scope="module")
def tools() -> SignalTools:
    assert MODEL.exists(), f"{MODEL} is missing: run `make embedder` (make test builds it)"
    return load_signal_tools(TokenCounter(), MODEL)


def compiled(tools: SignalTools, text: str = POLICY) -> CompiledPolicy:
    return compile_policy_text(
        textwrap.dedent(text), "semantic.yaml", {"big", "small"}, tools, name="semantic"
    )


def ask(text: str) -> RequestFacts:
    return RequestFacts(body={"messages": [{"role": "user", "content": text}]})


def test_requests_fall_into_the_nearest_category(tools: SignalTools) -> None:
    policy = compiled(tools)  # the golden cases above pass, or this raises
    assert decide(policy, ask("How can I sort a dictionary by value in Python?")).signals["topic"] == "coding"
    assert decide(policy, ask("Why is there a second payment on my statement?")).signals["topic"] == "billing"
    unrelated = decide(policy, ask("What a lovely sunset over the sea tonight"), explain=True)
    assert unrelated.signals["topic"] is None and unrelated.rule == "default"
    assert "topic = null" in unrelated.outcomes[0].why


def test_the_request_is_embedded_once_per_text_and_shared(tools: SignalTools) -> None:
    policy = compiled(tools)
    facts = ask("My code throws a NullPointerException")
    decide(policy, facts, explain=True)  # evaluates both semantic signals
    assert set(facts.memo) == {("embedding", "last_user"), ("embedding", "all")}


def test_without_the_embedder_a_semantic_policy_does_not_load() -> None:
    bare = SignalTools(TokenCounter(), None, "the embedder model x.onnx is missing: run `make embedder`")
    with pytest.raises(PolicyError) as caught:
        compiled(bare)
    assert caught.value.problems[0].startswith("semantic.yaml:5: signals.topic: a semantic signal needs")
    assert "make embedder" in caught.value.problems[0]


def test_semantic_comparisons_are_checked(tools: SignalTools) -> None:
    bad: Any = POLICY.replace("{signal: topic, eq: coding}", "{signal: topic, gt: 3}")
    with pytest.raises(PolicyError) as caught:
        compiled(tools, bad)
    assert "'gt' does not apply to 'topic' (semantic)" in caught.value.problems[0]


LEARNED = """\
routes:
  frontier: {deployments: [big]}
  local: {deployments: [small]}
signals:
  strong_needed: {kind: learned_score}
rules:
  - {name: hard, when: {signal: strong_needed, gt: 0.5}, route: frontier}
default_route: local
"""


def test_the_learned_score_is_the_routers_probability_over_the_shared_embedding(tools: SignalTools) -> None:
    policy = compiled(tools, LEARNED)
    maths = ask(
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q. "
        "A. 0 B. 4 C. 2 D. 6 Answer:"
    )
    chat = ask("Say hello to my friend in a cheerful way.")
    decided = {
        name: decide(policy, facts, explain=True) for name, facts in (("maths", maths), ("chat", chat))
    }
    scores = {name: decision.signals["strong_needed"] for name, decision in decided.items()}
    assert all(isinstance(score, float) and 0 < score < 1 for score in scores.values())
    assert scores["maths"] != scores["chat"]
    assert tools.embedder is not None
    model = RouterModel()
    for name, facts in (("maths", maths), ("chat", chat)):
        text = facts.body["messages"][-1]["content"]
        assert scores[name] == pytest.approx(model.score(tools.embedder.embed([text])[0], text), abs=1e-4)
    # Computed over the request's shared embedding, which the cache reads from the memo too.
    assert ("embedding", "last_user") in maths.memo
    # A given value wins (replays, golden cases); a request with no user text scores null.
    assert decide(policy, RequestFacts(body={}, given={"strong_needed": 0.9})).rule == "hard"
    assert decide(policy, RequestFacts(body={"messages": []})).signals["strong_needed"] is None


def test_a_learned_score_needs_a_router_model(tools: SignalTools, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"router model .* not found"):
        compiled(
            tools,
            LEARNED.replace("{kind: learned_score}", f"{{kind: learned_score, model: {tmp_path}/x.npz}}"),
        )
