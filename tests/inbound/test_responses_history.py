"""What a Responses upstream is sent: the client's body, but the gateway keeps the conversation."""

from __future__ import annotations

from typing import Any

from gateway.inbound.responses_history import items_of_conversation, native_body

EARLIER: list[dict[str, Any]] = [
    {"role": "user", "content": "Where is the lighthouse?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "find", "arguments": '{"x": 1}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Brest"},
    {"role": "assistant", "content": "In Brest."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "And this one?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    },
]


def test_a_conversation_becomes_input_items_in_order() -> None:
    assert items_of_conversation(EARLIER) == [
        {"type": "message", "role": "user", "content": "Where is the lighthouse?"},
        {"type": "function_call", "call_id": "call_1", "name": "find", "arguments": '{"x": 1}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Brest"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "In Brest.", "annotations": []}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "And this one?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
            ],
        },
    ]


def test_a_first_turn_goes_as_sent_but_never_stored_upstream() -> None:
    body = {"model": "auto", "input": "hi", "tools": [{"type": "web_search"}], "store": True}
    assert native_body(body, [], None) == {**body, "store": False}


def test_a_continuation_spells_out_the_history_instead_of_the_previous_id() -> None:
    body = {
        "model": "auto",
        "input": "And of Spain?",
        "previous_response_id": "resp_1",
        "instructions": "Brief.",
    }
    sent = native_body(body, EARLIER[:1], "resp_1")
    assert "previous_response_id" not in sent and sent["store"] is False
    assert sent["instructions"] == "Brief."
    assert sent["input"] == [
        {"type": "message", "role": "user", "content": "Where is the lighthouse?"},
        {"role": "user", "content": "And of Spain?"},
    ]
    items = [{"type": "function_call_output", "call_id": "call_1", "output": "Brest"}]
    assert native_body({**body, "input": items}, [], "resp_1")["input"] == items
