"""Retrieval metrics and the eval runs."""
