"""Typed dependencies of the routes: a database session and the calling user."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from app.auth import COOKIE_NAME, auth_enabled, token_from_request, user_for_token
from app.db import get_session, request_session_limit

# scope="function": the session closes when the route has built its response, not when the response has
# been sent, so a live stream or a download holds no connection (and no open transaction) while it runs.
# max_concurrency: see request_session_limit (sized once, when this module is imported)
SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=request_session_limit())]


# The two ways a token arrives, as OpenAPI security schemes (/openapi.json `components.securitySchemes`,
# and `security` on every operation that needs a user). auto_error=False: they only document and parse;
# get_current_user decides, so with auth off nothing is asked for.
BEARER = HTTPBearer(
    scheme_name="bearer", bearerFormat="distill token", auto_error=False,
    description="`Authorization: Bearer <token>`; `distill token create NAME` prints one. Needed with DISTILL_AUTH=on.",
)  # fmt: skip
COOKIE = APIKeyCookie(
    name=COOKIE_NAME, scheme_name="cookie", auto_error=False,
    description="The browser's http-only cookie, set by POST /api/login.",
)  # fmt: skip


def get_current_user(
    request: Request,
    session: SessionDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
    _cookie: Annotated[str | None, Depends(COOKIE)] = None,
) -> str | None:
    """The token's name with auth on (401 without a valid token); None (anonymous) with auth off."""
    if not auth_enabled():
        return None
    user = user_for_token(session=session, token=token_from_request(request))
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API token is required: send 'Authorization: Bearer <token>' (create one with `distill token create NAME`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


CurrentUser = Annotated[str | None, Depends(get_current_user)]
