"""qctrace."""
