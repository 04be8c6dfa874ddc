"""Regular expressions from policies, run with RE2: matching takes time linear in the text, whatever the
pattern, so a pattern like `(a|aa)+$` cannot hold a request's CPU hostage (Python's `re` backtracks
exponentially on it). RE2 has no backreferences or lookaround; a policy that uses them is refused when it
loads, with RE2's reason. Compiling is bounded in memory too, so a huge pattern is refused, not built.
RE2 is imported by the first pattern compiled: a policy without regex signals never loads it."""

from __future__ import annotations

from typing import Any

# RE2's memory budget for one compiled pattern; a pattern that needs more is refused.
MAX_PATTERN_MEMORY = 8 << 20
# Instructions in a compiled pattern. Past ~50,000, RE2's DFA no longer fits the budget above and each
# search falls back to a slower engine: a 60,000-instruction alternation took 6.4 s on a 120 KB prompt,
# 15,000 took 2.3 ms (tests/policy/test_compile.py). Ordinary patterns are a few hundred.
MAX_PROGRAM_SIZE = 20_000


class PatternError(ValueError):
    pass


def compile_pattern(pattern: str, *, case_sensitive: bool) -> Any:
    """A compiled RE2 pattern (`.search(text)` as `re`); PatternError saying why one cannot be."""
    import re2

    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.log_errors = False
    options.max_mem = MAX_PATTERN_MEMORY
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(
            f"{reason} (patterns run on RE2, in linear time: no backreferences or lookaround)"
        ) from None
    if compiled.programsize > MAX_PROGRAM_SIZE:
        raise PatternError(
            f"pattern too large: {compiled.programsize:,} instructions compiled, at most "
            f"{MAX_PROGRAM_SIZE:,} (split it into several signals)"
        )
    return compiled
