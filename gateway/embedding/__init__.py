"""Local, offline sentence embeddings (all-MiniLM-L6-v2, int8 ONNX) for semantic routing and caching.

Import `gateway.embedding.embedder` for the runtime and `gateway.embedding.batcher` to run it (or any
local model) off the event loop; `gateway.embedding.export` needs the `embed-export` extra (torch) and
only runs at build time.
"""
