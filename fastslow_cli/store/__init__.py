"""The Parquet feature store."""
