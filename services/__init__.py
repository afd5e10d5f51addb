"""Dowse HTTP layer: FastAPI apps, schemas, settings, error mapping and the CLI."""
