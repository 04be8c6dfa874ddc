"""The router artifact read back scores exactly as the fitted model did, text counts and all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.router.features import FEATURES, design, feature_matrix, standardiser
from gateway.router.model import RouterMissing, RouterModel, save_router

PROMPTS = [
    "What is 15% of 240?",
    "Name a colour.",
    "A train leaves at 3 pm at 60 km/h;\nanother at 4 pm at 80 km/h. When does the second catch up?",
    "Write a haiku about the sea.",
    "Tom has 3 apples and buys 12 more, then gives 5 away. How many are left?",
    "Hello!",
]


def test_a_saved_router_scores_as_the_fitted_model_predicts(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(PROMPTS), 8)).astype(np.float32)
    counts = feature_matrix(PROMPTS)
    assert counts.shape == (len(PROMPTS), len(FEATURES))
    standardised = standardiser(counts)
    x = design(vectors, counts, *standardised)
    fitted = LogisticRegression(C=10.0).fit(x, [True, False, True, False, True, False])
    path = tmp_path / "router.npz"
    save_router(path, fitted.coef_[0], float(fitted.intercept_[0]), standardised, "sample", len(PROMPTS))

    model = RouterModel(path)
    expected = fitted.predict_proba(x)[:, 1]
    scores = [model.score(vector, prompt) for vector, prompt in zip(vectors, PROMPTS, strict=True)]
    assert scores == pytest.approx(expected, abs=1e-6)
    # The text counts matter: the same embedding with another text scores differently.
    assert model.score(vectors[0], "Hello!") != pytest.approx(scores[0], abs=1e-6)


def test_an_old_or_broken_artifact_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.npz"
    np.savez(old, format=np.array("gateway-router/1"), weights=np.zeros(3), bias=np.array(0.0))
    with pytest.raises(RouterMissing, match="retrain it"):
        RouterModel(old)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(RouterMissing, match="not a router model"):
        RouterModel(broken)
    with pytest.raises(RouterMissing, match="not found"):
        RouterModel(tmp_path / "missing.npz")


def test_a_huge_prompt_is_counted_by_its_head_and_its_full_length() -> None:
    from gateway.router.features import COUNTED_CHARS, text_features

    line = "The 12 cats and 3.5 dogs cost 40%.\n"
    huge = line * (3 * COUNTED_CHARS // len(line))
    head = huge[:COUNTED_CHARS]
    assert text_features(huge)[1:] == text_features(head)[1:]
    assert text_features(huge)[0] > text_features(head)[0]
