"""Load while a backing service misbehaves: clients that keep asking and record how long each request
took, a /readyz watcher, and the percentiles the tests compare (healthy against hung)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

# A request that takes this long counts as stuck.
REQUEST_TIMEOUT = 5.0


@dataclass
class Samples:
    """(sent at, seconds taken, status; 0 for a timeout or a broken connection) per request."""

    rows: list[tuple[float, float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sent: float, took: float, status: int) -> None:
        with self.lock:
            self.rows.append((sent, took, status))

    def between(self, start: float, end: float) -> list[tuple[float, float, int]]:
        with self.lock:
            return [row for row in self.rows if start <= row[0] < end]


def p99(rows: list[tuple[float, float, int]]) -> float:
    taken = sorted(took for _, took, _ in rows)
    return taken[min(len(taken) - 1, int(len(taken) * 0.99))]


def keep_asking(
    url: str, body: dict[str, object] | None, key: str | None, samples: Samples, stop: threading.Event
) -> None:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=REQUEST_TIMEOUT, headers=headers) as client:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status = (client.post(url, json=body) if body is not None else client.get(url)).status_code
            except httpx.HTTPError:
                status = 0
            samples.add(sent, time.monotonic() - sent, status)
            if body is None:
                stop.wait(0.05)


def watch_readiness(url: str, seen: list[tuple[float, int, dict[str, Any]]], stop: threading.Event) -> None:
    """(when, status code, body) of /readyz every 0.2 s."""
    with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
        while not stop.is_set():
            try:
                answer = client.get(url)
                seen.append((time.monotonic(), answer.status_code, answer.json()))
            except httpx.HTTPError:
                seen.append((time.monotonic(), 0, {}))
            stop.wait(0.2)


def first_degraded(seen: list[tuple[float, int, dict[str, Any]]], after: float) -> float | None:
    for at, status, body in seen:
        if at >= after and status == 200 and body.get("status") == "degraded":
            return at - after
    return None
