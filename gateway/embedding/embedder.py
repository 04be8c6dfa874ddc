"""Runtime sentence embedder: an int8 ONNX all-MiniLM-L6-v2 on onnxruntime.

Only onnxruntime, tokenizers and numpy are imported here, so the gateway never pulls in torch. The
graph (built by `gateway.embedding.export`) already mean-pools over the attention mask and
L2-normalises, so a call is one tokenisation and one session run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from gateway.progress import Progress
from gateway.settings import Settings

DIMENSION = 384
# BERT's position table has 512 entries; sentence-transformers trained and uses 256.
MAX_POSITIONS = 512
MAKE_HINT = "run `make embedder` (or `python -m gateway.embedding.export --output {path}`) to build it"


def default_model_path() -> Path:
    """Where `make embedder` writes the model (GATEWAY_EMBEDDER_PATH's default), relative to the
    project root the gateway runs from."""
    path: Path = Settings.model_fields["embedder_path"].default
    return path


def tokenizer_path_for(model_path: Path) -> Path:
    """The tokenizer travels beside the model: `x.onnx` -> `x.tokenizer.json`."""
    return model_path.with_suffix(".tokenizer.json")


def load_tokenizer(path: Path, max_tokens: int) -> Tokenizer:
    """Load the BERT tokenizer, truncating at max_tokens and never padding.

    The shipped tokenizer.json pads and truncates to a fixed 128, which would make every query cost
    128 tokens; the exporter uses this too, so its check sees exactly the runtime's input.
    """
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def cpu_session(path: Path, threads: int) -> ort.InferenceSession:
    """An onnxruntime session on the CPU, sequential, fully optimised, with `threads` intra-op threads
    (the gateway's models run one small input at a time: more threads only add synchronisation)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class EmbedderMissing(RuntimeError):
    """The model or its tokenizer has not been built; the message says how to build it."""


class Embedder:
    """Embeds text into unit-length 384-d float32 vectors; cosine similarity is a dot product."""

    dimension: int = DIMENSION

    def __init__(self, model_path: Path, *, max_tokens: int = 256, threads: int = 1) -> None:
        if not 2 <= max_tokens <= MAX_POSITIONS:
            raise ValueError(f"max_tokens must be between 2 and {MAX_POSITIONS}, got {max_tokens}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        model_path = Path(model_path)
        tokenizer_path = tokenizer_path_for(model_path)
        for path in (model_path, tokenizer_path):
            if not path.is_file():
                raise EmbedderMissing(
                    f"embedding model file {path} not found: " + MAKE_HINT.format(path=model_path)
                )
        self.model_path = model_path
        self.max_tokens = max_tokens

        self._tokenizer = load_tokenizer(tokenizer_path, max_tokens)

        self._session = cpu_session(model_path, threads)
        self._input_names = frozenset(i.name for i in self._session.get_inputs())
        out = self._session.get_outputs()[0]
        if out.shape[-1] != DIMENSION:
            raise EmbedderMissing(
                f"{model_path} outputs {out.shape}, not {DIMENSION}-d embeddings: "
                + MAKE_HINT.format(path=model_path)
            )
        self._output_name = out.name
        # Build provenance written by the exporter (format tag), for validity checks.
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)

    def embed(self, texts: Sequence[str], progress: str | None = None) -> npt.NDArray[np.float32]:
        """Embed texts; returns shape (len(texts), 384), float32, rows unit-length. With `progress`, a
        long run reports on stderr under that label.

        Each text is its own session run, unpadded, on purpose. Dynamic int8 quantisation scales the
        activations per tensor, so in a padded batch a text's vector would depend on its neighbours and
        the padding (cosine to its solo vector down to ~0.97); one run per text keeps a text's vector
        identical however it is submitted, which the semantic cache relies on. On one core it is also
        faster: padding to the longest text and quadratic attention cost more than batching saves.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts; use embed_one() for a single string")
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        shown = Progress(progress, len(texts)) if progress is not None else None
        for row, text in enumerate(texts):
            out[row] = self.embed_one(text)
            if shown is not None:
                shown.update(row + 1)
        return out

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text costs after truncation (including [CLS] and [SEP]), without running the model."""
        return [len(self._tokenizer.encode(text).ids) for text in texts]

    def embed_one(self, text: str) -> npt.NDArray[np.float32]:
        """Embed one text; returns shape (384,), float32, unit-length."""
        encoding = self._tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        (vectors,) = self._session.run([self._output_name], feed)
        return np.asarray(vectors[0], dtype=np.float32)
