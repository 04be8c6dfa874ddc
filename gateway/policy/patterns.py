"""Regular expressions from policies, run with RE2: matching takes time linear in the text, whatever the
pattern, so a pattern like `(a|aa)+$` cannot hold a request's CPU hostage (Python's `re` backtracks
exponentially on it). RE2 has no backreferences or lookaround; a policy that uses them is refused when it
loads, with RE2's reason. Compiling is bounded in memory too, so a huge pattern is refused, not built."""

from __future__ import annotations

from typing import Any

import re2

# RE2's memory budget for one compiled pattern; a pattern that needs more is refused.
MAX_PATTERN_MEMORY = 8 << 20


class PatternError(ValueError):
    pass


def compile_pattern(pattern: str, *, case_sensitive: bool) -> Any:
    """A compiled RE2 pattern (`.search(text)` as `re`); PatternError saying why one cannot be."""
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.log_errors = False
    options.max_mem = MAX_PATTERN_MEMORY
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(
            f"{reason} (patterns run on RE2, in linear time: no backreferences or lookaround)"
        ) from None
