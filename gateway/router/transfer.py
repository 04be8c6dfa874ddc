"""`gateway eval routing --train A... --test B...`: transfer, not cross-validation — the router fitted on
some labelled sets (as `gateway router train` fits it) and judged on each other set as it is, with no
refit. `gateway eval routing DATA... --own-split 0.3` is the own-traffic case on a labelled set: both
models `gateway router retrain` compares (logistic, kNN) fitted on the set's first part, in its order,
and judged on the rest. Per test set: APGR with a bootstrap 95 % interval, random's, a permutation
test's p-value (the chance that a random ordering of the test prompts routes as well), and the
strong-call share for the quality target against random's (`significance.py`). A router that does not
beat random says so in the last column."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from gateway.router.features import feature_matrix
from gateway.router.knn import nearest_share
from gateway.router.metrics import curve, oracle_curve, random_curve
from gateway.router.outcomes import load_outcomes
from gateway.router.own_traffic import fit_logistic
from gateway.router.significance import judge

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Labelled:
    """A labelled set read for routing: its prompts embedded (as served) and counted, and the weak and
    strong models' scores."""

    name: str
    vectors: npt.NDArray[np.float32]
    counts: Floats
    weak: Floats
    strong: Floats

    @property
    def needs_strong(self) -> npt.NDArray[np.bool_]:
        needs: npt.NDArray[np.bool_] = self.strong > self.weak
        return needs


def labelled(path: Path, limit: int | None, embedder: Any) -> Labelled:
    data = load_outcomes(path)
    outcomes = data.outcomes[:limit] if limit else data.outcomes
    prompts = [o.prompt for o in outcomes]
    return Labelled(
        data.name,
        embedder.embed(prompts, progress=f"embedding {data.name}"),
        feature_matrix(prompts),
        np.array([o.weak for o in outcomes], dtype=np.float64),
        np.array([o.strong for o in outcomes], dtype=np.float64),
    )


def run_transfer(args: argparse.Namespace, embedder: Any) -> dict[str, dict[str, Any]]:
    """Prints the table (and writes `--json`); the curves, for the caller to draw."""
    fitted = [labelled(path, args.limit, embedder) for path in args.train]
    model = fit_logistic(
        np.concatenate([one.vectors for one in fitted]),
        np.concatenate([one.counts for one in fitted]),
        np.concatenate([one.needs_strong for one in fitted]),
    )
    rows, curves = [], {}
    for path in args.test:
        test = labelled(path, args.limit, embedder)
        scores, weak, strong = model.scores(test.vectors, test.counts), test.weak, test.strong
        rows.append({"test": test.name, **judged(scores, weak, strong, args.target, args.weak_cost)})
        curves[test.name] = {
            "router": curve(scores, weak, strong), "random": random_curve(weak, strong),
            "oracle": oracle_curve(weak, strong),
        }  # fmt: skip
    trained_on = ", ".join(one.name for one in fitted)
    _print(
        f"learned router fitted on {trained_on}, judged on each test set without refitting", rows, args.target
    )
    if args.json:
        report = {"trained_on": trained_on, "target": args.target, "tests": rows}
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return curves


def run_own_split(args: argparse.Namespace, embedder: Any) -> int:
    rows = []
    for path in args.data:
        data = labelled(path, args.limit, embedder)
        needs = data.needs_strong
        cut = round(len(needs) * (1 - args.own_split))
        model = fit_logistic(data.vectors[:cut], data.counts[:cut], needs[:cut])
        scores = {
            "logistic": model.scores(data.vectors[cut:], data.counts[cut:]),
            "knn": nearest_share(
                data.vectors[:cut], needs[:cut].astype(np.float32), data.vectors[cut:], args.k
            ),
        }
        for name, score in scores.items():
            figures_of = judged(score, data.weak[cut:], data.strong[cut:], args.target, args.weak_cost)
            rows.append({"test": f"{data.name}/{name}", "fitted": cut, **figures_of})
    first = f"{1 - args.own_split:.0%}"
    title = f"learned router fitted on the first {first} of each set (in its order), judged on the rest"
    _print(title, rows, args.target)
    if args.json:
        report = {"own_split": args.own_split, "target": args.target, "tests": rows}
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return 0


def judged(scores: Floats, weak: Floats, strong: Floats, target: float, weak_cost: float) -> dict[str, Any]:
    found = judge(scores, weak, strong, target, weak_cost)
    result = found.figures
    return {
        "prompts": result.prompts, "apgr": result.apgr, "apgr_low": found.apgr_low,
        "apgr_high": found.apgr_high, "random_apgr": result.random_apgr, "p_value": found.p_value,
        "share_at_target": result.share_at_target, "random_share_at_target": result.random_share_at_target,
        "beats_random": found.beats_random,
    }  # fmt: skip


def _share(value: float | None) -> str:
    return "never" if value is None else f"{value:.1%}"


def _print(title: str, rows: list[dict[str, Any]], target: float) -> None:
    print(title)
    print(
        f"{'test':<26} {'prompts':>8} {'APGR':>6} {'95% interval':>16} {'random':>7} {'p':>7}"
        f" {'strong for ' + format(target, '.0%'):>16} {'random':>8}  verdict"
    )
    for row in rows:
        interval = f"[{row['apgr_low']:.3f}, {row['apgr_high']:.3f}]"
        verdict = "beats random" if row["beats_random"] else "does NOT beat random"
        print(
            f"{row['test']:<26} {row['prompts']:>8,} {row['apgr']:>6.3f} {interval:>16}"
            f" {row['random_apgr']:>7.3f} {row['p_value']:>7.3f} {_share(row['share_at_target']):>16}"
            f" {_share(row['random_share_at_target']):>8}  {verdict}"
        )
