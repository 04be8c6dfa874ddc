"""The overload benchmark's workload and client: arrivals scaled to a rate, priority classes, and one
streamed request per arrival, sent on time whatever happened to the others.

Arrivals are the trace's own (gateway.bench.trace), compressed or stretched so that exactly
round(rate x seconds) of them fall in the first `seconds`: the n-th arrival (counting from 0, looping
over the trace) lands on `seconds` itself, so the first n keep the trace's gaps in proportion. Each
takes a class from a seeded generator, in the shares of MIX, so the same seed gives the same classes
to the same arrivals in every configuration. Every request streams (`stream_options.include_usage`)
with model `auto`, its prompt sized to the row's ContextTokens and max_tokens the row's
GeneratedTokens capped, and carries `x-gateway-priority` and an `x-request-id` that names it in the
gateway's ledger.

A request's first byte is the first body chunk holding an SSE `data:` event, timed from just before it
was sent; its verdict on a 200 is gateway.bench.soak_client's (whole stream, [DONE], usage).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from gateway.bench.soak_client import CONNECTION_ERROR, TIMEOUT, UNFINISHED
from gateway.bench.soak_client import verdict as judge
from gateway.bench.trace import Scheduled, Trace, chat_body, schedule

INTERACTIVE, STANDARD, DEFERRABLE = "interactive", "standard", "deferrable"
# The classes and their shares of the requests.
MIX: tuple[tuple[str, float], ...] = ((INTERACTIVE, 0.6), (STANDARD, 0.3), (DEFERRABLE, 0.1))
CLASSES = tuple(name for name, _ in MIX)
MODEL = "auto"
PRIORITY_HEADER = "x-gateway-priority"
# The gateway's own refusals under load (errors.LoadShed, errors.Overloaded): shed, not errors.
SHED_CODES = frozenset({"load_shed", "capacity_exceeded"})
SHED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request of a level: when it is due (seconds after the level started), its class, and what."""

    index: int
    at_s: float
    priority: str
    item: Scheduled


def looped_offset(trace: Trace, index: int) -> float:
    """The trace time of arrival `index`, counting on over laps as gateway.bench.trace.schedule does."""
    lap, position = divmod(index, len(trace.rows))
    return lap * trace.lap_s + trace.rows[position].offset_s


def speedup_for(trace: Trace, rate_per_s: float, seconds: float) -> float:
    """The speed-up that puts round(rate x seconds) arrivals in the first `seconds` (at least one)."""
    if rate_per_s <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    count = max(1, round(rate_per_s * seconds))
    span = looped_offset(trace, count) - trace.rows[0].offset_s
    return span / seconds if span > 0 else trace.mean_rate / rate_per_s


def classes(count: int, seed: int) -> list[str]:
    """`count` classes drawn in MIX's shares, the same for the same seed."""
    rng = random.Random(seed)
    weights = [share for _, share in MIX]
    return rng.choices(CLASSES, weights=weights, k=count)


def arrivals(
    trace: Trace,
    prompts: Sequence[str],
    rate_per_s: float,
    seconds: float,
    *,
    seed: int,
    max_tokens: int,
) -> list[Arrival]:
    """The level's requests, in order: round(rate x seconds) trace arrivals in `seconds`, answers of
    at most `max_tokens`, classes from `seed`."""
    count = max(1, round(rate_per_s * seconds))
    speedup = speedup_for(trace, rate_per_s, seconds)
    # The count-th arrival lands on `seconds` itself: the epsilon keeps ties with it from rounding out.
    items = list(itertools.islice(schedule(trace, prompts, speedup, seconds * (1 + 1e-9)), count))
    picked = classes(len(items), seed)
    return [
        Arrival(
            item.index,
            item.at_s,
            priority,
            dataclasses.replace(
                item,
                stream=True,
                row=dataclasses.replace(
                    item.row, generated_tokens=min(item.row.generated_tokens, max_tokens)
                ),
            ),
        )
        for item, priority in zip(items, picked, strict=True)
    ]


@dataclass(slots=True)
class Result:
    """What one request got. Times are seconds after the level started, or ms from sending."""

    index: int
    priority: str
    request_id: str
    due_s: float
    sent_s: float
    status: int | None = None  # None: no response (timeout, connection error, unfinished)
    error: str | None = None  # what was wrong; None for a whole stream with usage
    error_code: str | None = None  # the error body's `code`
    first_byte_ms: float | None = None
    finished_s: float | None = None
    completion_tokens: int = 0
    # The gateway's headers, as sent.
    admission: str | None = None
    gateway_priority: str | None = None
    queue_ms: float | None = None
    route: str | None = None
    retry_after: str | None = None
    # From the gateway's ledger after the run (summed over its records).
    cost_usd: float | None = None
    energy_wh: float | None = None
    ledger_records: int = 0

    @property
    def verdict(self) -> str | None:
        """The admission verdict the gateway gave: `downgraded`, `deferred`, `shed`, … or None."""
        if not self.admission:
            return None
        return self.admission.split(":", 1)[0].strip().lower() or None

    @property
    def shed(self) -> bool:
        """Refused by the gateway under load (not an upstream's or the gateway's failure)."""
        return self.status in SHED_STATUSES and (self.verdict == "shed" or self.error_code in SHED_CODES)

    @property
    def answered(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def outcome(self) -> str:
        """One of OUTCOMES: how the request ended, for the stacked bars."""
        if self.answered:
            return self.verdict if self.verdict in ("downgraded", "deferred") else "answered"
        return "shed" if self.shed else "error"


OUTCOMES = ("answered", "downgraded", "deferred", "shed", "error")


def _error_code(body: bytes) -> str | None:
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _has_event(parts: list[bytes]) -> bool:
    """Whether the body so far holds an SSE data event (the marker may straddle two chunks)."""
    return b"data:" in (parts[-1] if len(parts) == 1 else parts[-2][-8:] + parts[-1])


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Client:
    """Where requests go: the gateway's chat URL and the client key its settings accept."""

    url: str
    api_key: str
    timeout_s: float

    async def send(
        self, session: aiohttp.ClientSession, arrival: Arrival, request_id: str, start: float
    ) -> Result:
        """Send one arrival now and wait for the whole answer (or the client timeout)."""
        body = chat_body(MODEL, arrival.item)
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
            PRIORITY_HEADER: arrival.priority,
            "x-request-id": request_id,
        }
        sent = time.perf_counter()
        result = Result(arrival.index, arrival.priority, request_id, arrival.at_s, sent - start)
        parts: list[bytes] = []
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                session.post(self.url, data=body, headers=headers) as response,
            ):
                result.status = response.status
                got = response.headers
                result.admission = got.get("x-gateway-admission")
                result.gateway_priority = got.get(PRIORITY_HEADER)
                result.queue_ms = _float(got.get("x-gateway-queue-ms"))
                result.route = got.get("x-gateway-route")
                result.retry_after = got.get("retry-after")
                async for chunk in response.content.iter_any():
                    parts.append(chunk)
                    if result.first_byte_ms is None and _has_event(parts):
                        result.first_byte_ms = (time.perf_counter() - sent) * 1000
        except TimeoutError:
            result.error = TIMEOUT
        except (aiohttp.ClientError, OSError):
            result.error = CONNECTION_ERROR
        finally:
            result.finished_s = time.perf_counter() - start
        if result.error is not None:
            result.status = None
            return result
        answer = b"".join(parts)
        assert result.status is not None
        if result.status == 200:
            result.error, result.completion_tokens = judge(200, answer, stream=True)
        else:
            result.error, result.error_code = f"HTTP {result.status}", _error_code(answer)
        return result


async def replay(
    client: Client,
    session: aiohttp.ClientSession,
    level: Sequence[Arrival],
    request_id: Callable[[Arrival], str],
    *,
    burst_s: float,
    drain_s: float,
    on_done: Callable[[Result], None],
) -> list[Result]:
    """Send every arrival at its time (one task each, open loop), then wait for those in flight up to
    `drain_s` after the burst's `burst_s` seconds; those still running then end UNFINISHED."""
    start = time.perf_counter()
    results: dict[int, Result] = {}
    running: dict[asyncio.Task[Result], Arrival] = {}

    def finished(task: asyncio.Task[Result]) -> None:
        arrival = running.pop(task)
        failure = None if task.cancelled() else task.exception()
        if task.cancelled() or failure is not None:
            result = Result(arrival.index, arrival.priority, request_id(arrival), arrival.at_s, arrival.at_s)
            result.error = UNFINISHED if failure is None else f"client failure: {failure!r}"
            result.finished_s = time.perf_counter() - start
        else:
            result = task.result()
        results[arrival.index] = result
        on_done(result)

    for arrival in level:
        delay = start + arrival.at_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(client.send(session, arrival, request_id(arrival), start))
        running[task] = arrival
        task.add_done_callback(finished)
    if running:
        left = start + burst_s + drain_s - time.perf_counter()
        _, pending = await asyncio.wait(set(running), timeout=max(0.0, left))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    await asyncio.sleep(0)  # the last done-callbacks
    return [results[arrival.index] for arrival in level]
