"""The gateway's own sentence embedder (all-MiniLM-L6-v2, int8 ONNX) as a deployment: `/v1/embeddings`
answered in process, off the event loop and batched with the semantic signals' and the cache's texts,
at $0. It serves embeddings only; texts, not token ids."""

from __future__ import annotations

import base64
import time

import numpy as np
import orjson

from gateway.config import Deployment
from gateway.embedding.batcher import EmbeddingBatcher
from gateway.errors import InvalidRequest
from gateway.tokens import TokenCounter
from gateway.wire import ChatRequest, ChatStream, Completion, Deadline, Usage, embedding_texts

MODEL = "all-minilm-l6-v2"


class LocalEmbedderProvider:
    def __init__(
        self, deployment: Deployment, batcher: EmbeddingBatcher | None, tokens: TokenCounter
    ) -> None:
        self.deployment = deployment
        self._batcher = batcher
        self._tokens = tokens

    @property
    def available(self) -> bool:
        return self._batcher is not None

    @property
    def unavailable_reason(self) -> str:
        return (
            "" if self._batcher is not None else "the local embedder's model is not installed (make embedder)"
        )

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        started = time.perf_counter()
        if request.api != "embeddings":
            raise InvalidRequest(
                f"Deployment '{self.deployment.name}' serves embeddings only (POST /v1/embeddings).",
                param="model",
            )
        texts = embedding_texts(request.body)
        if texts is None:
            raise InvalidRequest(
                f"Deployment '{self.deployment.name}' embeds texts, not token ids.", param="input"
            )
        dimensions = request.body.get("dimensions")
        as_base64 = request.body.get("encoding_format") == "base64"
        assert self._batcher is not None  # the catalog never calls an unavailable provider
        data = []
        for index, text in enumerate(texts):
            vector = await self._batcher.embed(text)
            if dimensions is not None:
                if dimensions > len(vector):
                    raise InvalidRequest(
                        f"Invalid value for 'dimensions': this model's vectors have {len(vector)}.",
                        param="dimensions",
                    )
                vector = vector[:dimensions] / (np.linalg.norm(vector[:dimensions]) or 1.0)
            embedding: object = (
                base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
                if as_base64
                else [float(value) for value in vector]
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = request.prompt_tokens
        if tokens is None:
            tokens = sum(self._tokens.count_text(text) for text in texts)
        body = {
            "object": "list",
            "data": data,
            "model": self.deployment.model or MODEL,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Completion(
            body=orjson.dumps(body),
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
            upstream_seconds=time.perf_counter() - started,
        )

    async def open_stream(self, request: ChatRequest, deadline: Deadline) -> ChatStream:
        raise InvalidRequest(f"Deployment '{self.deployment.name}' serves embeddings only.", param="model")

    async def aclose(self) -> None:
        return None
