"""The website: a FastAPI JSON API (OpenAPI docs at /docs) and the static search site (no build step)."""
