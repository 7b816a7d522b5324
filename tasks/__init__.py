"""Prefect tasks: thin wrappers (retries, caching, logging) around the pure modules."""
