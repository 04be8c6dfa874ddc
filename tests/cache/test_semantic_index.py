"""The semantic index's dependency: usearch must load alongside the embedder's onnxruntime."""

from __future__ import annotations

import subprocess
import sys


def test_usearch_then_onnxruntime_imports_without_crashing() -> None:
    # usearch 2.26 segfaults when onnxruntime is imported after it (hence the pin below 2.26); a crash
    # kills the interpreter, so it is checked in a child process.
    child = subprocess.run(
        [sys.executable, "-c", "import usearch.index, onnxruntime"], capture_output=True, timeout=60
    )
    assert child.returncode == 0, child.stderr.decode(errors="replace")
