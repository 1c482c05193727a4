"""Request logs and Prometheus metrics."""
