"""The semantic cache's second opinion: is a cached question really the same question as this one?

Cosine similarity of sentence embeddings confuses questions that share a topic but differ in the word
that matters ("in 2 weeks" / "in 2 months"): on held-out Quora pairs, no cosine threshold reaches a
precision of 0.95 at any useful recall. The verifier is a cross-encoder: MiniLM-L6 reading both
questions together, fine-tuned on labelled pairs (`gateway cache train-verifier`), exported to ONNX
and quantised to int8, so it runs on onnxruntime with no torch. It reads the pair token by token, so a
differing number or negation changes its answer. Its output is the probability that the two questions
ask the same thing; a rule's `similarity` is the least probability it accepts (`gateway cache
calibrate` picks one for a target precision). It runs only on candidates the index already found
close (cosine at least `CANDIDATE_FLOOR`), so most misses never pay for it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import orjson

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger("gateway.cache")

# Bumped when the graph's inputs or outputs change, so an old artifact is refused rather than misread.
FORMAT = "gateway-cache-verifier/2"
METADATA_KEY = "gateway_verifier_format"
DEFAULT_PATH = Path(__file__).with_name("models") / "verifier-int8.onnx"
# Both questions together, in word pieces; Quora questions average ~15.
MAX_TOKENS = 80


def card_path_for(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def tokenizer_path_for(model_path: Path) -> Path:
    return model_path.with_suffix(".tokenizer.json")


@dataclass(frozen=True, slots=True)
class VerifierCard:
    """What the artifact says about itself: what it was trained on and how it did on held-out pairs."""

    trained_on: str
    fitted_pairs: int
    # Chosen on the validation pairs (part of the training side) for the target precision.
    recommended_threshold: float
    target_precision: float
    # The held-out side of the fixed split, scored once with the int8 model at that threshold.
    held_out_pairs: int
    held_out_precision: float
    held_out_recall: float

    def write(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))

    @classmethod
    def read(cls, path: Path) -> VerifierCard:
        return cls(**orjson.loads(path.read_bytes()))


class VerifierMissing(RuntimeError):
    pass


class PairScorer(Protocol):
    def score(self, query: str, candidate: str) -> float:
        """The probability that `query` asks what `candidate` asked."""
        ...


def check_files(path: Path) -> None:
    """The model, its tokenizer and its card are all there, or VerifierMissing says which is not."""
    for needed in (path, tokenizer_path_for(path), card_path_for(path)):
        if not needed.is_file():
            raise VerifierMissing(
                f"cache verifier file {needed} not found: run `gateway cache train-verifier`"
            )


def load_pair_tokenizer(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    return tokenizer


class Verifier:
    """The model itself: onnxruntime, tokenizers and numpy, imported when one is loaded (`LazyVerifier`
    loads it on the first semantic lookup, so a gateway that caches exactly never imports them)."""

    def __init__(self, path: Path = DEFAULT_PATH, *, threads: int = 1) -> None:
        from gateway.embedding.embedder import cpu_session

        check_files(path)
        self._session = cpu_session(path, threads)
        found = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if found != FORMAT:
            raise VerifierMissing(f"{path} is {found or 'not a verifier'}, not {FORMAT}: retrain it")
        self._inputs = frozenset(i.name for i in self._session.get_inputs())
        self._tokenizer = load_pair_tokenizer(tokenizer_path_for(path))
        self.card = VerifierCard.read(card_path_for(path))
        self.path = path

    def score(self, query: str, candidate: str) -> float:
        """The probability that `query` asks what `candidate` asked."""
        import numpy as np

        encoding = self._tokenizer.encode(query, candidate)
        ids = np.array([encoding.ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.array([encoding.type_ids], dtype=np.int64)
        (logits,) = self._session.run(None, feed)
        return float(1.0 / (1.0 + np.exp(-float(np.asarray(logits).reshape(-1)[0]))))


class LazyVerifier:
    """Loads the verifier on the first semantic lookup, so a gateway whose policy caches exactly (or
    not at all) never pays for the model; its files are checked at once, so a missing one is reported
    at start-up."""

    def __init__(self, path: Path = DEFAULT_PATH) -> None:
        check_files(path)
        self.path = path
        self._verifier: Verifier | None = None
        self._broken = False

    def score(self, query: str, candidate: str) -> float:
        """As `Verifier.score`; 0 (never a hit) if the model cannot be loaded, which is logged once:
        a broken verifier turns the semantic layer off, it does not fail requests."""
        if self._verifier is None:
            if self._broken:
                return 0.0
            try:
                self._verifier = Verifier(self.path)
            except Exception as error:  # onnxruntime raises its own types for a bad file
                self._broken = True
                logger.error("semantic cache off: the verifier %s does not load: %s", self.path, error)
                return 0.0
        return self._verifier.score(query, candidate)
