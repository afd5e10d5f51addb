"""Dowse gateway core: hybrid search pipeline, fusion, semantic cache, service clients."""
