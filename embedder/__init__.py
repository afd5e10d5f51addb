"""Dowse embedder core: model registry, ONNX export, encoding, batching, reranking."""
