"""The package's import directions, checked on the source: who may import whom, and no cycles."""

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
    "gateway.inbound",
    "gateway.path",
    "gateway.routing",
    "gateway.providers",
    "gateway.policy",
    "gateway.services",
    "gateway.app",
)
# module prefix -> prefixes it must never import
FORBIDDEN = {
    "gateway.providers": (
        "gateway.api",
        "gateway.inbound",
        "gateway.path",
        "gateway.routing",
        "gateway.services",
        "gateway.app",
    ),
    "gateway.routing": ("gateway.api", "gateway.inbound", "gateway.path", "gateway.services", "gateway.app"),
    # The request path knows no inbound format and no HTTP.
    "gateway.path": ("gateway.api", "gateway.inbound", "gateway.services", "gateway.app"),
    # An inbound adapter only parses and renders: it knows nothing of what happens in between.
    "gateway.inbound": (
        "gateway.api",
        "gateway.path",
        "gateway.routing",
        "gateway.providers",
        "gateway.policy",
        "gateway.services",
        "gateway.app",
    ),
    "gateway.api": ("gateway.providers.openai_compat", "gateway.providers.litellm_adapter"),
    "gateway.wire": ("gateway.",),
    "gateway.errors": ("gateway.",),
    # Side modules: they may use the configuration, never the request path's packages.
    "gateway.identity": REQUEST_PATH,
    "gateway.ledger": REQUEST_PATH,
    "gateway.limits": REQUEST_PATH,
    "gateway.pricing": REQUEST_PATH,
    "gateway.energy": REQUEST_PATH,
    # Capacity (gates, priorities) is read by the executor and admission control, and reads neither.
    "gateway.capacity": REQUEST_PATH,
    # The Batch API's storage knows nothing of what runs its lines (`gateway.deferred`).
    "gateway.batches": (*REQUEST_PATH, "gateway.deferred"),
    # Deferred work runs through the request path; HTTP is the api's.
    "gateway.deferred": ("gateway.api", "gateway.services", "gateway.app"),
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


def imports_when_run(path: Path, package: Path = PACKAGE) -> set[str]:
    """The gateway modules `path` imports, wherever in it (a function's lazy import too), but not those
    under `if TYPE_CHECKING:` (never run). `from a.b import c` names the module a.b.c when there is one."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    known = module_paths(package)
    return {name for name in found if name in known}


def module_paths(package: Path = PACKAGE) -> dict[str, Path]:
    return {
        ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in package.rglob("*.py")
    }


def import_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """Each group of modules that import one another in a circle (Tarjan's strongly connected
    components of the import graph), sorted."""
    graph = {
        module: sorted(imports_when_run(path, package) - {module})
        for module, path in module_paths(package).items()
    }
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in order:
            continue
        # Iterative depth-first search: (module, index of the next import to follow).
        work = [(root, 0)]
        order[root] = low[root] = len(order)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, next_import = work[-1]
            if next_import < len(graph[module]):
                work[-1] = (module, next_import + 1)
                imported = graph[module][next_import]
                if imported not in order:
                    order[imported] = low[imported] = len(order)
                    stack.append(imported)
                    on_stack.add(imported)
                    work.append((imported, 0))
                elif imported in on_stack:
                    low[module] = min(low[module], order[imported])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == order[module]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == module:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def test_no_modules_import_each_other_in_a_circle() -> None:
    """A cycle hidden in a function's lazy import is still a cycle: neither module can be read, tested
    or moved without the other. A Protocol module never imports its backends; a factory that knows
    them lives apart."""
    assert import_cycles() == []


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    package = tmp_path / "gateway"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "store.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gateway.typed import Thing\n"
        "def open_store():\n    from gateway.backend import Backend\n"
    )
    (package / "backend.py").write_text("from gateway import store\n")
    (package / "typed.py").write_text("import gateway.store\n")
    assert import_cycles(package) == [["gateway.backend", "gateway.store"]]


def test_litellm_is_imported_by_one_module_only() -> None:
    importers = sorted(
        m for m, imported in modules().items() if any(n.split(".")[0] == "litellm" for n in imported)
    )
    assert importers == ["gateway.providers.litellm_adapter"]


def test_starting_the_app_does_not_load_litellm() -> None:
    code = (
        "import sys, gateway.app, gateway.cli, gateway.services;"
        "from gateway.app import create_app; create_app();"
        "assert 'litellm' not in sys.modules, 'litellm was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_no_handler_reads_app_state() -> None:
    """Handlers get the running gateway's services as a dependency (`api.access.ServicesDep`), never
    through `app.state`, so what a handler uses is in its signature."""
    readers = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        # The one dependency that hands the services out reads them from the lifespan's state.
        if "app.state" in text or ("request.state" in text and path.name != "access.py"):
            readers.append(str(path.relative_to(PACKAGE.parent)))
    assert readers == []
