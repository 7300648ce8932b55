"""Prefect tasks: thin, retryable wrappers over `udl`, passing paths and small records only."""
