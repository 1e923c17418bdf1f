"""The web app: the REST API under /api (OpenAPI docs at /docs) and the dashboard at /ui.

distill api                                   # team mode (or `distill up` for everything)
uvicorn app.main:create_app --factory         # the same, by hand
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import get_current_user
from app.api.errors import BodyTooLarge, install_error_handlers
from app.api.params import check_request_values
from app.api.routes import auth, experiments, health, metrics, queue, runs, spec, sweeps
from app.api.schemas import RETRY_AFTER, ErrorMessage, Problems
from app.auth import auth_enabled
from app.boot import FAVICON_PNG
from app.broker import get_queue
from app.db_retry import is_db_unavailable
from app.models import NO_NUL_PATTERN, SweepCreate
from app.services.errors import RETRY_AFTER_SECONDS
from core_distill.spec import MAX_PATH_COMPONENT
from core_distill.trackers.names import TRACKERS

log = logging.getLogger(__name__)

# Swagger UI and ReDoc from the fastapi-offline package's copies: /docs works without internet.
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/docs-assets"

MAX_BODY_BYTES = 1024 * 1024  # specs are a few kB; anything near this is a mistake or an attack
DB_UNAVAILABLE_DETAIL = "the database is unavailable; nothing was changed, retry in a few seconds"


class BodyLimitMiddleware:
    """413 for /api requests whose body exceeds MAX_BODY_BYTES, declared (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_413(send, self.max_bytes)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_413(send, self.max_bytes)


async def _send_413(send: Send, max_bytes: int) -> None:
    await _send_json(send, 413, {"detail": f"request body larger than {max_bytes} bytes"})


async def _send_json(send: Send, status: int, content: Any, headers: dict[str, str] | None = None) -> None:
    """A whole JSON response from a middleware, below the app's own exception handlers."""
    body = json.dumps(content, separators=(",", ":")).encode()
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class PathLimitMiddleware:
    """422 for a path with a component longer than a file name may be: the dashboard's static-file
    routes (/ui/assets/..., /ui/static/...) would pass it to the file system, which fails with a 500."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(len(part) > MAX_PATH_COMPONENT for part in scope["path"].split("/")):
            msg = f"a path component is longer than {MAX_PATH_COMPONENT} characters"
            await _send_json(send, 422, {"detail": [{"loc": ["path"], "msg": msg, "type": "path_too_long"}]})
            return
        await self.app(scope, receive, send)


class InternalErrorMiddleware:
    """A 500 that keeps the connection: an unexpected error is logged and answered here, instead of
    reaching Starlette's outermost handler, which re-raises it and makes the server drop the keep-alive
    connection (the client's next request on it was reset). A database that could not be reached is a
    503 with Retry-After instead, wherever it surfaced (a route, a dependency, auth)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise  # half a response is out: only closing the connection can end it
            if is_db_unavailable(exc):
                log.warning(
                    "%s %s: database unavailable (%s)", scope.get("method"), scope.get("path"), type(exc).__name__
                )
                retry = {"retry-after": str(RETRY_AFTER_SECONDS)}
                await _send_json(send, 503, {"detail": DB_UNAVAILABLE_DETAIL}, retry)
                return
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            await _send_json(send, 500, {"detail": "internal server error (logged on the server)"})


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorMessage, "description": "Auth is on and no valid token was sent."},
    404: {"model": ErrorMessage, "description": "No such experiment or run."},
    422: {"model": Problems, "description": "A bad value; `detail[].loc` names the parameter or field."},
    503: {"model": ErrorMessage, "headers": RETRY_AFTER,
          "description": "The database (or the queue) is unavailable; retry after `Retry-After` seconds."},
}  # fmt: skip
TOO_LARGE = {"description": f"The body is larger than {MAX_BODY_BYTES} bytes.", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ErrorMessage"}}}}  # fmt: skip
GUARDED_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorMessage, "description": "The experiment belongs to someone else."},
    409: {"model": ErrorMessage, "description": "The run's state does not allow it (cancel a finished run)."},
    **ERROR_RESPONSES,
}


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api", dependencies=[Depends(check_request_values)])
    router.include_router(health.router)  # the one route without auth
    router.include_router(auth.router, responses=ERROR_RESPONSES)  # login checks the token itself; /me needs one
    guarded = [Depends(get_current_user)]
    for module in (experiments, sweeps, runs, metrics, queue, spec):
        router.include_router(module.router, dependencies=guarded, responses=GUARDED_RESPONSES)
    return router


def add_docs_pages(app: FastAPI) -> None:
    """/docs (Swagger UI), /redoc and /favicon.ico, every asset served by this app (FastAPI's own pages
    load Swagger UI and ReDoc from a CDN and stay blank offline)."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    assert app.openapi_url is not None

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} API", oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url="/favicon.ico",
        )  # fmt: skip

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} API", with_google_fonts=False,
                              redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js", redoc_favicon_url="/favicon.ico")  # fmt: skip
        # ReDoc's sidebar fetches its maker's logo from cdn.redoc.ly (hidden when that fails): images from
        # this server only, so the page never reaches for another host
        page.headers["content-security-policy"] = "img-src 'self' data:"
        return page

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(FAVICON_PNG, media_type="image/png", headers={"cache-control": "max-age=86400"})


def create_app(ui: bool = True, progress: Callable[[str], None] | None = None) -> FastAPI:
    """The app; `ui=False` leaves the Gradio dashboard out (API tests, benchmarks). `progress(step)` is
    called when the API ("api") and the dashboard ("dashboard") are built (`distill api` shows it)."""
    app = FastAPI(
        title="distill",
        summary="Distillation experiments: submit, queue, follow live, compare.",
        version="0.1.0",
        docs_url=None,  # add_docs_pages: the same pages with local assets
        redoc_url=None,
        generate_unique_id_function=lambda route: f"{route.tags[0] if route.tags else 'api'}-{route.name}",
    )
    install_error_handlers(app)
    get_queue()  # DISTILL_QUEUE (the worker's Celery queue by default), wired now: a bad setting fails at start
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(InternalErrorMiddleware)  # outside the body limit: a 413 is not an error
    app.add_middleware(PathLimitMiddleware)
    app.include_router(api_router())
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    add_docs_pages(app)

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/ui/" if ui else "/docs")

    if progress:
        progress("api")
    if ui:
        try:
            from ui.app import mount_dashboard
        except ImportError as exc:  # the API stands without the dashboard
            log.warning("dashboard not mounted: %s", exc)
        else:
            app = mount_dashboard(app)
        if progress:
            progress("dashboard")
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus SweepCreate (its body is read by hand: 422s that name the setting and field).

    With auth off, every secured operation also lists the empty requirement `{}`: the token is optional
    there, and the document says so (fuzzers check that a declared requirement is enforced)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body = SweepCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(body.pop("$defs", {}))
    components[SweepCreate.__name__] = body
    _declare_report_to_forms(components["DistillSpec"]["properties"]["report_to"])
    optional_auth = not auth_enabled()
    for operations in schema["paths"].values():
        for operation in operations.values():
            if optional_auth and operation.get("security"):
                operation["security"].append({})
            if "requestBody" in operation:  # BodyLimitMiddleware answers any /api body past the limit
                operation["responses"].setdefault("413", TOO_LARGE)
            for parameter in operation.get("parameters", []):
                _declare_no_nul(parameter["schema"])  # check_request_values refuses NUL in every value
            for code, response in operation["responses"].items():
                content = response.get("content", {})
                if code[0] in "45" and content and "application/json" not in content:
                    # errors are JSON whatever the route answers on success (YAML, CSV, an event stream)
                    response["content"] = {"application/json": next(iter(content.values()))}
    app.openapi_schema = schema
    return schema


def _declare_report_to_forms(prop: dict[str, Any]) -> None:
    """`report_to` takes TRL's forms (core_distill.trackers.names.normalize_report_to): a list of names, one
    comma-separated string, null; any case, blanks and "none" skipped. The document says so (what comes back
    is always the list); the engine's own schema keeps the list the dashboard's form is built from."""
    blank = "[ \\t\\n\\r\\f\\v]*"
    names = "|".join("".join(f"[{c.lower()}{c.upper()}]" for c in name) for name in (*TRACKERS, "none"))
    item = f"{blank}(?:{names})?{blank}"
    forms = [
        {"type": "array", "items": {"type": "string", "pattern": f"^{item}$"}},
        {"type": "string", "pattern": f"^{item}(?:,{item})*$"},
        {"type": "null"},
    ]
    for key in ("type", "items"):
        prop.pop(key, None)
    prop["anyOf"] = forms


def _declare_no_nul(schema: dict[str, Any]) -> None:
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string" and "pattern" not in option:
            option["pattern"] = NO_NUL_PATTERN


def create_api() -> FastAPI:
    """The API alone (`uvicorn app.main:create_api --factory`): benchmarks, or a deployment without the dashboard."""
    return create_app(ui=False)
