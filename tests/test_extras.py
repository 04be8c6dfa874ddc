"""gateway/extras.py: a command that needs an extra which is not installed says which one, in a line, before
it does any work; so does a command of the source checkout run from an installed package. "Not installed"
is real here: the child process's import of the module is made to fail (None in sys.modules), as it fails
where the extra was never installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.extras import MissingExtra, install_hint, require


def gateway_without(missing: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS...` in a process where `missing` cannot be imported."""
    code = (
        f"import sys; sys.modules[{missing!r}] = None; from gateway.cli import main; "
        f"sys.exit(main({list(args)!r}))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_missing_extra_module_is_named_with_its_extra() -> None:
    assert install_hint("sklearn.linear_model") == (
        "needs scikit-learn, which is not installed: pip install 'gateway[train]'"
    )
    assert (
        install_hint("ruamel.yaml")
        == "needs ruamel.yaml, which is not installed: pip install 'gateway[train]'"
    )
    assert install_hint("numpy") is None  # a runtime dependency: no extra to name


def test_require_passes_when_installed_and_refuses_what_no_extra_has() -> None:
    require("sklearn", "matplotlib")  # `make test` installs the train extra
    with pytest.raises(ValueError, match="not in any extra"):
        require("numpy")


def test_evaluating_without_the_train_extra_says_so_before_any_work(tmp_path: Path) -> None:
    # The data does not exist: had the command started its work, it would complain about that instead.
    done = gateway_without("sklearn", "eval", "routing", str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "gateway eval: needs scikit-learn, which is not installed: pip install 'gateway[train]'"
    )


def test_a_plot_without_matplotlib_is_refused_before_any_work(tmp_path: Path) -> None:
    png = tmp_path / "curves.png"
    done = gateway_without(
        "matplotlib", "eval", "cascade", str(tmp_path / "missing.jsonl"), "--png", str(png)
    )
    assert done.returncode == 2
    assert "needs matplotlib" in done.stderr and "gateway[train]" in done.stderr
    assert not png.exists()


def test_calibrating_without_the_train_extra_names_it(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("routes:\n  r:\n    deployments: [d]\ndefault_route: r\n")
    done = gateway_without("ruamel", "router", "calibrate", str(policy), "--max-frontier-share", "0.3")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "gateway router: needs ruamel.yaml, which is not installed: pip install 'gateway[train]'"
    )


def test_the_benchmark_outside_a_source_checkout_says_where_it_is() -> None:
    done = gateway_without("gateway.bench", "bench", "--duration", "1")
    assert done.returncode == 2
    assert done.stderr.startswith("gateway bench: gateway.bench is in a source checkout only")


def test_an_unrelated_missing_module_is_not_dressed_up_as_an_extra() -> None:
    done = gateway_without("gateway.config", "check-config", "nothing.yaml")
    assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr


def test_missing_extra_is_the_error_require_raises() -> None:
    code = "import sys; sys.modules['sklearn'] = None; from gateway.extras import require; require('sklearn')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert f"{MissingExtra.__module__}.{MissingExtra.__name__}: needs scikit-learn" in done.stderr
