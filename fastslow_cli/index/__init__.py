"""The search index: HNSW over Fast vectors, and the index folder."""
