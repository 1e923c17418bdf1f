"""The application services: the one way the REST routes and the dashboard act on experiments and runs.

Each operation takes the acting user (None = anonymous, auth off), checks that they may act (the
experiment's owner or an admin), validates, writes through `app.crud` / `app.run_state` and queues
through `app.services.dispatch`. Errors are the typed ones of `app.services.errors`: routes map them to HTTP
codes (`app/api/errors.py`), the dashboard shows their message.
"""
