"""LiteLLM proxy as a comparison point: found, configured and started only when it is installed.

It is not a dependency of the gateway, so the benchmark probes for it in a subprocess (importing the
proxy takes seconds and hundreds of MB, which must not land in the load generator's process).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

NOT_INSTALLED = "not installed (pip install 'litellm[proxy]' to compare)"
IMPORT_TIMEOUT = 180.0


def offline_env(base: dict[str, str]) -> dict[str, str]:
    """Keep litellm off the network: bundled price map and tokenizers, no remote fetches."""
    env = dict(base)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["LITELLM_OFFLINE_MODE"] = "true"
    env.setdefault("LITELLM_LOG", "ERROR")
    tokenizers = _tokenizers_dir()
    if tokenizers is not None:
        env["TIKTOKEN_CACHE_DIR"] = str(tokenizers)
    return env


def _tokenizers_dir() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return path if path.is_dir() else None


def executable() -> str | None:
    """The `litellm` command of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "litellm"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("litellm")


def unavailable_reason() -> str | None:
    """None when the proxy can run here; otherwise why not, for the report."""
    if importlib.util.find_spec("litellm") is None or executable() is None:
        return NOT_INSTALLED
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import litellm.proxy.proxy_server"],
            env=offline_env(dict(os.environ)),
            capture_output=True,
            timeout=IMPORT_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"import of litellm.proxy.proxy_server took over {IMPORT_TIMEOUT:.0f} s"
    if probe.returncode != 0:
        missing = [line for line in probe.stderr.decode(errors="replace").splitlines() if line.strip()]
        detail = f": {missing[-1].strip()}" if missing else ""
        return f"{NOT_INSTALLED}{detail}"
    return None


def write_config(path: Path, api_base: str, model: str) -> str:
    """A one-model proxy config pointing at the fake; returns the master key the proxy insists on."""
    master_key = "sk-bench-" + secrets.token_hex(16)
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {"model": f"openai/{model}", "api_base": api_base, "api_key": "x"},
            }
        ],
        "general_settings": {"master_key": master_key},
    }
    path.write_text(yaml.safe_dump(config))
    return master_key


def command(config: Path, port: int) -> list[str]:
    litellm = executable()
    assert litellm is not None
    return [
        litellm,
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
