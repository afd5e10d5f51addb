"""Prometheus metrics of the embedder core, defined once per process (module level)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE = Histogram(
    "dowse_embedder_batch_size",
    "Inputs per model batch",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_TOKENS = Histogram(
    "dowse_embedder_batch_tokens",
    "Real (unpadded) tokens per model batch",
    ["model"],
    buckets=(16, 64, 256, 1024, 4096, 16384, 65536),
)
QUEUE_DEPTH = Gauge("dowse_embedder_queue_depth", "Inputs waiting for a batch", ["model"])
REJECTED = Counter("dowse_embedder_rejected_total", "Requests refused because the queue was full", ["model"])
TOKENS = Counter("dowse_embedder_tokens_total", "Tokens embedded or scored", ["model"])
INPUTS = Counter("dowse_embedder_inputs_total", "Texts embedded or pairs scored", ["model"])
QUEUE_DEPTH_BY_PRIORITY = Gauge(
    "dowse_embedder_queue_depth_by_priority", "Inputs waiting for a batch, by class", ["model", "priority"]
)
BATCHES = Counter("dowse_embedder_batches_total", "Model batches run, by class", ["model", "priority"])
