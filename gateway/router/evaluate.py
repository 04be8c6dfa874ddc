"""`gateway eval routing DATA...`: how well the learned router sends to the strong model only what the
weak one would get wrong, on held-out prompts, against random routing and the oracle.

The router is logistic regression over the prompt's MiniLM embedding (the one the gateway already
computes) and a few cheap counts of its text (`gateway.router.features`), predicting "the strong model
does better here". Each data set is scored by k-fold
cross-validation (`--folds`, 5 by default, folds fixed by a seed): every prompt's score comes from a
model that never saw it. Prints a table per data set (`--json` writes the figures, `--png` the curves).
Data: see `gateway.router.outcomes` for the accepted shapes; contaminated prompts are left out.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.extras import require
from gateway.router.features import design, feature_matrix, standardiser
from gateway.router.metrics import RouterFigures, curve, figures, oracle_curve, random_curve
from gateway.router.outcomes import OutcomeSet, load_outcomes

QUALITY_TARGET = 0.95
FOLDS = 5
SEED = 0
# As the policy embeds a request's last user turn (`policy/signals.LazyEmbedder`, `training.py`): a router
# is judged on the vector it will be served.
EMBED_TOKENS = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", type=Path, nargs="*", help="labelled outcomes (JSON lines, CSV, or a directory)"
    )
    parser.add_argument("--train", type=Path, nargs="+", help="fit on these sets (no cross-validation) ...")
    parser.add_argument("--test", type=Path, nargs="+", help="... and judge on each of these")
    parser.add_argument(
        "--recorded", action="store_true",
        help="judge on the gateway's own labelled traffic instead (`--decisions`, `--team`)",
    )  # fmt: skip
    parser.add_argument("--team", help="with --recorded: one team's traffic")
    parser.add_argument("--decisions", type=Path, default=Path(".gateway/decisions.sqlite"))
    parser.add_argument(
        "--held-out", type=float, default=0.3, help="with --recorded: the later share judged on"
    )
    parser.add_argument("--k", type=int, default=15, help="with --recorded: neighbours for the kNN model")
    parser.add_argument(
        "--own-split", type=float,
        help="fit on each DATA set's first part (in its order) and judge on this later share of it",
    )  # fmt: skip
    parser.add_argument("--folds", type=int, default=FOLDS)
    parser.add_argument(
        "--target", type=float, default=QUALITY_TARGET, help="share of the strong model's score"
    )
    parser.add_argument("--weak-cost", type=float, default=0.0, help="a weak call's cost / a strong call's")
    parser.add_argument("--limit", type=int, help="at most this many prompts per data set (a quick run)")
    parser.add_argument("--embedder", type=Path, default=None)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)


Vectors = np.ndarray[Any, np.dtype[np.float32]]


def cross_validated_scores(
    blocks: list[tuple[Vectors, list[str]]],
    needs_strong: np.ndarray[Any, np.dtype[np.bool_]],
    folds: int,
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Each prompt's P(strong needed) from a model fitted on the other folds. Each block is texts and
    their embeddings (the prompt; for a cascade also the weak answer), read as the router reads a prompt:
    the embedding and the text counts, standardised with the fitting folds' statistics."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    counted = [(vectors, feature_matrix(texts)) for vectors, texts in blocks]
    scores = np.zeros(len(needs_strong))
    for fit, held in KFold(n_splits=folds, shuffle=True, random_state=SEED).split(needs_strong):
        if needs_strong[fit].all() or not needs_strong[fit].any():
            scores[held] = float(needs_strong[fit].mean())
            continue
        fitting, scoring = [], []
        for vectors, counts in counted:
            standardised = standardiser(counts[fit])
            fitting.append(design(vectors[fit], counts[fit], *standardised))
            scoring.append(design(vectors[held], counts[held], *standardised))
        model = LogisticRegression(C=1.0, max_iter=3000)
        model.fit(np.hstack(fitting), needs_strong[fit])
        scores[held] = model.predict_proba(np.hstack(scoring))[:, 1]
    return scores


def run(args: argparse.Namespace) -> int:
    from gateway.embedding.embedder import Embedder, default_model_path

    require("sklearn", *(["matplotlib"] if args.png else []))  # before minutes of embedding
    if bool(args.train) != bool(args.test) or bool(args.train) == bool(args.data):
        print("eval routing takes DATA..., or --train A... --test B..., or --recorded", file=sys.stderr)
        return 2
    embedder = Embedder(args.embedder or default_model_path(), max_tokens=EMBED_TOKENS)
    if args.train:
        from gateway.router.transfer import run_transfer

        transferred = run_transfer(args, embedder)
        if args.png:
            plot_curves(args.png, transferred, args.target)
            print(f"wrote {args.png}", file=sys.stderr)
        return 0
    if args.own_split is not None:
        from gateway.router.transfer import run_own_split

        return run_own_split(args, embedder)
    results: dict[str, RouterFigures] = {}
    curves: dict[str, dict[str, Any]] = {}
    for path in args.data:
        data: OutcomeSet = load_outcomes(path)
        outcomes = data.outcomes[: args.limit] if args.limit else data.outcomes
        weak = np.array([o.weak for o in outcomes])
        strong = np.array([o.strong for o in outcomes])
        vectors = embedder.embed([o.prompt for o in outcomes], progress=f"embedding {data.name}")
        folds = min(args.folds, len(outcomes))
        scores = cross_validated_scores([(vectors, [o.prompt for o in outcomes])], strong > weak, folds)
        results[data.name] = figures(scores, weak, strong, args.target, args.weak_cost)
        curves[data.name] = {
            "router": curve(scores, weak, strong),
            "random": random_curve(weak, strong),
            "oracle": oracle_curve(weak, strong),
            "excluded": data.excluded,
        }
    print(_table(results, args.target, args.folds))
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                {
                    "target": args.target,
                    "folds": args.folds,
                    "weak_cost": args.weak_cost,
                    "data": {
                        name: {**asdict(result), "excluded": curves[name]["excluded"]}
                        for name, result in results.items()
                    },
                },
                option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
            )
        )
    if args.png:
        plot_curves(args.png, curves, args.target)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def share_text(value: float | None) -> str:
    """A strong-call share for a table: a percentage, or `never` when the target is out of reach."""
    return "never" if value is None else f"{value:.1%}"


def _table(results: dict[str, RouterFigures], target: float, folds: int) -> str:
    lines = [
        f"learned router (logistic regression on MiniLM embeddings and text counts, {folds}-fold CV)",
        f"strong-call share needed for {target:.0%} of the strong model's score, and APGR",
        "",
        f"{'data':<18} {'prompts':>8} {'weak':>6} {'strong':>7} {'oracle':>7} "
        f"{'router':>8} {'random':>8} {'oracle%':>8} {'APGR':>6} {'rand.':>6} {'saved':>7}",
    ]
    for name, r in results.items():
        saved = "-" if r.cost_saved_at_target is None else f"{r.cost_saved_at_target:.1%}"
        lines.append(
            f"{name:<18} {r.prompts:>8,} {r.weak:>6.3f} {r.strong:>7.3f} {r.oracle:>7.3f} "
            f"{share_text(r.share_at_target):>8} {share_text(r.random_share_at_target):>8} "
            f"{share_text(r.oracle_share_at_target):>8} {r.apgr:>6.3f} {r.random_apgr:>6.3f} {saved:>7}"
        )
    return "\n".join(lines)


def plot_curves(path: Path, curves: dict[str, dict[str, Any]], target: float) -> None:
    """One panel per data set: every curve it has (router, random, oracle, and cascade when judged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), dpi=110, squeeze=False)
    # Okabe-Ito colours: distinguishable with colour-blindness.
    colours = {"router": "#0072B2", "cascade": "#CC79A7", "random": "#E69F00", "oracle": "#009E73"}
    for axis, (name, drawn) in zip(axes[0], curves.items(), strict=True):
        for kind, colour in colours.items():
            if kind in drawn:
                line = drawn[kind]
                axis.plot(line.shares, line.quality, color=colour, label=kind)
        strong = drawn["random"].quality[-1]
        axis.axhline(
            target * strong, color="#999999", linestyle="--", linewidth=1, label=f"{target:.0%} of strong"
        )
        axis.set_title(name)
        axis.set_xlabel("share of calls to the strong model")
        axis.set_ylabel("quality (mean score)")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
