"""Where the learned router's artifact lives and which format it must have, and the error when it is
missing or stale. Apart from the model (`gateway.router.model`, numpy), so compiling a policy that has no
learned-score signal imports nothing of it."""

from __future__ import annotations

from pathlib import Path

FORMAT = "gateway-router/2"
DEFAULT_PATH = Path(__file__).with_name("models") / "router.npz"


class RouterMissing(RuntimeError):
    pass
