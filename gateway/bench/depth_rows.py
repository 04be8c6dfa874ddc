"""The depth table's rows and defaults, apart from the code that runs them (the command line reads them)."""

from __future__ import annotations

from pathlib import Path

# The depth table's rows, in order (gateway.bench.depth says what each runs).
DEPTH_ROWS = (
    "pass-through", "rules", "semantic-signal", "semantic-cache-miss", "semantic-cache-hit",
    "responses", "responses-stream", "messages", "messages-stream", "responses-native",
    "responses-native-stream",
)  # fmt: skip
DEFAULT_PROMPTS = Path("../shared/data/traces/ShareGPT_V3_filtered_1000.json")
CACHE_ENTRIES = 100_000
