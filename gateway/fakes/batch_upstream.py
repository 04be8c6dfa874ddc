"""A fake OpenAI upstream that serves the Batch API: a real aiohttp server on 127.0.0.1 speaking
OpenAI's wire format for `POST /v1/files` (multipart), `GET /v1/files/{id}/content`, `POST /v1/batches`,
`GET /v1/batches` (newest first, paged by `after`) and `GET /v1/batches/{id}`, plus a plain
`POST /v1/chat/completions` that only counts (a batch line should never arrive there).

A batch is `in_progress` from its creation until `complete_after` seconds have passed and it is not
`held`; then it ends `completed`, or, for the first `expire_batches` batches, `expired` with only its
first `answer_first` lines answered. Its output file holds a chat completion (or embedding list) a
line, its error file a 400 for each custom id in `fail_ids`. Tests set these attributes from another
thread; the server only reads them. Answers are built from the line alone (the same line, the same
answer), with usage counted as `script.prompt_tokens` does.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.fakes.openai_upstream import fake_vector
from gateway.fakes.script import message_text, prompt_tokens

ANSWER_WORDS = 5


@dataclass
class FakeBatch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str]
    created_at: float
    lines: list[dict[str, Any]]
    status: str = "in_progress"
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass
class FakeBatchUpstream:
    complete_after: float = 0.0
    held: bool = False
    expire_batches: int = 0
    answer_first: int = 0
    fail_ids: set[str] = field(default_factory=set)
    # What the gateway did here.
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, FakeBatch] = field(default_factory=dict)
    chat_calls: int = 0
    base_url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.add_routes([
            web.post("/v1/files", self._upload),
            web.get("/v1/files/{id}/content", self._content),
            web.post("/v1/batches", self._create),
            web.get("/v1/batches", self._list),
            web.get("/v1/batches/{id}", self._retrieve),
            web.post("/v1/chat/completions", self._chat),
        ])  # fmt: skip
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def created(self) -> list[FakeBatch]:
        return sorted(self.batches.values(), key=lambda batch: batch.created_at)

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or not isinstance(upload, web.FileField):
            return _error(400, "a batch input file is a multipart form with purpose=batch and a file")
        content = upload.file.read()
        file_id = f"file-{secrets.token_hex(8)}"
        self.files[file_id] = content
        return web.json_response({"id": file_id, "object": "file", "bytes": len(content), "purpose": "batch"})

    async def _content(self, request: web.Request) -> web.Response:
        content = self.files.get(request.match_info["id"])
        if content is None:
            return _error(404, "no such file")
        return web.Response(body=content, content_type="application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        content = self.files.get(body.get("input_file_id", ""))
        if content is None:
            return _error(400, "no such input file")
        if body.get("completion_window") != "24h":
            return _error(400, "completion_window must be 24h")
        lines = [orjson.loads(raw) for raw in content.splitlines() if raw.strip()]
        if any(line.get("url") != body.get("endpoint") for line in lines):
            return _error(400, "every line's url must be the batch's endpoint")
        batch = FakeBatch(
            f"batch_{secrets.token_hex(8)}", body["input_file_id"], body["endpoint"],
            dict(body.get("metadata") or {}), time.time(), lines,
        )  # fmt: skip
        self.batches[batch.id] = batch
        return web.json_response(self._view(batch))

    async def _list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        newest = sorted(self.batches.values(), key=lambda batch: batch.created_at, reverse=True)
        after = request.query.get("after")
        if after is not None:
            ids = [batch.id for batch in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        page = newest[:limit]
        return web.json_response(
            {"object": "list", "data": [self._view(batch) for batch in page], "has_more": len(newest) > limit}
        )

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "no such batch")
        return web.json_response(self._view(batch))

    async def _chat(self, request: web.Request) -> web.Response:
        self.chat_calls += 1
        body = await request.json()
        return web.json_response(_chat_answer(body, "chatcmpl-sync"))

    def _view(self, batch: FakeBatch) -> dict[str, Any]:
        if (
            batch.status == "in_progress"
            and not self.held
            and time.time() >= batch.created_at + self.complete_after
        ):
            self._end(batch)
        done = batch.status != "in_progress"
        return {
            "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "status": batch.status,
            "input_file_id": batch.input_file_id, "completion_window": "24h",
            "created_at": int(batch.created_at), "metadata": batch.metadata,
            "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "request_counts": {
                "total": len(batch.lines), "completed": len(batch.lines) if done else 0, "failed": 0,
            },
        }  # fmt: skip

    def _end(self, batch: FakeBatch) -> None:
        expired = sum(1 for other in self.batches.values() if other.status == "expired")
        status = "expired" if expired < self.expire_batches else "completed"
        answered = batch.lines if status == "completed" else batch.lines[: self.answer_first]
        outputs, errors = [], []
        for n, line in enumerate(answered):
            custom_id = line["custom_id"]
            if custom_id in self.fail_ids:
                body = {"error": {"message": "The fake refuses this line.", "type": "invalid_request_error"}}
                errors.append(_output(custom_id, 400, body))
            elif batch.endpoint == "/v1/embeddings":
                outputs.append(_output(custom_id, 200, _embedding_answer(line["body"])))
            else:
                outputs.append(
                    _output(custom_id, 200, _chat_answer(line["body"], f"chatcmpl-{batch.id}-{n}"))
                )
        batch.output_file_id = self._keep(outputs)
        batch.error_file_id = self._keep(errors)
        batch.status = status

    def _keep(self, lines: list[dict[str, Any]]) -> str | None:
        if not lines:
            return None
        file_id = f"file-{secrets.token_hex(8)}"
        self.files[file_id] = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        return file_id


def _output(custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{secrets.token_hex(6)}", "custom_id": custom_id,
        "response": {"status_code": status, "request_id": secrets.token_hex(6), "body": body}, "error": None,
    }  # fmt: skip


def _chat_answer(body: dict[str, Any], answer_id: str) -> dict[str, Any]:
    messages = body.get("messages") or []
    question = message_text(messages[-1].get("content")) if messages else ""
    prompt = prompt_tokens(messages)
    return {
        "id": answer_id, "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
        "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": f"Batch answer to {question[:40]!r} now"},
        }],
        "usage": {
            "prompt_tokens": prompt, "completion_tokens": ANSWER_WORDS, "total_tokens": prompt + ANSWER_WORDS,
        },
    }  # fmt: skip


def _embedding_answer(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    texts = inputs if isinstance(inputs, list) else [inputs]
    tokens = sum(len(str(text).split()) for text in texts)
    return {
        "object": "list", "model": body.get("model"),
        "data": [
            {"object": "embedding", "index": n, "embedding": fake_vector(str(text))}
            for n, text in enumerate(texts)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }  # fmt: skip


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)
