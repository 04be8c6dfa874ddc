"""deploy/Dockerfile passes hadolint (installed from PyPI with the dev tools; no Docker engine needed),
and keeps the properties the deployment relies on: two stages, a non-root numeric user, a health check,
the graceful stop signal, and an image with the runtime's dependencies only (no bench, train or dev extra)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is missing: `make test` installs it with the dev tools"
    return found


def test_the_dockerfile_passes_hadolint() -> None:
    linted = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_hadolint_does_catch_a_root_image(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install gateway\nUSER root\n")
    linted = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert linted.returncode != 0 and "DL3002" in linted.stdout  # last USER should not be root


def test_the_image_runs_as_a_numeric_non_root_user_with_a_health_check() -> None:
    text = DOCKERFILE.read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[-1].endswith("AS runtime")
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].isdigit() and users[-1] != "0"
    assert "HEALTHCHECK" in text and "/healthz" in text and "STOPSIGNAL SIGTERM" in text


def pip_installs(text: str) -> dict[str, list[str]]:
    """Each virtualenv the Dockerfile installs the project into -> the extras named there (`.[a,b]`,
    or `[a]` echoed by a shell condition)."""
    installs: dict[str, list[str]] = {}
    joined = text.replace("\\\n", " ")
    # Commands a RUN chains (`&& /opt/...`): not the `&& echo` inside a `$(...)` condition.
    for command in re.split(r"&&\s*(?=/)|\n", joined):
        install = re.search(r"(/opt/\w+)/bin/pip install .*?\"\.(.*)\"", command)
        if install is not None:
            extras = re.findall(r"\[([\w,-]+)\]", install[2])
            installs.setdefault(install[1], []).extend(e for group in extras for e in group.split(","))
    return installs


def test_the_image_installs_the_runtime_only() -> None:
    """No `bench`, `train` or `dev` extra in the image: the shipped environment is the runtime (and, when
    asked for, the local model); torch's export environment is a build stage's and is not copied."""
    text = DOCKERFILE.read_text()
    installs = pip_installs(text)
    assert installs == {"/opt/gateway": ["local"], "/opt/export": ["embed-export"]}
    runtime = text[text.index("AS runtime") :]
    assert "COPY --from=build /opt/gateway /opt/gateway" in runtime and "/opt/export" not in runtime


def test_the_install_check_reads_extras() -> None:
    text = 'RUN /opt/gateway/bin/pip install -c requirements.lock ".[local,train]"\n'
    assert pip_installs(text) == {"/opt/gateway": ["local", "train"]}
