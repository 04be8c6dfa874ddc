"""The router's own-traffic loop end to end, through real servers on loopback: a rule sends every
request to a weak local upstream and a labelled shadow copy to a strong one; the gateway labels each
request by whether the two answers agree (closed-form numbers) and records it; `gateway router retrain`
fits on the earlier requests and judges on the later ones (with `eval routing --recorded` showing the
curve); and the policy guard accepts the router where the weak upstream's failures follow the prompts,
and refuses it where they are noise."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.quiz_upstream import FakeQuizUpstream
from tests.conftest import RunningGateway
from tests.gateway_process import run_command

REQUESTS = 160


def hard(text: str) -> bool:
    """The weak upstream fails questions about rockets: something a router can learn from the prompt."""
    return "rocket" in text


def coin(text: str) -> bool:
    """...or fails at random: nothing to learn."""
    return hashlib.sha256(text.encode()).digest()[0] % 2 == 0


@pytest.fixture
def quiz(bg: BackgroundLoop) -> Iterator[Callable[[Callable[[str], bool]], FakeQuizUpstream]]:
    started: list[FakeQuizUpstream] = []

    def start(wrong: Callable[[str], bool]) -> FakeQuizUpstream:
        upstream = FakeQuizUpstream(wrong=wrong)
        bg.run(upstream.start())
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        bg.run(upstream.stop())


def deployments(weak: FakeQuizUpstream, strong: FakeQuizUpstream) -> dict[str, Any]:
    price = {"input_per_mtok": 1, "output_per_mtok": 1}
    return {
        "weak": {"provider": "openai", "model": "weak", "api_base": weak.base_url, "price": price},
        "strong": {"provider": "openai", "model": "strong", "api_base": strong.base_url, "price": price},
    }


def spec(weak: FakeQuizUpstream, strong: FakeQuizUpstream) -> dict[str, Any]:
    return {
        "deployments": deployments(weak, strong),
        "routes": {"local": ["weak"], "frontier": ["strong"]},
        "signals": {"size": {"kind": "size", "of": "prompt_tokens"}},
        "rules": [
            {
                "name": "all-local",
                "when": {"signal": "size", "gte": 0},
                "route": "local",
                "shadow": "frontier",
                "shadow_labels": True,
            }
        ],
        "default_route": "frontier",
    }


def prompts(seed: int) -> list[str]:
    generator = random.Random(seed)
    topics = [
        "A question about rocket engines and orbital launch windows",
        "A question about the price of apples at the farmers market",
    ]
    return [
        f"{generator.choice(topics)}: what is {generator.randint(1, 99)} plus {generator.randint(1, 99)}?"
        for _ in range(REQUESTS)
    ]


def record_labels(gw: RunningGateway, state: Path, seed: int) -> Path:
    for text in prompts(seed):
        body = {"model": "auto", "messages": [{"role": "user", "content": text}], "temperature": 0}
        assert httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=30).status_code == 200
    decisions = state / "decisions.sqlite"
    deadline = time.monotonic() + 30
    while True:
        with sqlite3.connect(decisions) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM outcomes").fetchone()
        if count == REQUESTS:
            return decisions
        assert time.monotonic() < deadline, f"{count} of {REQUESTS} requests labelled"
        time.sleep(0.1)


def guarded_policy(
    tmp_path: Path, model: Path, weak: FakeQuizUpstream, strong: FakeQuizUpstream
) -> list[str]:
    policy = {
        "routes": {"local": {"deployments": ["weak"]}, "frontier": {"deployments": ["strong"]}},
        "signals": {"needs_strong": {"kind": "learned_score", "model": str(model), "beats_random_by": 0.1}},
        "rules": [{"name": "learned", "when": {"signal": "needs_strong", "gt": 0.5}, "route": "frontier"}],
        "default_route": "local",
    }
    policy_file, config_file = tmp_path / f"{model.parent.name}-policy.yaml", tmp_path / "deployments.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    config_file.write_text(yaml.safe_dump({"deployments": deployments(weak, strong)}))
    return ["policy", "validate", str(policy_file), "--config", str(config_file)]


def test_the_loop_learns_from_labelled_shadows_and_the_guard_tells_a_router_from_noise(
    quiz: Callable[[Callable[[str], bool]], FakeQuizUpstream],
    gateway: Callable[..., RunningGateway],
    tmp_path: Path,
) -> None:
    strong = quiz(lambda _: False)
    learnable_weak, noisy_weak = quiz(hard), quiz(coin)
    kept: dict[str, Path] = {}
    for name, weak, seed in (("learnable", learnable_weak, 1), ("noise", noisy_weak, 2)):
        state = tmp_path / f"state-{name}"
        gw = gateway(spec(weak, strong), state_dir=state)
        decisions = record_labels(gw, state, seed)
        with sqlite3.connect(decisions) as db:
            labels = db.execute("SELECT agree, method, length(vector) FROM outcomes").fetchall()
        assert {method for _, method, _ in labels} == {"closed_form"}
        assert {size for _, _, size in labels} == {384 * 4}  # the prompt's embedding, never its text
        assert 0.2 < sum(agree for agree, _, _ in labels) / REQUESTS < 0.8
        report, plot = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
        curve = run_command(
            "eval",
            "routing",
            "--recorded",
            "--decisions",
            str(decisions),
            "--json",
            str(report),
            "--png",
            str(plot),
        )
        assert curve.returncode == 0, curve.stderr
        assert "judged on the 48 after them" in curve.stdout and plot.stat().st_size > 10_000
        # Kept where the gateway's dashboard looks: its state directory.
        output = state / "routers"
        retrained = run_command(
            "router", "retrain", "--decisions", str(decisions), "--output-dir", str(output)
        )
        assert retrained.returncode == 0, retrained.stderr
        kept[name] = output / "all" / "v1.npz"
        card = orjson.loads(kept[name].with_suffix(".json").read_bytes())
        held = card["held_out"]
        if name == "learnable":
            assert held["apgr"] > held["random_apgr"] + 0.2 and held["p_value"] < 0.01
        else:
            assert held["apgr"] - held["random_apgr"] < 0.1
        assert len(card["curve"]["random"]) == 21 and card["curve"]["random"][-1] == [1.0, 1.0]
        page = httpx.get(f"{gw.url}/dashboard", timeout=30)
        assert page.status_code == 200, page.text[:300]
        row = page.text.split('<table id="routers">')[1].split("</table>")[0]
        assert "<td>all</td><td>v1</td>" in row and f"{held['apgr']:.3f}" in row and "<polyline" in row
    accepted = run_command(*guarded_policy(tmp_path, kept["learnable"], learnable_weak, strong))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    refused = run_command(*guarded_policy(tmp_path, kept["noise"], noisy_weak, strong))
    assert refused.returncode == 1
    assert "does not beat random routing by 0.1" in refused.stdout + refused.stderr
