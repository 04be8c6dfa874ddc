"""The agent CLIs as real clients, headless: OpenAI's Codex CLI (`codex exec`, the Responses API) and
Anthropic's Claude Code (`claude -p`, the Messages API), each against the gateway on loopback in front
of the fake chat upstream.

The CLIs are npm packages pinned in tests/clients/node/package-lock.json and installed by `make
agent-clis` (a prerequisite of `make test`) into .gateway/node; a test skips only when its CLI is not
installed there. Each run gets a private HOME and config directory under tmp_path and an environment
of its own (nothing of the developer's: no real keys, no real config), with telemetry, update checks,
error reporting and the other non-essential traffic turned off, so that the only address either CLI
contacts is the gateway's."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.fakes.anthropic_upstream import AnthropicBehaviour, FakeAnthropicUpstream
from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import RunningGateway, free_port, ledger_rows, openai_deployment

Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]

NODE_BIN = Path(__file__).resolve().parents[2] / ".gateway" / "node" / "node_modules" / ".bin"
CODEX = NODE_BIN / "codex"
CLAUDE = NODE_BIN / "claude"
NOT_INSTALLED = "not installed in .gateway/node: run `make agent-clis` (needs the npm registry)"
# A CLI run's own limit, under the test's: a CLI that hangs fails its test with its output.
RUN_TIMEOUT = 90
ANSWER = "The lighthouse keeper is Anne."
PROMPT = "Who keeps the lighthouse? Answer in one sentence."
CLIENT_KEY = "sk-agent-cli-test"

# Codex: a model it knows (so it sends its full default tool set: the freeform apply_patch tool and the
# client-run tool search among them) through a provider of its own that speaks the Responses API to
# the gateway. Update checks, analytics, feedback, history and OpenTelemetry are off; so are the
# features that fetch from the network (plugins and their marketplace, apps, tool suggestions), and the
# hosted web search tool, which a chat upstream cannot serve (the gateway refuses it).
CODEX_MODEL = "gpt-5.5"
CODEX_CONFIG = """\
model = "{model}"
model_provider = "gateway"
check_for_update_on_startup = false
web_search = "disabled"

[analytics]
enabled = false

[feedback]
enabled = false

[history]
persistence = "none"

[otel]
exporter = "none"

[features]
plugins = false
remote_plugin = false
apps = false
plugin_sharing = false
tool_suggest = false

[model_providers.gateway]
name = "Gateway"
base_url = "{base_url}"
env_key = "GATEWAY_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""

# Claude Code: its current Sonnet by alias (so it sends what it sends by default to its current model:
# adaptive thinking, an effort setting, context management, system turns between the others).
CLAUDE_MODEL = "sonnet"
CLAUDE_QUIET = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


class ScriptedChatUpstream:
    """A chat upstream on loopback that answers the n-th request with the n-th turn of a script (the
    last one again after the end): a call of one tool, by its chat name, with the given arguments, or
    a text. Streamed when asked, as OpenAI streams; it keeps the bodies it got."""

    def __init__(self, turns: list[dict[str, Any]]) -> None:
        self.turns = turns
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        turn = self.turns[min(len(self.requests), len(self.turns)) - 1]
        call_id = f"call_{len(self.requests)}"
        base = {"id": f"chatcmpl-{len(self.requests)}", "created": int(time.time()), "model": "scripted"}
        usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
        if "tool" in turn:
            arguments = json.dumps(turn["arguments"])
            function = {"name": turn["tool"], "arguments": arguments}
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": function}],
            }
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": turn["text"]}, "stop"
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "finish_reason": finish}
            return web.json_response(
                {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta, end in self._deltas(message, call_id, finish):
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": end}],
            }
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        closing = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        await response.write(b"data: " + orjson.dumps(closing) + b"\n\ndata: [DONE]\n\n")
        return response

    @staticmethod
    def _deltas(
        message: dict[str, Any], call_id: str, finish: str
    ) -> list[tuple[dict[str, Any], str | None]]:
        """The chunks' deltas: a call's name first and its arguments in two pieces, or the text."""
        if message["content"] is not None:
            return [({"role": "assistant", "content": message["content"]}, None), ({}, finish)]
        function = message["tool_calls"][0]["function"]
        arguments = function["arguments"]
        half = len(arguments) // 2
        opening = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": function["name"], "arguments": ""},
        }
        return [
            ({"role": "assistant", "content": None, "tool_calls": [opening]}, None),
            ({"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]}, None),
            ({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}, None),
            ({}, finish),
        ]


@pytest.fixture
def scripted(bg: BackgroundLoop) -> Iterator[Callable[[list[dict[str, Any]]], ScriptedChatUpstream]]:
    started: list[ScriptedChatUpstream] = []

    def start(turns: list[dict[str, Any]]) -> ScriptedChatUpstream:
        upstream = ScriptedChatUpstream(turns)
        bg.run(upstream.start())
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        bg.run(upstream.stop())


def routed(upstream: FakeOpenAIUpstream | ScriptedChatUpstream) -> dict[str, Any]:
    return {
        "deployments": {"big": openai_deployment(upstream)},
        "routes": {"frontier": ["big"]},
        "default_route": "frontier",
        "model_aliases": {"claude-*": "auto", "gpt-5*": "auto"},
    }


def private_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment of the run's own: PATH (for the shells the CLIs start), a private HOME and
    TMPDIR, and what the CLI needs; nothing else of the developer's."""
    home = tmp_path / "home"
    temp = tmp_path / "tmp"
    for directory in (home, temp):
        directory.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(temp), **extra}


def codex_env(tmp_path: Path, gw: RunningGateway) -> dict[str, str]:
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(CODEX_CONFIG.format(model=CODEX_MODEL, base_url=gw.base_url))
    return private_env(tmp_path, CODEX_HOME=str(codex_home), GATEWAY_API_KEY=CLIENT_KEY)


def claude_env(tmp_path: Path, gw: RunningGateway) -> dict[str, str]:
    config = tmp_path / "claude-config"
    config.mkdir(exist_ok=True)
    return private_env(
        tmp_path,
        CLAUDE_CONFIG_DIR=str(config),
        ANTHROPIC_BASE_URL=gw.url,  # the client adds /v1/messages itself
        ANTHROPIC_API_KEY=CLIENT_KEY,
        **CLAUDE_QUIET,
    )


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        command,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def failure(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )


@pytest.mark.timeout(120)
@pytest.mark.skipif(not CODEX.exists(), reason=f"the Codex CLI is {NOT_INSTALLED}")
def test_codex_exec_is_answered_through_the_responses_api(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop, tmp_path: Path
) -> None:
    upstream = upstreams(Behaviour(content=ANSWER))
    gw = gateway(routed(upstream))
    command = [str(CODEX), "exec", "--skip-git-repo-check", PROMPT]
    result = run(command, codex_env(tmp_path, gw), tmp_path / "work")
    assert result.returncode == 0, failure(result)
    assert ANSWER in result.stdout, failure(result)

    sent = upstream.requests[-1]
    assert sent.headers.get("Authorization") != f"Bearer {CLIENT_KEY}"  # the client's key stays here
    body = sent.body
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["messages"][0]["role"] == "system"  # Codex's developer instructions
    assert body["messages"][-1] == {"role": "user", "content": PROMPT}
    tools = {tool["function"]["name"]: tool["function"] for tool in body["tools"]}
    # The freeform apply_patch tool, offered as a function of one string, its grammar described.
    assert tools["apply_patch"]["parameters"]["required"] == ["input"]
    assert "*** Begin Patch" in tools["apply_patch"]["description"]
    assert "exec_command" in tools

    records = ledger_rows(gw, bg)
    assert [record["api"] for record in records] == ["responses"]
    assert records[0]["status"] == 200


@pytest.mark.timeout(120)
@pytest.mark.skipif(not CLAUDE.exists(), reason=f"Claude Code is {NOT_INSTALLED}")
def test_claude_code_print_mode_is_answered_through_the_messages_api(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop, tmp_path: Path
) -> None:
    upstream = upstreams(Behaviour(content=ANSWER))
    gw = gateway(routed(upstream))
    command = [str(CLAUDE), "-p", PROMPT, "--model", CLAUDE_MODEL, "--output-format", "json"]
    result = run(command, claude_env(tmp_path, gw), tmp_path / "work")
    assert result.returncode == 0, failure(result)
    answer = json.loads(result.stdout)
    assert answer["is_error"] is False and answer["result"] == ANSWER, failure(result)

    body = upstream.requests[-1].body
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["messages"][0]["role"] == "system"  # Claude Code's system prompt
    user_text = [m["content"] for m in body["messages"] if m["role"] == "user"]
    assert any(PROMPT in json.dumps(content) for content in user_text)
    assert {"Bash", "Read", "Edit"} <= {tool["function"]["name"] for tool in body["tools"]}

    records = ledger_rows(gw, bg)
    assert [record["api"] for record in records] == ["messages"]
    assert records[0]["status"] == 200


PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello from the patch\n*** End Patch\n"


@pytest.mark.timeout(120)
@pytest.mark.skipif(not CODEX.exists(), reason=f"the Codex CLI is {NOT_INSTALLED}")
def test_codex_applies_the_freeform_patch_an_upstream_calls_for(
    scripted: Callable[[list[dict[str, Any]]], ScriptedChatUpstream],
    gateway: Gateway,
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    """The custom apply_patch tool, offered to the chat upstream as a function of one string: its
    call comes back to Codex as a custom_tool_call, which Codex applies and answers with a
    custom_tool_call_output, which reaches the upstream as a tool message."""
    upstream = scripted([{"tool": "apply_patch", "arguments": {"input": PATCH}}, {"text": "Patched."}])
    gw = gateway(routed(upstream))
    work = tmp_path / "work"
    command = [str(CODEX), "exec", "--skip-git-repo-check", "--sandbox", "workspace-write", "Add hello.txt"]
    result = run(command, codex_env(tmp_path, gw), work)
    assert result.returncode == 0, failure(result)
    assert "Patched." in result.stdout, failure(result)
    assert (work / "hello.txt").read_text() == "hello from the patch\n"

    assert len(upstream.requests) == 2
    call, output = upstream.requests[1]["messages"][-2:]
    [sent_call] = call["tool_calls"]
    assert sent_call["function"]["name"] == "apply_patch"
    assert json.loads(sent_call["function"]["arguments"]) == {"input": PATCH}
    assert output["role"] == "tool" and output["tool_call_id"] == sent_call["id"] == "call_1"
    assert "hello.txt" in output["content"]
    assert [record["api"] for record in ledger_rows(gw, bg)] == ["responses", "responses"]


@pytest.mark.timeout(120)
@pytest.mark.skipif(not CLAUDE.exists(), reason=f"Claude Code is {NOT_INSTALLED}")
def test_claude_code_writes_the_file_an_upstream_calls_for(
    scripted: Callable[[list[dict[str, Any]]], ScriptedChatUpstream],
    gateway: Gateway,
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    """A chat tool call comes back to Claude Code as a tool_use block, which it runs (its Write
    tool, allowed for this run) and answers with a tool_result, which reaches the upstream as a tool
    message."""
    work = tmp_path / "work"
    target = work / "hello.txt"
    arguments = {"file_path": str(target), "content": "hello from claude\n"}
    upstream = scripted([{"tool": "Write", "arguments": arguments}, {"text": "Written."}])
    gw = gateway(routed(upstream))
    command = [str(CLAUDE), "-p", "Write hello.txt", "--model", CLAUDE_MODEL, "--output-format", "json"]
    command += ["--permission-mode", "acceptEdits", "--allowedTools", "Write"]
    result = run(command, claude_env(tmp_path, gw), work)
    assert result.returncode == 0, failure(result)
    answer = json.loads(result.stdout)
    assert answer["is_error"] is False and answer["result"] == "Written.", failure(result)
    assert target.read_text() == "hello from claude\n"

    assert len(upstream.requests) == 2
    call, output = upstream.requests[1]["messages"][-2:]
    [sent_call] = call["tool_calls"]
    assert sent_call["function"]["name"] == "Write"
    assert json.loads(sent_call["function"]["arguments"]) == arguments
    assert output["role"] == "tool" and output["tool_call_id"] == sent_call["id"] == "call_1"
    assert str(target) in output["content"]
    assert [record["api"] for record in ledger_rows(gw, bg)] == ["messages", "messages"]


# ---- pass-through: upstreams that speak the client's own API -------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.skipif(not CODEX.exists(), reason=f"the Codex CLI is {NOT_INSTALLED}")
def test_codex_exec_passes_through_to_an_upstream_that_serves_the_responses_api(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop, tmp_path: Path
) -> None:
    upstream = upstreams(Behaviour(content=ANSWER))
    spec = routed(upstream)
    spec["deployments"]["big"]["responses_api"] = True
    gw = gateway(spec)
    result = run(
        [str(CODEX), "exec", "--skip-git-repo-check", PROMPT], codex_env(tmp_path, gw), tmp_path / "work"
    )
    assert result.returncode == 0, failure(result)
    assert ANSWER in result.stdout, failure(result)
    body = upstream.requests[-1].body
    assert "messages" not in body and body["store"] is False and body["model"] == "fake-model"
    # Codex's own tools as it sent them: the freeform apply_patch stays a custom tool.
    assert {"type": "custom", "name": "apply_patch"}.items() <= next(
        tool for tool in body["tools"] if tool.get("name") == "apply_patch"
    ).items()
    [record] = ledger_rows(gw, bg)
    assert (record["api"], record["status"]) == ("responses", 200) and record["completion_tokens"] > 0


@pytest.mark.timeout(120)
@pytest.mark.skipif(not CLAUDE.exists(), reason=f"Claude Code is {NOT_INSTALLED}")
def test_claude_code_passes_through_to_an_anthropic_deployment(
    bg: BackgroundLoop, gateway: Gateway, tmp_path: Path
) -> None:
    anthropic_upstream = FakeAnthropicUpstream(
        default=AnthropicBehaviour(content=ANSWER), api_key="sk-ant-fake"
    )
    bg.run(anthropic_upstream.start())
    try:
        claude = {
            "provider": "anthropic",
            "model": "claude-sonnet-4-5",
            "api_base": anthropic_upstream.base_url,
            "api_key_env": "FAKE_ANTHROPIC_KEY",
        }
        spec = {
            "deployments": {"claude": claude},
            "routes": {"frontier": ["claude"]},
            "default_route": "frontier",
            "model_aliases": {"claude-*": "auto"},
        }
        gw = gateway(spec, environ={"FAKE_ANTHROPIC_KEY": "sk-ant-fake"})
        command = [str(CLAUDE), "-p", PROMPT, "--model", CLAUDE_MODEL, "--output-format", "json"]
        result = run(command, claude_env(tmp_path, gw), tmp_path / "work")
        assert result.returncode == 0, failure(result)
        answer = json.loads(result.stdout)
        assert answer["is_error"] is False and answer["result"] == ANSWER, failure(result)
        sent = anthropic_upstream.requests[-1]
        assert sent.body["model"] == "claude-sonnet-4-5" and sent.headers["x-api-key"] == "sk-ant-fake"
        assert {"Bash", "Read", "Edit"} <= {tool["name"] for tool in sent.body["tools"]}
        records = ledger_rows(gw, bg)
        assert {record["api"] for record in records} == {"messages"}
        assert records[-1]["status"] == 200 and records[-1]["deployment"] == "claude"
    finally:
        bg.run(anthropic_upstream.stop())
