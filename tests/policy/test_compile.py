"""Compiling policies: every signal kind and operator, priority, splits, and each kind of bad policy."""

from __future__ import annotations

import textwrap
import time
from typing import Any

import pytest

from gateway.policy.compile import CompiledPolicy, PolicyError, compile_policy_text
from gateway.policy.decide import decide, route_order
from gateway.policy.schema import Route
from gateway.policy.signals import RequestFacts, SignalTools
from gateway.tokens import TokenCounter

DEPLOYMENTS = {"big", "big-2", "small", "small-2"}
TOOLS = SignalTools(TokenCounter())

BASE = """\
routes:
  frontier: {deployments: [big, big-2]}
  local: {deployments: [small]}
default_route: frontier
"""


def compiled(text: str) -> CompiledPolicy:
    return compile_policy_text(textwrap.dedent(text), "test.yaml", DEPLOYMENTS, TOOLS, name="test")


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        compiled(text)
    return caught.value.problems


def one_rule(signal: str, when: str) -> str:
    return BASE + f"signals:\n  s: {signal}\nrules:\n  - {{name: r, route: local, when: {when}}}\n"


def user(text: str, **body: Any) -> RequestFacts:
    return RequestFacts(body={"messages": [{"role": "user", "content": text}], **body})


@pytest.mark.parametrize(
    ("signal", "when", "facts", "matched"),
    [
        ("{kind: size, of: prompt_tokens}", "{signal: s, lt: 10}", user("hi"), True),
        ("{kind: size, of: prompt_tokens}", "{signal: s, gte: 10}", user("hi"), False),
        ("{kind: size, of: messages}", "{signal: s, eq: 1}", user("hi"), True),
        ("{kind: size, of: max_tokens}", "{signal: s, gt: 100}", user("hi", max_tokens=500), True),
        ("{kind: size, of: max_tokens}", "{signal: s, gt: 100}", user("hi"), False),  # null never compares
        ("{kind: feature, of: tools}", "{signal: s, eq: true}", user("x", tools=[{"type": "function"}]), True),
        ("{kind: feature, of: json_mode}", "{signal: s, eq: true}", user("x", response_format={"type": "json_object"}),
         True),
        ("{kind: feature, of: stream}", "{signal: s, ne: true}", user("x", stream=True), False),
        ("{kind: feature, of: images}", "{signal: s, eq: true}",
         RequestFacts(body={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
         True),
        ("{kind: keywords, words: [refund, chargeback]}", "{signal: s, eq: true}", user("I want a Refund now"), True),
        ("{kind: keywords, words: [refund]}", "{signal: s, eq: true}", user("refunds are words too"), False),
        ("{kind: keywords, words: [Refund], case_sensitive: true}", "{signal: s, eq: true}", user("refund"), False),
        ("{kind: keywords, words: [secret], in: system}", "{signal: s, eq: true}", user("secret"), False),
        ("{kind: regex, pattern: '\\d{4}-\\d{2}'}", "{signal: s, eq: true}", user("due 2026-11"), True),
        ("{kind: metadata, of: team}", "{signal: s, in: [search, ads]}", RequestFacts(body={}, team="ads"), True),
        ("{kind: metadata, of: team}", "{signal: s, not_in: [search, ads]}", RequestFacts(body={}, team="ads"), False),
        ("{kind: metadata, of: role}", "{signal: s, eq: admin}", RequestFacts(body={}, role="admin"), True),
        ("{kind: metadata, of: user}", "{signal: s, contains: bot}", user("x", user="slack-bot-7"), True),
        ("{kind: metadata, of: tags}", "{signal: s, contains: batch}", RequestFacts(body={}, tags=("batch",)), True),
        ("{kind: budget_spent}", "{signal: s, gte: 0.9}", RequestFacts(body={}, given={"s": 0.95}), True),
        ("{kind: route_healthy, route: frontier}", "{signal: s, eq: false}",
         RequestFacts(body={}, route_healthy=lambda route: route != "frontier"), True),
    ],
)  # fmt: skip
def test_every_signal_kind_and_operator(signal: str, when: str, facts: RequestFacts, matched: bool) -> None:
    policy = compiled(one_rule(signal, when))
    assert decide(policy, facts).rule == ("r" if matched else "default")
    explained = decide(policy, facts, explain=True)
    assert explained.rule == ("r" if matched else "default")
    assert explained.outcomes[0].matched is matched and "s = " in explained.outcomes[0].why


def test_conditions_nest_and_the_first_matching_rule_wins() -> None:
    policy = compiled(
        BASE
        + """\
signals:
  tokens: {kind: size, of: prompt_tokens}
  team: {kind: metadata, of: team}
rules:
  - name: vip
    when: {all: [{signal: team, eq: vip}, {not: {signal: tokens, gt: 1000}}]}
    route: frontier
  - name: small
    when: {any: [{signal: tokens, lt: 50}, {signal: team, eq: interns}]}
    route: local
"""
    )
    assert decide(policy, RequestFacts(body={"messages": []}, team="vip")).rule == "vip"
    assert decide(policy, RequestFacts(body={"messages": []}, team="interns")).rule == "small"
    explained = decide(policy, RequestFacts(body={"messages": []}, team="vip"), explain=True)
    assert [o.matched for o in explained.outcomes] == [True, True]  # explain shows every rule
    assert explained.rule == "vip"
    assert set(explained.signals) == {"tokens", "team"}


def test_signals_are_computed_only_when_a_rule_needs_them() -> None:
    policy = compiled(
        BASE
        + """\
signals:
  team: {kind: metadata, of: team}
  tokens: {kind: size, of: prompt_tokens}
rules:
  - {name: a, when: {signal: team, eq: a}, route: local}
  - {name: b, when: {signal: tokens, lt: 5}, route: local}
"""
    )
    decision = decide(policy, RequestFacts(body={"messages": []}, team="a"))
    assert decision.signals == {"team": "a"}


def test_weighted_split_follows_the_weights_and_is_stable_per_request() -> None:
    route = Route(split={"big": 9, "big-2": 1})
    picks = [route_order(route, f"req-{i}")[0] for i in range(5000)]
    assert 0.87 < picks.count("big") / len(picks) < 0.93
    assert route_order(route, "req-1") == route_order(route, "req-1")
    assert set(route_order(route, "req-1")) == {"big", "big-2"}  # the other one is the fallback


def test_rule_directives_reach_the_decision() -> None:
    policy = compiled(
        BASE
        + """\
signals: {n: {kind: size, of: messages}}
rules:
  - name: r
    when: {signal: n, gte: 1}
    route: local
    cache: {ttl_seconds: 60, verify_sample: 0.1}
    overrides: {max_tokens: 64, timeout_seconds: 5}
    shadow: frontier
"""
    )
    decision = decide(policy, user("x"))
    assert decision.cache is not None and decision.cache.verify_sample == 0.1
    assert decision.overrides is not None and decision.overrides.max_tokens == 64
    assert decision.shadow == "frontier"
    assert decision.deployments == ("small",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + "rules:\n  - {name: r, route: local, when: {signal: s, eq: 1}, colour: red}\n",
         "test.yaml:6: rules.0.colour: unknown key 'colour'"),
        (BASE + "signals:\n  s: {kind: learned_score}\n",
         "test.yaml:6: signals.s: a learned_score signal needs the local embedder"),
        (BASE + "signals:\n  s: {kind: regex, pattern: '(unclosed'}\n",
         "test.yaml:6: signals.s.pattern: not a usable regular expression: missing ): (unclosed"),
        (BASE + "signals:\n  s: {kind: regex, pattern: '(\\w)\\1'}\n",
         "signals.s.pattern: not a usable regular expression: invalid escape sequence: \\1 (patterns run on RE2"),
        (BASE + "signals:\n  s: {kind: regex, pattern: '(?<!x)y'}\n",
         "no backreferences or lookaround"),
        (BASE + "signals:\n  s: {kind: regex, pattern: '(" + "|".join(f"w{n}" for n in range(4000)) + "){1000}'}\n",
         "signals.s.pattern: not a usable regular expression"),
        (BASE + "signals: {s: {kind: size, of: messages}}\nrules:\n  - {name: r, route: local, when: {signal: s, eq: 1}, cache: {similarity: 0.9}}\n",
         "test.yaml:7: rules.0.cache.similarity: semantic caching needs the local embedder"),
        (BASE + "signals: {s: {kind: size, of: messages}}\nrules:\n  - {name: r, route: nowhere, when: {signal: s, eq: 1}}\n",
         "test.yaml:7: rules.0.route: unknown route 'nowhere'"),
        ("routes:\n  frontier: {deployments: [big, ghost]}\ndefault_route: frontier\n",
         "test.yaml:2: routes.frontier.deployments: unknown deployment 'ghost'"),
        ("routes:\n  frontier: {deployments: []}\ndefault_route: frontier\n",
         "test.yaml:2: routes.frontier.deployments: List should have at least 1 item"),
        (BASE + "rules:\n  - {name: r, route: local, when: {signal: missing, eq: 1}}\n",
         "test.yaml:6: rules.0.when: unknown signal 'missing'"),
        (BASE + "signals: {s: {kind: size, of: messages}}\nrules:\n  - {name: r, route: local, when: {signal: s, contains: x}}\n",
         "'contains' does not apply to 's' (size)"),
        (BASE + "tests:\n  - name: t\n    request: {body: {messages: []}}\n    expect: {rule: default, route: local}\n",
         "test.yaml:6: tests.0: golden case 't' failed: expected rule 'default' -> route 'local', "
         "got rule 'default' -> route 'frontier'"),
        ("a: &x [1, 2]\nb: [*x, *x, *x]\n", "test.yaml:1: anchors and aliases are not allowed"),
        ("routes: {r: {deployments: [big]}}\ndefault_route: r\nroutes: {}\n", "duplicate key 'routes'"),
        ("", "the policy is empty"),
    ],
)  # fmt: skip
def test_bad_policies_are_rejected_naming_the_place(text: str, expected: str) -> None:
    assert any(expected in problem for problem in problems(text)), problems(text)


def test_a_pattern_that_backtracks_forever_in_python_decides_at_once() -> None:
    """`(a|aa)+$` on 100,000 a's and a b: exponential for Python's `re`, linear for RE2. A time bound,
    not a benchmark: the old engine would not finish in a lifetime."""
    text = BASE + "signals:\n  s: {kind: regex, in: user, pattern: '(a|aa)+$'}\n"
    text += "rules:\n  - {name: r, route: local, when: {signal: s, eq: true}}\n"
    policy = compile_policy_text(text, "test.yaml", DEPLOYMENTS, TOOLS, name="test")
    started = time.perf_counter()
    decided = decide(policy, user("a" * 100_000 + "b"))
    assert time.perf_counter() - started < 2.0
    assert decided.route == "frontier"
    assert decide(policy, user("aaaa")).route == "local"


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        (r"((a{100}){100}){100}", "invalid repetition size"),  # a billion-state automaton
        (r"(\w{1000}){1000}", "invalid repetition size"),
        ("(" * 5_000 + "a" + ")" * 5_000, None),  # deep, but linear
        ("(a|b|c|d|e)" * 5_000, None),  # 55 KB of pattern, 15,000 instructions
        ("(a|b|c|d|e)" * 20_000, "pattern too large: 60,004 instructions"),  # 6.4 s a search, unlimited
        (r"[\p{L}\p{N}]{1000}" * 50, "pattern too large - compile failed"),  # past RE2's memory budget
    ],
)
def test_a_huge_pattern_is_refused_or_compiled_and_run_in_bounded_time(
    pattern: str, refused: str | None
) -> None:
    text = BASE + f"signals:\n  s: {{kind: regex, in: user, pattern: '{pattern}'}}\n"
    text += "rules:\n  - {name: r, route: local, when: {signal: s, eq: true}}\n"
    started = time.perf_counter()
    if refused is not None:
        assert any(refused in problem for problem in problems(text))
    else:
        policy = compile_policy_text(text, "test.yaml", DEPLOYMENTS, TOOLS, name="test")
        decide(policy, user("ab1" * 40_000))
    assert time.perf_counter() - started < 3.0
