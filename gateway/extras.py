"""The optional dependencies some commands need (pyproject.toml's extras), and the one-line message that
names the extra to install when one is missing.

Serving needs none of them; the training, evaluation and calibration commands need `train`. A command
checks with `require` before it starts its work (an evaluation must not embed for minutes and then fail
on its plot), and the `gateway` command turns the import of a missing one into the same message.
"""

from __future__ import annotations

import importlib.util

# Import name -> (the distribution, the extra that installs it). tests/test_dependencies.py keeps this in
# step with pyproject.toml: every distribution an extra adds beyond the runtime is here, and nothing else.
EXTRA_OF_MODULE = {
    # Fitting the learned router: `gateway router train`, `gateway eval`.
    "sklearn": ("scikit-learn", "train"),
    # The reports' plots (`--png`); the `bench` extra has it too, for the soak's.
    "matplotlib": ("matplotlib", "train"),
    # Rewriting a policy with its comments kept: `gateway router calibrate`.
    "ruamel": ("ruamel.yaml", "train"),
}


class MissingExtra(Exception):
    """A command needs an optional dependency that is not installed; the message says what to install."""


def install_hint(module: str) -> str | None:
    """What to install for `module` when an extra has it (`needs X, which is not installed: pip install
    'gateway[extra]'`), else None."""
    found = EXTRA_OF_MODULE.get(module.split(".")[0])
    if found is None:
        return None
    distribution, extra = found
    return f"needs {distribution}, which is not installed: pip install 'gateway[{extra}]'"


def require(*modules: str) -> None:
    """Fail with MissingExtra, before any work is done, when one of `modules` (import names an extra
    installs) is not installed."""
    for module in modules:
        hint = install_hint(module)
        if hint is None:
            raise ValueError(f"{module} is not in any extra (gateway.extras.EXTRA_OF_MODULE)")
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise MissingExtra(hint)
