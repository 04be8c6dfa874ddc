"""Batch lines answered by the upstream's own Batch API, at its batch price: for deployments that say
they have one (`Deployment.batch_api`, OpenAI's), a batch line the policy routes there is not called
synchronously but collected with others into an upstream batch.

How a line travels (the rows are the batch store's, `batches/upstream.py`):
1. The request path answers the line as any other (policy, cache, budget reserved). At the answer step
   (`path/answer.Answering`), a line whose route's first deployment is served here is handed to
   `answer`, which queues it durably under its line key and tells the runner it is parked: it then
   waits without holding one of the runner's places, its lease still extended.
2. `run`, on every replica: when a deployment's queued lines are `flush_seconds` old, or `max_lines`
   many, one transaction puts them into a submission; the JSONL input file is uploaded and the batch
   created upstream, tagged with the submission's id in its metadata. A replica that dies between the
   two leaves a `creating` submission: once its hold runs out, another one looks for the tagged batch
   upstream and creates it only if it is not there. No line is sent twice.
3. Submitted batches are looked at every `poll_seconds`. When one ends, its output and error files are
   read and every line's answer (or, for a line it did not answer, an error) is stored in one
   transaction; waiting lines wake and return it, and the request path records it at the batch price.

A crash while a line waits loses nothing: after its lease the line is claimed again, runs through the
request path again, finds its row (queued, submitted or answered) and waits for the same answer. A
line the upstream failed is forgotten when its error is returned, so a retry queues it afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.batches.store import BatchStoreUnavailable, ThreadedBatchStore
from gateway.batches.upstream import Submission
from gateway.config import Deployment
from gateway.errors import GatewayError
from gateway.providers.openai_batches import OpenAIBatchApi
from gateway.providers.openai_compat import upstream_status_error
from gateway.wire import ChatRequest, Completion, DeferredLine, Usage

logger = logging.getLogger("gateway.batches.upstream")

# The upstream batch's metadata key that names the submission it was created for.
METADATA_KEY = "gateway_submission"
# OpenAI's limit on one batch's requests.
MAX_LINES = 50_000
# How long a replica holds a submission it is creating or looking at before another may take it over.
HOLD_SECONDS = 120.0
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
SUBMISSIONS_A_TICK = 50
# Where each inbound API's lines go upstream: their requests are chat requests inside the gateway (the
# adapters render the chat answer back), but embeddings.
ENDPOINTS = {
    "chat.completions": "/v1/chat/completions",
    "responses": "/v1/chat/completions",
    "completions": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
}


class UpstreamBatches:
    def __init__(
        self,
        store: ThreadedBatchStore,
        apis: Mapping[str, OpenAIBatchApi],
        deployments: Mapping[str, Deployment],
        *,
        flush_seconds: float = 60.0,
        poll_seconds: float = 30.0,
        max_lines: int = MAX_LINES,
        tick_seconds: float = 1.0,
        hold_seconds: float = HOLD_SECONDS,
    ) -> None:
        self._store = store
        self._apis = dict(apis)
        self._models = {name: deployments[name].model for name in self._apis}
        self._flush = flush_seconds
        self._poll = poll_seconds
        self._max_lines = max_lines
        self._tick = min(tick_seconds, poll_seconds, flush_seconds)
        self._hold = hold_seconds
        # Lines of this replica waiting for their answer: set when their submission ends here.
        self._waiting: dict[str, asyncio.Event] = {}

    def serves(self, deployment: str, request: ChatRequest) -> bool:
        """Whether this line would be answered through the deployment's Batch API."""
        return (
            request.deferred is not None
            and request.deferred.parkable
            and not request.stream
            and deployment in self._apis
            and request.api in ENDPOINTS
        )

    async def answer(self, deployment: str, request: ChatRequest) -> Completion:
        """The line's answer from the deployment's Batch API (queued unless it is already), once its
        upstream batch has ended; the upstream's error for it as a GatewayError."""
        line = request.deferred
        assert line is not None and deployment in self._apis
        started = time.perf_counter()
        body = {**request.body, "model": self._models[deployment]}
        body.pop("stream", None)
        body.pop("stream_options", None)
        event = self._waiting.setdefault(line.key, asyncio.Event())
        try:
            await self._store.queue_upstream(line.key, deployment, ENDPOINTS[request.api], body)
            line.parked()
            status, data = await self._wait(line, event)
        finally:
            self._waiting.pop(line.key, None)
        if status >= 400:
            await self._store.forget_upstream(line.key)  # a retry queues it afresh
            raise upstream_status_error(deployment, status, data, {})
        usage = _usage(data)
        return Completion(data, usage, time.perf_counter() - started)

    async def _wait(self, line: DeferredLine, event: asyncio.Event) -> tuple[int, bytes]:
        while True:
            result = await self._store.upstream_result(line.key)
            if result is not None and result.state == "answered":
                return result.status or 502, (result.response or "null").encode()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self._poll)  # another replica may end it
            event.clear()

    async def run(self) -> None:
        """Submit what is ready and look at what is due, every tick, until cancelled."""
        while True:
            try:
                await self._submit_ready()
                await self._look_at_due()
            except BatchStoreUnavailable as exc:
                logger.warning("batch store unavailable, upstream batches not looked at: %s", exc)
            except Exception:
                logger.exception("upstream batches: unexpected failure (tried again next tick)")
            await asyncio.sleep(self._tick)

    async def _submit_ready(self) -> None:
        now = time.time()
        for group in await self._store.queued_upstream():
            if group.deployment not in self._apis:
                continue
            if group.count < self._max_lines and group.oldest > now - self._flush:
                continue
            submission_id = f"gwsub_{secrets.token_hex(12)}"
            lines = await self._store.open_submission(
                submission_id, group.deployment, group.url, self._max_lines, self._hold
            )
            if lines:
                submission = Submission(submission_id, group.deployment, group.url, "creating", None)
                await self._create(submission, lines)

    async def _create(self, submission: Submission, lines: list[tuple[str, str]]) -> None:
        api = self._apis[submission.deployment]
        url = orjson.dumps(submission.url).decode()
        content = "".join(
            f'{{"custom_id":{orjson.dumps(key).decode()},"method":"POST","url":{url},"body":{body}}}\n'
            for key, body in lines
        ).encode()
        try:
            file_id = await api.upload(f"{submission.id}.jsonl", content)
            created = await api.create(file_id, submission.url, {METADATA_KEY: submission.id})
        except GatewayError as error:
            # Its hold runs out; then it is looked for upstream, and created again if not there.
            logger.warning("submission %s to %s not created: %s", submission.id, api.deployment, error)
            return
        await self._store.mark_submitted(submission.id, str(created["id"]), self._poll)
        logger.info("%d lines submitted to %s's Batch API as %s", len(lines), api.deployment, created["id"])

    async def _look_at_due(self) -> None:
        for submission in await self._store.due_submissions(self._hold, SUBMISSIONS_A_TICK):
            api = self._apis.get(submission.deployment)
            try:
                if api is None:
                    await self._end(submission, {}, f"{submission.deployment} no longer has batch_api")
                elif submission.state == "creating":
                    await self._recover(api, submission)
                else:
                    await self._look(api, submission)
            except GatewayError as error:  # looked at again when its hold runs out
                logger.warning("submission %s: %s", submission.id, error)

    async def _recover(self, api: OpenAIBatchApi, submission: Submission) -> None:
        """A submission whose creator died: the upstream batch it may have created, else a new one."""
        found = await api.find(METADATA_KEY, submission.id)
        if found is not None:
            await self._store.mark_submitted(submission.id, str(found["id"]), 0.0)
            return
        lines = await self._store.submission_lines(submission.id)
        if lines:
            await self._create(submission, lines)
        else:
            await self._end(submission, {}, "no lines left")

    async def _look(self, api: OpenAIBatchApi, submission: Submission) -> None:
        assert submission.upstream_id is not None
        batch = await api.retrieve(submission.upstream_id)
        status = str(batch.get("status"))
        if status not in FINAL:
            await self._store.mark_submitted(submission.id, submission.upstream_id, self._poll)
            return
        answers: dict[str, tuple[int, Any]] = {}
        for name in ("output_file_id", "error_file_id"):
            file_id = batch.get(name)
            if isinstance(file_id, str) and file_id:
                answers.update(_answers(await api.content(file_id)))
        await self._end(submission, answers, f"the upstream batch {submission.upstream_id} ended {status}")

    async def _end(self, submission: Submission, answers: dict[str, tuple[int, Any]], why: str) -> None:
        message = f"{why} without answering this line."
        unanswered = (
            502,
            {"error": {"message": message, "type": "upstream_error", "code": "batch_unanswered"}},
        )
        for key in await self._store.end_submission(submission.id, answers, unanswered):
            event = self._waiting.get(key)
            if event is not None:
                event.set()
        logger.info("submission %s ended: %d lines answered", submission.id, len(answers))


def _answers(content: bytes) -> dict[str, tuple[int, Any]]:
    """Each line's status and body, by custom id, from an upstream output or error file."""
    answers: dict[str, tuple[int, Any]] = {}
    for raw in content.splitlines():
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
            key = line["custom_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("an upstream batch file has a line that is not an output object")
            continue
        response = line.get("response")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            answers[str(key)] = (response["status_code"], response.get("body"))
        else:
            error = line.get("error") or {}
            message = error.get("message") if isinstance(error, dict) else None
            body = {
                "error": {
                    "message": message or "The upstream batch failed this line.",
                    "type": "upstream_error",
                }
            }
            answers[str(key)] = (502, body)
    return answers


def _usage(data: bytes) -> Usage | None:
    try:
        usage = orjson.loads(data).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return Usage.from_openai(usage) if isinstance(usage, dict) else None
