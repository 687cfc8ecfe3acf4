"""Logs (structlog, JSON, secrets redacted) and Prometheus metrics."""
