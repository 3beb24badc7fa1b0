"""Media files: discovery, decoding, and crash-isolated decoding in worker processes."""
