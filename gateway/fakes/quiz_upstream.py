"""A fake OpenAI-compatible upstream that answers arithmetic quizzes with a closed-form number: a real
aiohttp server on 127.0.0.1, for the router's own-traffic loop. A prompt "What is A plus B?" is
answered "The answer is A+B." — except where `wrong` says so for the prompt's text, where the answer is
one more: a weak model that fails some kind of question. `calls` counts the calls it answered."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

_SUM = re.compile(r"(\d+) plus (\d+)")


def never(_: str) -> bool:
    return False


@dataclass
class FakeQuizUpstream:
    wrong: Callable[[str], bool] = never
    calls: int = 0
    base_url: str = ""
    _runner: web.AppRunner | None = field(default=None, repr=False)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.add_routes([web.post("/v1/chat/completions", self._chat)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.json()
        text = str(body["messages"][-1]["content"])
        found = _SUM.search(text)
        total = int(found.group(1)) + int(found.group(2)) if found else 0
        if self.wrong(text):
            total += 1
        answer = f"The answer is {total}."
        tokens = len(text.split())
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}
        return web.json_response({
            "id": f"chatcmpl-quiz-{self.calls}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "choices": [choice],
            "usage": {"prompt_tokens": tokens, "completion_tokens": 4, "total_tokens": tokens + 4},
        })  # fmt: skip
