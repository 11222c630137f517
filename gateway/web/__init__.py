"""Admin HTTP: health, readiness, metrics and debugging endpoints."""
