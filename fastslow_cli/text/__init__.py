"""Text tokenisation."""
