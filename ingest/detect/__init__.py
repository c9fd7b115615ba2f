"""ingest/detect."""
