"""The package's import directions, checked on the source: who may import whom."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"

# What a side module (identity, ledger, limits, pricing, telemetry, the learned router) must never
# import: the request path.
REQUEST_PATH = (
    "gateway.api",
    "gateway.pipeline",
    "gateway.routing",
    "gateway.providers",
    "gateway.policy",
    "gateway.runtime",
    "gateway.app",
)
# module prefix -> prefixes it must never import
FORBIDDEN = {
    "gateway.providers": (
        "gateway.api",
        "gateway.pipeline",
        "gateway.routing",
        "gateway.runtime",
        "gateway.app",
    ),
    "gateway.routing": ("gateway.api", "gateway.pipeline", "gateway.runtime", "gateway.app"),
    "gateway.pipeline": ("gateway.api", "gateway.runtime", "gateway.app"),
    "gateway.api": ("gateway.providers.openai_compat", "gateway.providers.litellm_adapter"),
    "gateway.wire": ("gateway.api", "gateway.pipeline", "gateway.routing", "gateway.providers"),
    "gateway.errors": ("gateway.",),
    # Side modules: they may use the configuration, never the request path's packages.
    "gateway.identity": REQUEST_PATH,
    "gateway.ledger": REQUEST_PATH,
    "gateway.limits": REQUEST_PATH,
    "gateway.pricing": REQUEST_PATH,
    # The learned router is read by the policy; it knows nothing of the request path.
    "gateway.router": REQUEST_PATH,
    # Telemetry reads finished records through its own Protocol; it knows nothing of the rest.
    "gateway.telemetry": ("gateway.identity", "gateway.ledger", "gateway.limits", *REQUEST_PATH),
}
NEVER_ON_THE_SERVING_PATH = ("gateway.fakes", "gateway.bench")


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def modules() -> dict[str, set[str]]:
    result = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        result[name] = imports_of(path)
    return result


def test_import_directions() -> None:
    violations = []
    for module, imported in modules().items():
        for prefix, forbidden in FORBIDDEN.items():
            if module.startswith(prefix):
                violations += [f"{module} imports {name}" for name in imported if name.startswith(forbidden)]
        if not module.startswith(("gateway.fakes", "gateway.bench", "gateway.cli")):
            violations += [
                f"{module} imports {name}" for name in imported if name.startswith(NEVER_ON_THE_SERVING_PATH)
            ]
    assert violations == []


def test_litellm_is_imported_by_one_module_only() -> None:
    importers = sorted(
        m for m, imported in modules().items() if any(n.split(".")[0] == "litellm" for n in imported)
    )
    assert importers == ["gateway.providers.litellm_adapter"]


def test_starting_the_app_does_not_load_litellm() -> None:
    code = (
        "import sys, gateway.app, gateway.cli, gateway.runtime;"
        "from gateway.app import create_app; create_app();"
        "assert 'litellm' not in sys.modules, 'litellm was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
