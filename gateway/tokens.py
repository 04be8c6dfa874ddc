"""Offline token counts with tiktoken, for the usage an upstream did not report.

tiktoken fetches its encodings from the web unless TIKTOKEN_CACHE_DIR points at a copy; litellm
ships one, so the counter points tiktoken there (found without importing litellm).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tiktoken

# OpenAI's accounting adds a few tokens per message for the role and separators.
TOKENS_PER_MESSAGE = 3
ENCODING = "cl100k_base"


def use_bundled_tiktoken_files() -> None:
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.submodule_search_locations:
        package = next(iter(spec.submodule_search_locations))
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(package, "litellm_core_utils", "tokenizers"))


class TokenCounter:
    """Counts tokens with one encoding, loaded on first use (about 0.1 s)."""

    def __init__(self, encoding: str = ENCODING) -> None:
        self._name = encoding
        self._encoding: tiktoken.Encoding | None = None

    def _get(self) -> tiktoken.Encoding:
        if self._encoding is None:
            import tiktoken

            use_bundled_tiktoken_files()
            self._encoding = tiktoken.get_encoding(self._name)
        return self._encoding

    def count_text(self, text: str) -> int:
        return len(self._get().encode_ordinary(text))  # special tokens count as plain text

    def count_messages(self, messages: Iterable[Any]) -> int:
        total = 0
        for message in messages:
            total += TOKENS_PER_MESSAGE
            if isinstance(message, dict):
                total += self.count_text(content_text(message.get("content")))
        return total


def image_parts(content: Any) -> int:
    """How many image parts a message's content holds."""
    if not isinstance(content, list):
        return 0
    kinds = ("image_url", "input_image", "image")
    return sum(1 for part in content if isinstance(part, dict) and part.get("type") in kinds)


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
