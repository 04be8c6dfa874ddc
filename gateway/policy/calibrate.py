"""`gateway router calibrate POLICY`: set the learned router's threshold in a policy from a target the
admins state, and write the result as a candidate policy to review (`gateway policy replay --ledger`,
`gateway policy diff`) before it ships.

Two kinds of target:

- `--max-frontier-share 0.3`: at most that share of the policy's recorded traffic goes to the route the
  threshold sends to (the frontier). The recorded traffic is the ledger's: every routed request keeps the
  signal values its decision looked at, so each candidate threshold is judged by replaying those
  decisions, exactly as `gateway policy replay` does, other rules included (a request sent to the
  frontier for its tools stays there whatever the threshold).
- `--quality 0.95 --labelled DATA`: the least frontier share that keeps 0.95 x the frontier's quality on a
  labelled sample of the team's own prompts (any format `gateway eval routing` reads, e.g. the output of
  `gateway router feedback`), scored by the router the signal uses.

The threshold is the one comparison (`gt` or `gte`) of the learned-score signal in the policy's rules;
the file is rewritten with its comments and layout kept, and must still pass its golden cases.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.policy.compile import CompiledPolicy, PolicyError, compile_policy_text
from gateway.policy.records import DecisionRecord
from gateway.policy.replay import replay
from gateway.policy.signals import SignalTools

if TYPE_CHECKING:
    # ruamel.yaml comes with the `train` extra (gateway.extras): imported when a policy is read.
    from ruamel.yaml.comments import CommentedMap

THRESHOLD_OPERATORS = ("gt", "gte")
# The signal's values are rounded to this many places (gateway.policy.signals), and so are thresholds.
PLACES = 4


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Threshold:
    """The comparison calibrated: where it is and what it sends where."""

    signal: str
    rule: str
    route: str
    operator: str
    value: float
    node: CommentedMap


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: Threshold
    new_value: float
    # Share of replayed recorded requests on the threshold's route, before and after (None: no records).
    share_before: float | None
    share_after: float | None
    records: int
    replayed: int
    # For a quality target: the labelled sample's size and its expected quality share of the frontier's.
    labelled: int | None = None
    quality_after: float | None = None


class PolicyDocument:
    """The policy file as a round-trip YAML tree (comments kept), compiled on demand."""

    def __init__(self, path: Path) -> None:
        from ruamel.yaml import YAML
        from ruamel.yaml.comments import CommentedMap

        self.path = path
        self._yaml = YAML()
        self._yaml.preserve_quotes = True
        self._yaml.width = 4096
        self.tree: Any = self._yaml.load(path.read_text(encoding="utf-8"))
        if not isinstance(self.tree, CommentedMap):
            raise CalibrationError(f"{path}: not a policy (a mapping at the top)")

    def text(self) -> str:
        buffer = io.StringIO()
        self._yaml.dump(self.tree, buffer)
        return buffer.getvalue()

    def compile(
        self, deployments: Sequence[str], tools: SignalTools, *, name: str, run_golden: bool
    ) -> CompiledPolicy:
        return compile_policy_text(
            self.text(), str(self.path), deployments, tools, name=name, run_golden=run_golden
        )

    def threshold(self, signal: str | None) -> Threshold:
        """The policy's one `gt`/`gte` comparison of a learned-score signal (of `signal`, when named)."""
        signals = self.tree.get("signals") or {}
        learned = [name for name, spec in signals.items() if (spec or {}).get("kind") == "learned_score"]
        if signal is None:
            if len(learned) != 1:
                found = ", ".join(learned) or "none"
                raise CalibrationError(
                    f"{self.path}: name the signal to calibrate with --signal"
                    f" (its learned_score signals: {found})"
                )
            signal = learned[0]
        elif signal not in learned:
            raise CalibrationError(f"{self.path}: {signal!r} is not a learned_score signal of this policy")
        found_at = [
            Threshold(
                signal, str(rule.get("name")), str(rule.get("route")), operator, float(node[operator]), node
            )
            for rule in self.tree.get("rules") or []
            for node in _comparisons(rule.get("when"))
            if node.get("signal") == signal
            for operator in THRESHOLD_OPERATORS
            if operator in node
        ]
        if len(found_at) != 1:
            raise CalibrationError(
                f"{self.path}: expected one `gt` or `gte` comparison of {signal!r} in the rules, found"
                f" {len(found_at)}: calibrate needs the one threshold that sends high scores to the frontier"
            )
        return found_at[0]


def _comparisons(condition: Any) -> Iterator[CommentedMap]:
    if isinstance(condition, dict):
        if "signal" in condition:
            yield condition  # type: ignore[misc]
        for key in ("all", "any"):
            for part in condition.get(key) or []:
                yield from _comparisons(part)
        yield from _comparisons(condition.get("not"))


def share_on_records(records: Sequence[DecisionRecord], policy: CompiledPolicy, route: str) -> float | None:
    report = replay(records, policy)
    return report.routes_after[route] / report.replayed if report.replayed else None


def for_frontier_share(
    threshold: Threshold,
    records: Sequence[DecisionRecord],
    max_share: float,
    compile_at: Callable[[float], CompiledPolicy],
) -> float:
    """The lowest threshold whose replayed share on the threshold's route is at most `max_share`:
    a binary search over the recorded values (the share only falls as the threshold rises)."""
    recorded = [record.signals.get(threshold.signal) for record in records]
    values = sorted({round(float(value), PLACES) for value in recorded if isinstance(value, int | float)})
    if not values:
        raise CalibrationError(
            f"no recorded request of this policy has a value of {threshold.signal!r}"
            " (is the policy live, and the ledger the one it writes to?)"
        )
    # With `gt`, a threshold at a recorded value keeps that value off the route; with `gte`, a threshold
    # just above it does. The last candidate sends nothing there.
    step = 10**-PLACES
    candidates = [values[0] - step] + [v if threshold.operator == "gt" else v + step for v in values]
    candidates = [round(candidate, PLACES) for candidate in candidates]
    low, high = 0, len(candidates) - 1
    if (share_on_records(records, compile_at(candidates[high]), threshold.route) or 0.0) > max_share:
        raise CalibrationError(
            f"even a threshold above every recorded score sends more than {max_share:.0%} of the requests to"
            f" {threshold.route!r}: other rules send them there"
        )
    while low < high:
        middle = (low + high) // 2
        share = share_on_records(records, compile_at(candidates[middle]), threshold.route)
        if share is not None and share <= max_share:
            high = middle
        else:
            low = middle + 1
    return float(candidates[low])


def for_quality(
    scores: Sequence[float], weak: Sequence[float], strong: Sequence[float], quality: float, operator: str
) -> tuple[float, float]:
    """The threshold sending the fewest high-score prompts to the frontier while the sample keeps
    `quality` x the frontier's mean score, and the quality reached (as a share of the frontier's).
    Prompts with equal scores go the same way, as they would at run time."""
    rounded = np.round(np.asarray(scores, dtype=np.float64), PLACES)
    weak_, strong_ = np.asarray(weak, dtype=np.float64), np.asarray(strong, dtype=np.float64)
    order = np.argsort(-rounded, kind="stable")
    ranked, gain = rounded[order], (strong_ - weak_)[order]
    count = len(ranked)
    # Sending the first k ranked prompts is a threshold only where the score changes between k-1 and k.
    cuts = np.concatenate([[0], np.flatnonzero(ranked[:-1] != ranked[1:]) + 1, [count]])
    quality_at = (weak_.sum() + np.concatenate([[0.0], np.cumsum(gain)])[cuts]) / count
    reaching = np.flatnonzero(quality_at >= quality * strong_.mean() - 1e-12)
    if not reaching.size:  # only when the frontier is worse than the local model on this sample
        raise CalibrationError(f"no threshold reaches {quality:.0%} of the frontier's quality on this sample")
    sent = int(cuts[reaching[0]])
    step = 10**-PLACES
    if operator == "gt":
        value = float(ranked[sent]) if sent < count else float(ranked[-1]) - step
    else:
        value = float(ranked[sent - 1]) if sent > 0 else float(ranked[0]) + step
    return round(value, PLACES), float(quality_at[reaching[0]] / strong_.mean())


def calibrated_header(calibration: Calibration, target: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    threshold = calibration.threshold
    return (
        f"Calibrated by `gateway router calibrate` on {when} for {target}:"
        f" {threshold.signal} {threshold.operator} {threshold.value:g} -> {calibration.new_value:g}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", type=Path, help="the policy whose learned-router threshold to set")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--max-frontier-share", type=float, help="at most this share of recorded requests to the frontier"
    )
    target.add_argument(
        "--quality", type=float, help="keep this share of the frontier's quality on --labelled prompts"
    )
    parser.add_argument("--labelled", type=Path, nargs="+", help="labelled outcomes of the team's prompts")
    parser.add_argument("--signal", help="the learned_score signal (needed when the policy has several)")
    parser.add_argument("--since", default="30d", help="recorded traffic this far back: 24h, 7d, or 'all'")
    parser.add_argument("--database-url", help="the ledger (default: $GATEWAY_DATABASE_URL or SQLite)")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the candidate (default: .gateway/calibrated/<policy>.yaml)",
    )
    parser.add_argument("--config", type=Path, default=Path("policies/deployments.yaml"))


def run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.ledger.reading import reading_ledger, since_time
    from gateway.policy.records import decision_of
    from gateway.policy.signals import load_signal_tools

    document = PolicyDocument(args.policy)
    threshold = document.threshold(args.signal)
    deployments = sorted(load_config(args.config).deployments)
    tools = load_signal_tools()
    name = args.policy.stem

    def compile_at(value: float, *, run_golden: bool = False) -> CompiledPolicy:
        threshold.node[threshold.operator] = value
        return document.compile(deployments, tools, name=name, run_golden=run_golden)

    original = compile_at(threshold.value)
    with reading_ledger(args.database_url) as ledger:
        records = [decision_of(row) for row in ledger.store.decisions(name, since_time(args.since))]
    labelled, quality_after = None, None
    if args.max_frontier_share is not None:
        if not 0.0 <= args.max_frontier_share <= 1.0:
            raise CalibrationError("--max-frontier-share is a share between 0 and 1, e.g. 0.3")
        target = f"at most {args.max_frontier_share:.0%} of requests to {threshold.route!r}"
        new_value = for_frontier_share(threshold, records, args.max_frontier_share, compile_at)
    else:
        if not args.labelled:
            raise CalibrationError("--quality needs --labelled DATA: the team's prompts with outcomes")
        if not 0.0 < args.quality <= 1.0:
            raise CalibrationError("--quality is a share of the frontier's quality, e.g. 0.95")
        target = f"{args.quality:.0%} of the frontier's quality on {', '.join(map(str, args.labelled))}"
        scores, weak, strong = _score_labelled(args.labelled, document.tree["signals"][threshold.signal])
        labelled = len(scores)
        new_value, quality_after = for_quality(scores, weak, strong, args.quality, threshold.operator)
    share_before = share_on_records(records, original, threshold.route) if records else None
    final = compile_at(new_value, run_golden=True)  # the golden cases must still pass
    after = replay(records, final)
    share_after = after.routes_after[threshold.route] / after.replayed if after.replayed else None
    calibration = Calibration(
        threshold, new_value, share_before, share_after, len(records), after.replayed, labelled, quality_after
    )
    output = args.output or Path(".gateway/calibrated") / f"{name}.yaml"
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    partial.write_text(f"# {calibrated_header(calibration, target)}\n{document.text()}", encoding="utf-8")
    partial.replace(output)
    print(_summary(calibration, output, args.policy))
    return 0


def _score_labelled(paths: Sequence[Path], signal: Any) -> tuple[list[float], list[float], list[float]]:
    """The router's score (as the policy's signal computes it) of every labelled prompt."""
    from gateway.embedding.embedder import Embedder, default_model_path
    from gateway.router.model import DEFAULT_PATH, RouterModel
    from gateway.router.outcomes import load_outcomes
    from gateway.router.training import SIGNAL_TOKENS

    model = RouterModel(Path(signal["model"]) if signal.get("model") else DEFAULT_PATH)
    embedder = Embedder(default_model_path(), max_tokens=SIGNAL_TOKENS)
    outcomes = [outcome for path in paths for outcome in load_outcomes(path).outcomes]
    vectors = embedder.embed([o.prompt for o in outcomes], progress="scoring the labelled prompts")
    return (
        [model.score(vector, o.prompt) for vector, o in zip(vectors, outcomes, strict=True)],
        [o.weak for o in outcomes],
        [o.strong for o in outcomes],
    )


def _summary(calibration: Calibration, output: Path, policy: Path) -> str:
    threshold = calibration.threshold
    lines = [
        f"{threshold.rule}: {threshold.signal} {threshold.operator}"
        f" {threshold.value:g} -> {calibration.new_value:g} (sends to {threshold.route!r})",
    ]
    if calibration.labelled is not None and calibration.quality_after is not None:
        lines.append(
            f"labelled sample: {calibration.labelled:,} prompts keep"
            f" {calibration.quality_after:.1%} of the frontier's quality"
        )
    if calibration.share_before is not None and calibration.share_after is not None:
        lines.append(
            f"recorded traffic: {calibration.replayed:,} of {calibration.records:,} requests replayed;"
            f" {threshold.route!r} share {calibration.share_before:.1%} -> {calibration.share_after:.1%}"
        )
    else:
        lines.append("recorded traffic: none for this policy in the ledger yet")
    lines += [
        f"wrote {output}; review it with",
        f"  gateway policy replay {output} --ledger --since all",
        f"  gateway policy diff {policy} {output}",
    ]
    return "\n".join(lines)


def run_calibrate_command(args: argparse.Namespace) -> int:
    """`gateway router calibrate`: a bad policy, target, ledger or sample is reported in a line or two."""
    from gateway.config import ConfigError
    from gateway.embedding.embedder import EmbedderMissing
    from gateway.ledger.store import LedgerUnavailable
    from gateway.router.model import RouterMissing
    from gateway.router.outcomes import OutcomesError

    try:
        return run(args)
    except PolicyError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return 2
    except (
        CalibrationError, OutcomesError, EmbedderMissing, RouterMissing, ConfigError, LedgerUnavailable,
        ValueError, OSError,
    ) as error:  # fmt: skip
        print(f"gateway router calibrate: {error}", file=sys.stderr)
        return 2
