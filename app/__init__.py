"""The experiment service: REST API, SQL store, settings and auth."""
