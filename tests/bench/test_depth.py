"""What the depth rows send: never the same text twice, and rephrasings only the semantic layer can answer."""

from __future__ import annotations

import orjson

from gateway.bench.depth import fresh_prompts, rephrased, rephrasings, respaced, stored_questions
from gateway.bench.load import Endpoint
from gateway.cache.keys import cache_keys, normalise

ENDPOINT = Endpoint("127.0.0.1", 8080, "/v1/chat/completions", "auto", "key")
PROMPTS = ["What is the capital of France?", "Write a poem about the sea", "Explain TCP handshakes."]


def _bodies(requests: list[bytes]) -> list[dict[str, object]]:
    bodies = []
    for request in requests:
        head, _, payload = request.partition(b"\r\n\r\n")
        assert f"Content-Length: {len(payload)}".encode() in head
        assert b"Authorization: Bearer key" in head
        bodies.append(orjson.loads(payload))
    return bodies


def _text(body: dict[str, object]) -> str:
    messages = body["messages"]
    assert isinstance(messages, list)
    return str(messages[0]["content"])


def test_fresh_prompts_never_repeat_and_each_pass_is_a_new_cache_context() -> None:
    source = fresh_prompts(ENDPOINT, PROMPTS, {"model": "auto", "temperature": 0})

    bodies = _bodies([source() for _ in range(3 * len(PROMPTS))])

    texts = [_text(body) for body in bodies]
    assert texts[: len(PROMPTS)] == PROMPTS
    assert len(set(texts)) == len(texts)
    assert texts[len(PROMPTS)] == f"(1) {PROMPTS[0]}"
    assert [body["seed"] for body in bodies] == [n for n in range(3) for _ in PROMPTS]
    keys = [cache_keys(body, "shared:bench", "frontier") for body in bodies]
    assert len({key.context for key in keys if key is not None}) == 3


def test_rephrasings_miss_the_exact_key_and_never_repeat_a_text() -> None:
    questions = stored_questions(PROMPTS)
    source = rephrasings(ENDPOINT, questions)

    bodies = _bodies([source() for _ in range(4 * len(questions))])

    texts = [_text(body) for body in bodies]
    assert len(set(texts)) == len(texts)
    for index, body in enumerate(bodies):
        stored = questions[index % len(questions)]
        asked = cache_keys(body, "shared:bench", "frontier")
        kept = cache_keys(
            {**body, "messages": [{"role": "user", "content": stored}]}, "shared:bench", "frontier"
        )
        assert asked is not None and kept is not None
        assert asked.context == kept.context  # the same situation: the semantic layer may look
        assert asked.exact != kept.exact  # but not the same words: the exact layer cannot answer
        assert normalise(asked.question) == normalise(rephrased(stored))


def test_rephrased_changes_case_and_closing_punctuation() -> None:
    assert rephrased("What is the capital of France?") == "what is the capital of France"
    assert rephrased("write a poem about the sea") == "Write a poem about the sea?"
    assert respaced("a b c", 2) == "a   b c" and respaced("abc", 1) == "abc " and respaced("a b", 0) == "a b"
    # A question the rephrasing would not change as the exact key sees it is not stored.
    assert stored_questions(["", "?", "ok", "Fine."]) == ["Fine."]
