"""requirements.lock: it pins every runtime dependency pyproject.toml names, the environment the tests run
in has exactly the locked versions, and no locked version has a known vulnerability (pip-audit, when its
vulnerability service can be reached; offline, the audit is skipped and says so, never passed blind)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = Path(__file__).resolve().parents[1]
LOCK = PROJECT / "requirements.lock"
PIP_AUDIT = Path(sys.executable).parent / "pip-audit"
# Known vulnerabilities accepted for now: id -> why (none today).
ACCEPTED: dict[str, str] = {}


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    named = project["dependencies"] + project["optional-dependencies"]["local"]
    return [Requirement(text) for text in named]


def test_the_lock_pins_every_runtime_dependency_within_its_range() -> None:
    pins = locked()
    for requirement in runtime_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
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
