"""`gateway router train DATA...`: fit the learned router on labelled outcomes and write its artifact.

The same model `gateway eval routing` judges by cross-validation (logistic regression, C = 1, on the
prompt's MiniLM embedding and cheap text counts, target "the strong model does better"), fitted here on
every prompt given.
Prompts are embedded as the policy embeds a request's last user turn (128 tokens), so the signal at
run time reads exactly the vector the gateway already has.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gateway.router.features import design, feature_matrix, standardiser
from gateway.router.model import DEFAULT_PATH, save_router
from gateway.router.outcomes import load_outcomes

# The policy's embedder truncates at 128 tokens (gateway.policy.signals.LazyEmbedder).
SIGNAL_TOKENS = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", type=Path, nargs="+", help="labelled outcomes (JSON lines, CSV, or a directory)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--embedder", type=Path, default=None)


def run(args: argparse.Namespace) -> int:
    from sklearn.linear_model import LogisticRegression

    from gateway.embedding.embedder import Embedder, default_model_path

    embedder = Embedder(args.embedder or default_model_path(), max_tokens=SIGNAL_TOKENS)
    vectors, labels, names, prompts = [], [], [], []
    for path in args.data:
        data = load_outcomes(path)
        names.append(data.name)
        prompts += [o.prompt for o in data.outcomes]
        vectors.append(embedder.embed([o.prompt for o in data.outcomes], progress=f"embedding {data.name}"))
        labels.append(np.array([o.strong > o.weak for o in data.outcomes]))
    counts = feature_matrix(prompts)
    standardised = standardiser(counts)
    x, y = design(np.concatenate(vectors), counts, *standardised), np.concatenate(labels)
    model = LogisticRegression(C=1.0, max_iter=3000).fit(x, y)
    save_router(
        args.output, model.coef_[0], float(model.intercept_[0]), standardised, ", ".join(names), len(y)
    )
    share, sources = f"{y.mean():.1%}", ", ".join(names)
    print(f"wrote {args.output}: {len(y):,} prompts from {sources}, {share} needing the strong model")
    return 0
