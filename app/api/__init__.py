"""The REST API: routers under /api (see app/main.py and docs/api.md)."""
