"""Dowse indexer core: collections, FAISS + BM25 indexes, SQLite document store, ingest jobs."""
