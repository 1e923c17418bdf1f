"""The browser's way in with auth on: trade a token for an http-only cookie, and back out."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field

from app.api.deps import CurrentUser, SessionDep
from app.auth import COOKIE_NAME, auth_enabled, user_for_token

router = APIRouter(tags=["auth"])


class Login(BaseModel):
    token: str = Field(min_length=1, max_length=512)


class Me(BaseModel):
    user: str | None
    auth: bool


@router.post("/login", response_model=Me)
def login(body: Login, response: Response, session: SessionDep) -> Me:
    """Check a token and set it as the `distill_token` cookie (http-only, same-site strict)."""
    user = user_for_token(session=session, token=body.token)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    response.set_cookie(COOKIE_NAME, body.token, httponly=True, samesite="strict", max_age=30 * 24 * 3600)
    return Me(user=user, auth=auth_enabled())


@router.post("/logout", response_model=Me)
def logout(response: Response) -> Me:
    """Forget the cookie."""
    response.delete_cookie(COOKIE_NAME)
    return Me(user=None, auth=auth_enabled())


@router.get("/me", response_model=Me)
def me(user: CurrentUser) -> Me:
    """Who the request's token belongs to (None with auth off)."""
    return Me(user=user, auth=auth_enabled())
