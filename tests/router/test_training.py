"""`gateway router train` end to end on a small sample, and the policy reading what it wrote."""

from __future__ import annotations

import textwrap
from pathlib import Path

import orjson

from gateway.policy.compile import compile_policy_text
from gateway.policy.decide import decide
from gateway.policy.signals import RequestFacts, load_signal_tools
from gateway.router.model import RouterModel
from gateway.tokens import TokenCounter
from tests.gateway_process import run_command
from tests.router.test_evaluate import EASY, HARD


def test_a_trained_router_routes_what_it_learned(tmp_path: Path) -> None:
    data = tmp_path / "outcomes.jsonl"
    rows = [{"prompt": p, "weak": 0, "strong": 1} for p in HARD]
    rows += [{"prompt": p, "weak": 1, "strong": 1} for p in EASY]
    data.write_bytes(b"\n".join(orjson.dumps(row) for row in rows))
    model = tmp_path / "router.npz"
    done = run_command("router", "train", str(data), "--output", str(model))
    assert done.returncode == 0, done.stderr
    assert "40 prompts from outcomes, 50.0% needing the strong model" in done.stdout
    assert RouterModel(model).prompts == 40
    policy = compile_policy_text(
        textwrap.dedent(f"""\
            routes:
              frontier: {{deployments: [big]}}
              local: {{deployments: [small]}}
            signals:
              strong_needed: {{kind: learned_score, model: "{model}"}}
            rules:
              - {{name: hard, when: {{signal: strong_needed, gt: 0.5}}, route: frontier}}
            default_route: local
            """),
        "trained.yaml",
        {"big", "small"},
        load_signal_tools(TokenCounter()),
        name="trained",
    )

    def route(text: str) -> str:
        return decide(policy, RequestFacts(body={"messages": [{"role": "user", "content": text}]})).route

    assert (
        route("Prove that the sum of the first 25 odd numbers is a perfect square, step by step.")
        == "frontier"
    )
    assert route("Say hello to my friend number 25 in a cheerful way.") == "local"
