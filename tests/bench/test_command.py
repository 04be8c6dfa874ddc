"""The `gateway bench` arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.bench.command import CACHE_ENTRIES, DEPTH_ROWS, add_bench_arguments
from gateway.bench.depth import LABELS


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_run_both_tables_with_every_depth_row() -> None:
    args = _parse()
    assert (args.no_depth, args.depth_only, args.gateway_pythonpath) == (False, False, None)
    assert args.depth_rows == DEPTH_ROWS == tuple(LABELS)
    assert args.cache_entries == CACHE_ENTRIES == 100_000


def test_depth_options() -> None:
    args = _parse(
        "--depth-only", "--depth-rows", "rules, semantic-cache-hit", "--gateway-pythonpath", "/tmp/before"
    )
    assert args.depth_only and args.depth_rows == ("rules", "semantic-cache-hit")
    assert args.gateway_pythonpath == Path("/tmp/before")


@pytest.mark.parametrize(
    "argv",
    [("--no-depth", "--depth-only"), ("--depth-rows", "rules,everything"), ("--cache-entries", "many")],
)
def test_refused(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert "error" in capsys.readouterr().err
