"""requirements.lock: it pins every dependency pyproject.toml names for the runtime, the local model and the
`bench` and `train` extras, the environment the tests run in has exactly the locked versions, and no locked
version has a known vulnerability (pip-audit, when its vulnerability service can be reached; offline, the
audit is skipped and says so, never passed blind).

pyproject.toml's `dependencies` are what serving needs and nothing else: each is imported by the code
`gateway serve` can run, that code imports nothing they do not install, and what only the benchmark,
training, evaluation or calibration code needs is in an extra, imported lazily and named in
gateway/extras.py (so a command that misses it says which extra to install). A started gateway imports
none of it. The wheel leaves the benchmarks and the fake upstreams out."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.extras import EXTRA_OF_MODULE
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from tests.conftest import openai_deployment
from tests.gateway_process import start_gateway, write_spec

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "gateway"
LOCK = PROJECT / "requirements.lock"
PIP_AUDIT = Path(sys.executable).parent / "pip-audit"
# Known vulnerabilities accepted for now: id -> why (none today).
ACCEPTED: dict[str, str] = {}
# Extras the lock pins besides the runtime: what `make test` installs with it.
LOCKED_EXTRAS = ("local", "bench", "train")
# Runtime dependencies the gateway's code never imports by name, and who loads them.
LOADED_WITHOUT_AN_IMPORT = {
    "uvloop": "uvicorn, as loop='uvloop' (gateway.cli)",
    "httptools": "uvicorn, as http='httptools' (gateway.cli)",
    "plotly": "plotly.js served from the package, found with find_spec (gateway.api.dashboard)",
    "python-multipart": "FastAPI, for the form of a file upload (gateway.api.batches: POST /v1/files)",
}
# What a started gateway with the default settings must not have imported by its first answer: each is
# only for a feature it is not using (the semantic signals and cache, the dashboard, regex signals,
# token counting, PostgreSQL, litellm's providers, OTLP), or for a command other than `serve`.
NOT_IMPORTED_BY_A_STARTED_GATEWAY = (
    "sklearn",
    "matplotlib",
    "ruamel",
    "jinja2",
    "re2",
    "tiktoken",
    "psycopg",
    "litellm",
    "opentelemetry.exporter.otlp",
    # The embedder, the verifier and the semantic index: only for a policy that embeds or caches
    # semantically.
    "numpy",
    "onnxruntime",
    "usearch",
    "tokenizers",
)


def project() -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    return table


def extra_requirements(extra: str) -> list[Requirement]:
    return [Requirement(text) for text in project()["optional-dependencies"][extra]]


def runtime_requirements() -> list[Requirement]:
    return [Requirement(text) for text in project()["dependencies"]]


def applies(requirement: Requirement, extra: str = "") -> bool:
    return requirement.marker is None or requirement.marker.evaluate({"extra": extra})


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_the_lock_pins_every_runtime_and_extra_dependency_within_its_range() -> None:
    pins = locked()
    named = runtime_requirements() + [r for extra in LOCKED_EXTRAS for r in extra_requirements(extra)]
    for requirement in named:
        if not applies(requirement):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock has {name}=={pins[name]}, outside {requirement}: run `make lock`"
        )


def test_the_tests_run_on_the_locked_versions() -> None:
    different = {}
    for name, version in locked().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # only for another platform or Python (a marker the lock resolved for 3.11.0)
        if installed != version:
            different[name] = f"locked {version}, installed {installed}"
    assert different == {}, "reinstall with `make install-dev` (it installs with -c requirements.lock)"


def test_no_locked_dependency_has_a_known_vulnerability() -> None:
    audited, reasons = [], []
    for service in ("pypi", "osv"):
        command = [str(PIP_AUDIT), "-r", str(LOCK), "--no-deps", "--disable-pip", "--format", "json"]
        command += ["--vulnerability-service", service, "--progress-spinner", "off", "--timeout", "10"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if not done.stdout.startswith("{"):
            reasons.append(
                f"{service}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'}"
            )
            continue
        dependencies = json.loads(done.stdout)["dependencies"]
        audited = [d for d in dependencies if "skip_reason" not in d]
        if audited:
            break
        reasons.append(f"{service}: {dependencies[0]['skip_reason'] if dependencies else 'no answer'}")
    if not audited:
        pytest.skip("no vulnerability service answered, nothing was audited: " + "; ".join(reasons))
    found = {
        f"{d['name']}=={d['version']}: {v['id']} (fixed in {', '.join(v['fix_versions']) or 'nothing yet'})"
        for d in audited
        for v in d["vulns"]
        if v["id"] not in ACCEPTED
    }
    assert found == set()


# The gateway's imports, read from its source.


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # the module imported (for `from a import b`, a.b when that is a module, else a)
    importer: str  # the gateway module that imports it
    at_import: bool  # at module level (so importing the importer imports it), not in a function


def imports_in(path: Path, name: str, known: Iterable[str]) -> list[Import]:
    """Every import statement of the module at `path` (named `name`), except those under
    `if TYPE_CHECKING:`, which never run."""
    modules = set(known)
    found: list[Import] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, at_import)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, name, at_import) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append(Import(submodule if submodule in modules else node.module, name, at_import))
        inside = at_import and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for inner in ast.iter_child_nodes(node):
            visit(inner, inside)

    visit(ast.parse(path.read_text()), True)
    return found


def package_modules(package: Path) -> dict[str, Path]:
    return {
        ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in package.rglob("*.py")
    }


def all_imports(package: Path) -> list[Import]:
    modules = package_modules(package)
    return [found for name, path in modules.items() for found in imports_in(path, name, modules)]


def serve_roots(package: Path) -> set[str]:
    """What `gateway serve` imports first: gateway.cli's module-level imports (its other commands' are
    in their functions) and those of its `_serve`."""
    cli = package / "cli.py"
    tree = ast.parse(cli.read_text())
    serve = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_serve"]
    assert serve, "gateway/cli.py has no _serve: tell this test where `gateway serve` starts"
    name = f"{package.name}.cli"
    roots = {i.module for i in imports_in(cli, name, package_modules(package)) if i.at_import}
    for node in ast.walk(serve[0]):
        if isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module)
        elif isinstance(node, ast.Import):
            roots.update(alias.name for alias in node.names)
    return roots


def serving_modules(package: Path) -> set[str]:
    """The gateway modules `gateway serve` may run (gateway.cli aside): from its roots, everything they
    import, wherever in them (a function's lazy import may run while serving, and so counts)."""
    modules = package_modules(package)
    graph: dict[str, set[str]] = {}
    for found in all_imports(package):
        graph.setdefault(found.importer, set()).add(found.module)
    reached, todo = set(), [m for m in serve_roots(package) if m in modules]
    while todo:
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        # Importing a.b.c runs a/__init__ and a/b/__init__ too.
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo += [m for m in [*graph.get(module, ()), *parents] if m in modules]
    return reached


@functools.cache
def module_owners() -> dict[str, str]:
    """Installed module name -> the distribution whose files hold it (opentelemetry.sdk.trace ->
    opentelemetry-sdk)."""
    owners: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        name = canonicalize_name(distribution.metadata["Name"])
        for file in distribution.files or ():
            parts = file.parts
            if ".." in parts or not parts or parts[0].endswith((".dist-info", ".egg-info", ".data")):
                continue
            if file.suffix == ".py":
                module = ".".join(parts).removesuffix(".py").removesuffix(".__init__")
            elif file.suffix in (".so", ".pyd"):
                module = ".".join((*parts[:-1], parts[-1].split(".")[0]))
            else:
                continue
            owners.setdefault(module, name)
    return owners


def owner_of(module: str) -> str | None:
    """The distribution that installs `module` (its own files or a parent package's); None for the
    standard library and the gateway itself."""
    owners = module_owners()
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = owners.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def installed_by(requirements: Iterable[Requirement]) -> set[str]:
    """The distributions these requirements install, their own dependencies included."""
    seen: set[str] = set()
    todo = [(r, "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        if not applies(requirement, extra):
            continue
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.update((key, name))
        try:
            needs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not for this platform
        for wanted in ("", *requirement.extras):
            todo += [(Requirement(text), wanted) for text in needs]
    return {name for name in seen if "[" not in name}


def third_party(imports: Iterable[Import], prefix: str = "gateway") -> list[tuple[Import, str]]:
    found = []
    for imported in imports:
        if imported.module.split(".")[0] == prefix:
            continue
        owner = owner_of(imported.module)
        if owner is not None:
            found.append((imported, owner))
    return found


def unused_runtime_dependencies(
    package: Path, dependencies: Iterable[Requirement], loaded_by_name: Mapping[str, str]
) -> dict[str, list[str]]:
    """Runtime dependencies no module `gateway serve` may run imports: each with the modules that do
    import it (bench, training, calibration...), which say where it belongs instead."""
    serving = serving_modules(package)
    imports = third_party(all_imports(package), package.name)
    used = {owner for imported, owner in imports if imported.importer in serving}
    used |= {owner for root in serve_roots(package) if (owner := owner_of(root)) is not None}
    unused: dict[str, list[str]] = {}
    for requirement in dependencies:
        name = canonicalize_name(requirement.name)
        if applies(requirement) and name not in used and requirement.name not in loaded_by_name:
            unused[name] = sorted({i.importer for i, owner in imports if owner == name})
    return unused


def test_every_runtime_dependency_is_imported_by_the_serving_code() -> None:
    unused = unused_runtime_dependencies(PACKAGE, runtime_requirements(), LOADED_WITHOUT_AN_IMPORT)
    named = {canonicalize_name(r.name) for r in runtime_requirements()}
    assert set(LOADED_WITHOUT_AN_IMPORT) <= named
    imported = unused_runtime_dependencies(PACKAGE, runtime_requirements(), {})
    assert sorted(set(LOADED_WITHOUT_AN_IMPORT) - set(imported)) == [], "imported after all: not an exception"
    assert unused == {}, (
        "runtime dependencies that serving never imports (only these modules do): move each to the extra "
        "its importers need (`bench`, `train`) and import it lazily, naming it in gateway/extras.py"
    )


def test_the_serving_code_imports_only_what_the_runtime_installs() -> None:
    serving = serving_modules(PACKAGE)
    runtime = installed_by(runtime_requirements())
    outside = sorted(
        f"{imported.importer} imports {imported.module} ({owner})"
        for imported, owner in third_party(all_imports(PACKAGE))
        if imported.importer in serving and owner not in runtime
    )
    assert outside == [], "`pip install gateway` does not install these: add them to `dependencies`"


def extras_only() -> dict[str, set[str]]:
    """Each distribution the bench and train extras install that the runtime does not -> its extras."""
    runtime = installed_by(runtime_requirements())
    found: dict[str, set[str]] = {}
    for extra in ("bench", "train"):
        for name in installed_by(extra_requirements(extra)) - runtime:
            found.setdefault(name, set()).add(extra)
    return found


def test_what_only_an_extra_installs_is_imported_lazily_and_named_in_gateway_extras() -> None:
    optional = extras_only()
    problems = []
    for imported, owner in third_party(all_imports(PACKAGE)):
        if owner not in optional:
            continue
        if imported.at_import:
            problems.append(f"{imported.importer} imports {imported.module} at import time: import it lazily")
        named = EXTRA_OF_MODULE.get(imported.module.split(".")[0])
        if named is None or canonicalize_name(named[0]) != owner or named[1] not in optional[owner]:
            problems.append(
                f"{imported.importer} imports {imported.module} ({owner}, in {sorted(optional[owner])}): "
                f"gateway/extras.py must name it as {imported.module.split('.')[0]!r}: ({owner!r}, extra)"
            )
    for module, (distribution, extra) in EXTRA_OF_MODULE.items():
        if extra not in optional.get(canonicalize_name(distribution), set()):
            problems.append(
                f"gateway/extras.py: {module} -> {distribution} is not what the {extra} extra adds"
            )
    assert problems == []


def test_the_checks_see_a_dependency_only_training_imports(tmp_path: Path) -> None:
    package = tmp_path / "gateway"
    (package / "router").mkdir(parents=True)
    for init in (package / "__init__.py", package / "router" / "__init__.py"):
        init.write_text("")
    (package / "cli.py").write_text("def _serve():\n    from gateway.app import create_app\n")
    (package / "app.py").write_text(
        "from typing import TYPE_CHECKING\nimport yaml\nif TYPE_CHECKING:\n    import sklearn\n"
        "def create_app():\n    import orjson\n"
    )
    (package / "router" / "training.py").write_text("def fit():\n    from sklearn.linear_model import X\n")
    dependencies = [Requirement(r) for r in ("pyyaml", "orjson", "scikit-learn>=1.4", "uvloop")]
    unused = unused_runtime_dependencies(package, dependencies, {"uvloop": "by name"})
    assert unused == {"scikit-learn": ["gateway.router.training"]}
    assert serving_modules(package) == {"gateway", "gateway.app"}
    assert [i.at_import for i in all_imports(package) if i.module == "sklearn.linear_model"] == [False]


# A started gateway.


def imported_modules(log: str) -> set[str]:
    """The modules a process started with PYTHONPROFILEIMPORTTIME=1 imported, from its log."""
    return {line.split("|")[-1].strip() for line in log.splitlines() if line.startswith("import time:")}


def test_a_started_gateway_has_imported_nothing_it_does_not_use(
    upstreams: Callable[..., FakeOpenAIUpstream], tmp_path: Path
) -> None:
    spec = {"deployments": {"d": openai_deployment(upstreams())}, "routes": {"r": ["d"]}}
    settings = {
        **write_spec({**spec, "default_route": "r"}, tmp_path),
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "PYTHONPROFILEIMPORTTIME": "1",
    }
    gateway = start_gateway(settings, tmp_path / "gateway.log")
    try:
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=10).status_code == 200
    finally:
        gateway.stop()
    imported = imported_modules((tmp_path / "gateway.log").read_text())
    assert "gateway.app" in imported and "uvicorn" in imported  # the log is the serving process's
    assert sorted(imported & set(NOT_IMPORTED_BY_A_STARTED_GATEWAY)) == []


def test_the_gateway_command_imports_only_the_command_it_runs() -> None:
    code = (
        "import sys\nfrom gateway.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('gateway.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "serve" in done.stdout and "router" in done.stdout  # --help listed the commands
    assert done.stdout.splitlines()[-1] == "['gateway.cli', 'gateway.extras']"


def test_the_wheel_leaves_the_benchmarks_and_the_fakes_out(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT / name, source / name)
    shutil.copytree(PACKAGE, source / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*command, "-w", str(tmp_path), str(source)], check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith(("gateway/bench/", "gateway/fakes/"))] == []
    assert {"gateway/cli.py", "gateway/extras.py", "gateway/router/training.py"} <= set(names)
    # What serving reads from the package is there: the verifier, the router, the dashboard's files.
    for data in (
        "cache/models/verifier-int8.onnx",
        "router/models/router.npz",
        "dashboard/templates/base.html",
    ):
        assert f"gateway/{data}" in names
