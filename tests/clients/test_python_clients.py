"""Real Python clients, used as their users use them, against the gateway in front of the fake upstream:
LangChain's ChatOpenAI over chat completions and over the Responses API (plain, streamed, tools), its
OpenAIEmbeddings and its completions LLM, the OpenAI Agents SDK running a function tool over both APIs,
and the openai SDK's legacy completions with its refusals. Each checks the answer the client parsed,
what reached the upstream, and the ledger's record of which API was called.

Nothing leaves loopback: every client is given the gateway's URL, LangSmith tracing is switched off in
the environment and the Agents SDK's tracing is disabled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.tool import FunctionTool
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream, fake_vector
from gateway.fakes.script import Behaviour, streamed_text
from tests.conftest import RunningGateway, ledger_rows, openai_deployment

Upstreams = Callable[..., FakeOpenAIUpstream]
Gateway = Callable[..., RunningGateway]
QUESTION = "What is the capital of France?"
ANSWER = "Fake answer to: What is the capital of France?"
LIGHTHOUSE = "Pointe Saint-Mathieu"
FINAL = "The lighthouse near Brest is at Pointe Saint-Mathieu."
# What would send a client's traces or runs elsewhere.
TRACING_VARIABLES = (
    "LANGSMITH_TRACING", "LANGSMITH_TRACING_V2", "LANGCHAIN_TRACING", "LANGCHAIN_TRACING_V2",
    "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY",
)  # fmt: skip


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TRACING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    set_tracing_disabled(True)


def routes(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "deployments": {
            "big": openai_deployment(upstream),
            "embedder": openai_deployment(upstream, model="fake-embedder"),
        },
        "routes": {"frontier": ["big"], "embed": ["embedder"]},
        "default_route": "frontier",
        "embeddings_route": "embed",
    }


def apis(gw: RunningGateway, bg: BackgroundLoop) -> list[str]:
    return [row["api"] for row in ledger_rows(gw, bg)]


def chat_model(gw: RunningGateway, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=gw.base_url, api_key="none", model="auto", max_retries=0, **options)


def streamed(chunks: Iterator[BaseMessage]) -> AIMessageChunk:
    total: AIMessageChunk | None = None
    for chunk in chunks:
        assert isinstance(chunk, AIMessageChunk)
        total = chunk if total is None else total + chunk
    assert total is not None
    return total


# LangChain's ChatOpenAI


@pytest.mark.parametrize(("responses_api", "api"), [(False, "chat.completions"), (True, "responses")])
def test_langchain_invokes_and_streams(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop, responses_api: bool, api: str
) -> None:
    upstream = upstreams()
    gw = gateway(routes(upstream))
    llm = chat_model(gw, use_responses_api=responses_api, stream_usage=True)

    answer = llm.invoke(QUESTION)
    assert isinstance(answer, AIMessage)
    assert answer.text == ANSWER
    assert answer.usage_metadata is not None and answer.usage_metadata["input_tokens"] > 0
    assert upstream.requests[-1].body["messages"] == [{"role": "user", "content": QUESTION}]

    total = streamed(llm.stream("And of Spain?"))
    assert total.text == streamed_text(Behaviour(), [{"role": "user", "content": "And of Spain?"}])
    assert total.usage_metadata is not None and total.usage_metadata["output_tokens"] > 0
    assert upstream.requests[-1].body["stream"] is True
    assert apis(gw, bg) == [api, api]


def find_lighthouse(x: int) -> str:
    """Find the lighthouse numbered x."""
    return LIGHTHOUSE


@pytest.mark.parametrize(("responses_api", "api"), [(False, "chat.completions"), (True, "responses")])
def test_langchain_bound_tools_get_a_tool_call_and_send_its_result_back(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop, responses_api: bool, api: str
) -> None:
    upstream = upstreams()
    upstream.script(Behaviour(tool_call=True), Behaviour(content=FINAL))
    gw = gateway(routes(upstream))
    llm = chat_model(gw, use_responses_api=responses_api).bind_tools([find_lighthouse])

    question = HumanMessage("Where is the lighthouse near Brest?")
    called = llm.invoke([question])
    assert isinstance(called, AIMessage)
    [call] = called.tool_calls
    assert (call["name"], call["args"]) == ("find_lighthouse", {"x": 1})
    [offered] = upstream.requests[-1].body["tools"]
    assert offered["function"]["name"] == "find_lighthouse"

    result = ToolMessage(find_lighthouse(**call["args"]), tool_call_id=call["id"])
    final = llm.invoke([question, called, result])
    assert final.text == FINAL
    sent = upstream.requests[-1].body["messages"]
    [echoed] = sent[-2]["tool_calls"]
    assert echoed["function"] == {"name": "find_lighthouse", "arguments": '{"x": 1}'}
    assert sent[-1] == {"role": "tool", "tool_call_id": echoed["id"], "content": LIGHTHOUSE}
    assert apis(gw, bg) == [api, api]


# LangChain's embeddings and completions LLM


def test_langchain_embeddings_go_to_the_upstreams_embedding_deployment(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    upstream = upstreams()
    gw = gateway(routes(upstream))
    auto = OpenAIEmbeddings(
        base_url=gw.base_url, api_key="none", model="auto", check_embedding_ctx_length=False, max_retries=0
    )
    vectors = auto.embed_documents(["a lighthouse", "a harbour"])
    assert vectors[0] == pytest.approx(fake_vector("a lighthouse"), abs=1e-6)
    assert vectors[1] == pytest.approx(fake_vector("a harbour"), abs=1e-6)
    sent = upstream.requests[-1].body
    assert sent["model"] == "fake-embedder" and sent["input"] == ["a lighthouse", "a harbour"]

    named = OpenAIEmbeddings(
        base_url=gw.base_url, api_key="none", model="embed", check_embedding_ctx_length=False, max_retries=0
    )
    assert named.embed_query("rain") == pytest.approx(fake_vector("rain"), abs=1e-6)
    rows = ledger_rows(gw, bg)
    assert [(row["api"], row["route"]) for row in rows] == [("embeddings", "embed")] * 2


def test_langchains_completions_llm_invokes_and_streams(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    upstream = upstreams()
    gw = gateway(routes(upstream))
    llm = OpenAI(base_url=gw.base_url, api_key="none", model="auto", max_retries=0)
    assert llm.invoke("Say hi") == "Fake answer to: Say hi"
    assert upstream.requests[-1].body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert "".join(llm.stream("Say hi")) == "Fake answer to: Say hi"
    assert apis(gw, bg) == ["completions", "completions"]


# The OpenAI Agents SDK


def lighthouse_tool(ran: list[int]) -> FunctionTool:
    # The fake upstream calls the first tool offered with {"x": 1}: the tool takes that argument.
    @function_tool
    def find_lighthouse(x: int) -> str:
        """Find the lighthouse numbered x."""
        ran.append(x)
        return LIGHTHOUSE

    return find_lighthouse


@pytest.mark.parametrize("streamed_run", [False, True], ids=["run_sync", "run_streamed"])
@pytest.mark.parametrize(
    ("model_class", "api"),
    [(OpenAIResponsesModel, "responses"), (OpenAIChatCompletionsModel, "chat.completions")],
)
def test_an_agent_runs_its_function_tool_and_answers_with_its_result(
    upstreams: Upstreams,
    gateway: Gateway,
    bg: BackgroundLoop,
    model_class: type[OpenAIResponsesModel | OpenAIChatCompletionsModel],
    api: str,
    streamed_run: bool,
) -> None:
    upstream = upstreams()
    upstream.script(Behaviour(tool_call=True), Behaviour(content=FINAL))
    gw = gateway(routes(upstream))
    ran: list[int] = []
    # run_sync drives the thread's default loop, and leaves it open: the test owns it, and closes it
    # with the client.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    client = openai.AsyncOpenAI(base_url=gw.base_url, api_key="none", max_retries=0)
    agent = Agent(
        name="harbour master",
        instructions="Answer with the lighthouse tool.",
        tools=[lighthouse_tool(ran)],
        model=model_class(model="auto", openai_client=client),
    )
    try:
        if streamed_run:

            async def stream() -> tuple[list[str], Any]:
                run = Runner.run_streamed(agent, "Where is the lighthouse near Brest?")
                return [event.type async for event in run.stream_events()], run.final_output

            events, final_output = loop.run_until_complete(stream())
            assert "raw_response_event" in events and "run_item_stream_event" in events
        else:
            final_output = Runner.run_sync(agent, "Where is the lighthouse near Brest?").final_output
    finally:
        loop.run_until_complete(client.close())
        asyncio.set_event_loop(None)
        loop.close()

    assert ran == [1]
    assert final_output == FINAL
    first, second = (request.body for request in upstream.requests)
    assert first.get("stream", False) is second.get("stream", False) is streamed_run
    assert [tool["function"]["name"] for tool in first["tools"]] == ["find_lighthouse"]
    assert first["messages"][0] == {"role": "system", "content": "Answer with the lighthouse tool."}
    [call] = second["messages"][-2]["tool_calls"]
    assert call["function"] == {"name": "find_lighthouse", "arguments": '{"x": 1}'}
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": call["id"], "content": LIGHTHOUSE}
    assert apis(gw, bg) == [api, api]


# The openai SDK's legacy completions


def test_legacy_completions_answer_as_text_completions(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop
) -> None:
    upstream = upstreams()
    gw = gateway(routes(upstream))
    client = gw.client()
    answer = client.completions.create(model="auto", prompt="Say hi", max_tokens=50, stop=["\n"])
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    [choice] = answer.choices
    assert (choice.text, choice.finish_reason, choice.index) == ("Fake answer to: Say hi", "stop", 0)
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens == 5
    assert answer.model == "fake-model" and answer.system_fingerprint == "fp_fake"
    sent = upstream.requests[-1].body
    assert sent["messages"] == [{"role": "user", "content": "Say hi"}]
    assert (sent["max_tokens"], sent["stop"]) == (50, ["\n"])

    client.completions.create(model="auto", prompt="Say hi")
    assert upstream.requests[-1].body["max_tokens"] == 16  # OpenAI's default for this API
    assert apis(gw, bg) == ["completions", "completions"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_legacy_completions_stream_text_chunks(
    upstreams: Upstreams, gateway: Gateway, bg: BackgroundLoop, include_usage: bool
) -> None:
    upstream = upstreams()
    gw = gateway(routes(upstream))
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(gw.client().completions.create(model="auto", prompt="Say hi", stream=True, **options))
    assert all(chunk.object == "text_completion" and chunk.id.startswith("cmpl-") for chunk in chunks)
    text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    assert text == streamed_text(Behaviour(), [{"role": "user", "content": "Say hi"}])
    finishes = [choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason]
    assert finishes == ["stop"]
    with_usage = [chunk for chunk in chunks if chunk.usage is not None]
    if include_usage:
        [last] = with_usage
        assert last is chunks[-1] and last.choices == [] and last.usage is not None
        assert last.usage.completion_tokens > 0
    else:
        assert with_usage == []
    assert apis(gw, bg) == ["completions"]


@pytest.mark.parametrize(
    ("options", "param", "says"),
    [
        ({"echo": True}, "echo", "echoing the prompt"),
        ({"suffix": "}"}, "suffix", "fill-in-the-middle"),
        ({"logprobs": 2}, "logprobs", "log probabilities"),
        ({"best_of": 3}, "best_of", "best_of"),
        ({"prompt": [464, 3290, 318]}, "prompt", "token-id"),
        ({"prompt": [[464, 3290], [318]]}, "prompt", "token-id"),
        ({"prompt": ["one", "two"]}, "prompt", "one prompt a request"),
    ],
)
def test_what_a_chat_upstream_cannot_do_is_refused_naming_the_param(
    upstreams: Upstreams, gateway: Gateway, options: dict[str, Any], param: str, says: str
) -> None:
    upstream = upstreams()
    gw = gateway(routes(upstream))
    request: dict[str, Any] = {"model": "auto", "prompt": "def add(a, b):", **options}
    with pytest.raises(openai.BadRequestError) as raised:
        gw.client().completions.create(**request)
    assert raised.value.status_code == 400
    assert raised.value.param == param and raised.value.type == "invalid_request_error"
    assert says in raised.value.message
    assert upstream.requests == []
