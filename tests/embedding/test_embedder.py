"""The local embedder against the real int8 model that `make embedder` builds before pytest.

A missing model fails these tests (with the make hint) rather than skipping them: the semantic signals
depend on it, so a silently skipped suite would hide a broken build.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.embedding.embedder import Embedder, EmbedderMissing, default_model_path, tokenizer_path_for

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / default_model_path()
PARAPHRASE = ("How do I reset my password?", "I forgot my password, how can I change it?")
UNRELATED = (
    ("How do I reset my password?", "What is the capital of France?"),
    ("I forgot my password, how can I change it?", "Write a short poem about the sea."),
    ("How do I reset my password?", "Give me a recipe for banana bread."),
)


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    try:
        yield Embedder(MODEL)
    except EmbedderMissing as exc:
        pytest.fail(str(exc))


def test_default_model_path_is_relative_to_the_project_root() -> None:
    assert default_model_path() == Path(".gateway/models/all-minilm-l6-v2-int8.onnx")
    assert tokenizer_path_for(default_model_path()).name == "all-minilm-l6-v2-int8.tokenizer.json"


def test_a_missing_model_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(EmbedderMissing, match="make embedder"):
        Embedder(tmp_path / "absent.onnx")


def test_shape_dtype_and_unit_length(embedder: Embedder) -> None:
    assert embedder.dimension == 384
    vectors = embedder.embed(["hello world", "A much longer sentence about routing requests.", "ok"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    one = embedder.embed_one("hello world")
    assert one.shape == (384,) and one.dtype == np.float32
    assert embedder.embed([]).shape == (0, 384)


def test_paraphrases_are_closer_than_unrelated_texts(embedder: Embedder) -> None:
    a, b = (embedder.embed_one(t) for t in PARAPHRASE)
    paraphrase = float(a @ b)
    unrelated = [float(embedder.embed_one(x) @ embedder.embed_one(y)) for x, y in UNRELATED]
    assert paraphrase > 0.7, paraphrase
    assert paraphrase > max(unrelated) + 0.4, (paraphrase, unrelated)


def test_batch_equals_one_by_one(embedder: Embedder) -> None:
    texts = ["short", "", "a somewhat longer text with many more tokens than the others in the batch", "ok"]
    batch = embedder.embed(texts)
    single = np.stack([embedder.embed_one(t) for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-4)
    # A text's vector does not depend on its neighbours (the semantic cache relies on this).
    np.testing.assert_allclose(embedder.embed(texts[2:3])[0], batch[2], atol=1e-4)


def test_empty_string_embeds(embedder: Embedder) -> None:
    vector = embedder.embed_one("")
    assert vector.shape == (384,)
    assert np.isfinite(vector).all()
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4


def test_very_long_text_is_truncated(embedder: Embedder) -> None:
    long = "The gateway routes each request to the cheapest model that can answer it well. " * 500
    assert embedder.token_counts([long]) == [256]
    vector = embedder.embed_one(long)
    assert np.isfinite(vector).all()
    # Everything past max_tokens is ignored.
    np.testing.assert_allclose(embedder.embed_one(long + " Completely different ending."), vector, atol=1e-6)


def test_max_tokens_is_bounded_by_the_position_table() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        Embedder(MODEL, max_tokens=1024)


def test_a_string_is_not_a_batch(embedder: Embedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed("not a list")


def test_runtime_does_not_import_torch_or_transformers() -> None:
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from gateway.embedding.embedder import Embedder\n"
        f"Embedder(Path({str(MODEL)!r})).embed_one('hello')\n"
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'onnx'}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
