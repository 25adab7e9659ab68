"""The REST API (FastAPI): routes, auth, errors, rate limits. Thin: services do the work."""
