"""The soak's workload: an arrival trace (Azure LLM inference format) and prompts (ShareGPT format).

The trace gives each request's arrival time and token counts; the prompts give its text. Request
k (counting from 0 over the whole run) takes trace row k mod rows, shifted by whole laps when the
trace runs out before the run does, and prompt k mod prompts, sized to the row's ContextTokens at
CHARS_PER_TOKEN characters a token (English text averages about 4 characters per BPE token; the
exact count does not matter, only that prompt sizes follow the trace). A prompt too long is cut; one
too short is repeated. Odd-numbered requests stream, even ones do not.
"""

from __future__ import annotations

import csv
import datetime
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

CHARS_PER_TOKEN = 4
PROMPT_SEPARATOR = "\n\n"


class TraceError(Exception):
    """A trace or prompts file that cannot be read as one."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request of the trace: seconds after the trace's first arrival, and its token counts."""

    offset_s: float
    context_tokens: int
    generated_tokens: int


@dataclass(frozen=True, slots=True)
class Trace:
    rows: tuple[TraceRow, ...]

    @property
    def span_s(self) -> float:
        """First to last arrival."""
        return self.rows[-1].offset_s - self.rows[0].offset_s

    @property
    def lap_s(self) -> float:
        """How far a second pass over the trace is shifted: its span plus one mean gap between arrivals,
        so the first arrival of a lap follows the last of the previous one as arrivals follow each other
        (1 s for a one-row trace)."""
        if len(self.rows) < 2:
            return 1.0
        return self.span_s + self.span_s / (len(self.rows) - 1)

    @property
    def mean_rate(self) -> float:
        """Arrivals per second over a lap, at the trace's own pace."""
        return len(self.rows) / self.lap_s


@dataclass(frozen=True, slots=True)
class Scheduled:
    """One request of the run: when to send it (seconds after the start, speed-up applied) and what."""

    index: int
    at_s: float
    row: TraceRow
    prompt: str
    stream: bool


def _timestamp(text: str) -> datetime.datetime:
    """`2023-11-16 18:15:46.6805900`: Python before 3.12 takes at most 6 fraction digits."""
    whole, _, fraction = text.strip().partition(".")
    moment = datetime.datetime.fromisoformat(whole)
    return moment + datetime.timedelta(seconds=float(f"0.{fraction}")) if fraction else moment


def read_trace(path: Path) -> Trace:
    """Rows of `TIMESTAMP,ContextTokens,GeneratedTokens`, sorted by arrival, offsets from the first."""
    parsed: list[tuple[datetime.datetime, int, int]] = []
    try:
        with path.open(newline="") as source:
            for number, record in enumerate(csv.DictReader(source), start=2):
                try:
                    parsed.append(
                        (
                            _timestamp(record["TIMESTAMP"]),
                            int(record["ContextTokens"]),
                            int(record["GeneratedTokens"]),
                        )
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise TraceError(f"{path}:{number}: not a trace row ({exc})") from None
    except OSError as exc:
        raise TraceError(f"cannot read the trace: {exc}") from None
    if not parsed:
        raise TraceError(f"{path}: no rows")
    parsed.sort(key=lambda row: row[0])
    first = parsed[0][0]
    return Trace(
        tuple(
            TraceRow((moment - first).total_seconds(), max(1, context), max(1, generated))
            for moment, context, generated in parsed
        )
    )


def _first_human(conversation: Any) -> str | None:
    turns = conversation.get("conversations") if isinstance(conversation, dict) else None
    for turn in turns if isinstance(turns, list) else ():
        if isinstance(turn, dict) and turn.get("from") == "human":
            value = turn.get("value")
            if isinstance(value, str) and value.strip():
                return value
    return None


def read_prompts(path: Path) -> list[str]:
    """The first non-empty human turn of each conversation, in file order (ShareGPT JSON)."""
    try:
        conversations = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise TraceError(f"cannot read the prompts: {exc}") from None
    if not isinstance(conversations, list):
        raise TraceError(f"{path}: not a list of conversations")
    prompts = [prompt for prompt in map(_first_human, conversations) if prompt is not None]
    if not prompts:
        raise TraceError(f"{path}: no conversation with a human turn")
    return prompts


def sized_prompt(text: str, tokens: int) -> str:
    """`text` cut or repeated to tokens x CHARS_PER_TOKEN characters."""
    size = max(1, tokens) * CHARS_PER_TOKEN
    if len(text) < size:
        # n copies joined are n * (len + separator) - separator long: enough of them to reach size.
        step = len(text) + len(PROMPT_SEPARATOR)
        text = PROMPT_SEPARATOR.join([text] * -(-(size + len(PROMPT_SEPARATOR)) // step))
    return text[:size]


def schedule(trace: Trace, prompts: Sequence[str], speedup: float, duration_s: float) -> Iterator[Scheduled]:
    """Every request due before `duration_s`, in order, looping over the trace as often as needed."""
    if speedup <= 0 or not prompts:
        raise ValueError("speedup must be positive and prompts non-empty")
    rows, index = trace.rows, 0
    while True:
        lap, position = divmod(index, len(rows))
        row = rows[position]
        at = (lap * trace.lap_s + row.offset_s) / speedup
        if at >= duration_s:
            return
        prompt = sized_prompt(prompts[index % len(prompts)], row.context_tokens)
        yield Scheduled(index, at, row, prompt, stream=index % 2 == 1)
        index += 1


def chat_body(model: str, item: Scheduled) -> bytes:
    """The chat request for one scheduled item: its prompt, max_tokens from the trace, usage on streams."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": item.prompt}],
        "max_tokens": item.row.generated_tokens,
    }
    if item.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)
