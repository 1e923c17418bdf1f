"""API tokens: `distill token create NAME` prints one; the database keeps only its sha256.

With `DISTILL_AUTH=on` every route but /api/health needs `Authorization: Bearer <token>` (or the
`distill_token` cookie that POST /api/login sets for the browser); experiments belong to the
token's name. With auth off everyone is anonymous (owner None) and may do everything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from app.models import ApiToken, utcnow
from app.settings import get_settings

COOKIE_NAME = "distill_token"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # touch last_used_at at most this often: reads stay reads


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(*, session: Session, name: str) -> str:
    """A new random token for `name` (shown once; raises ValueError if the name already has one)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("a token name must be 1 to 200 characters")
    if session.exec(select(ApiToken).where(ApiToken.name == name)).first() is not None:
        raise ValueError(f"a token named {name!r} exists; revoke it first (distill token revoke {name})")
    token = secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=hash_token(token)))
    session.commit()
    return token


def revoke_token(*, session: Session, name: str) -> bool:
    row = session.exec(select(ApiToken).where(ApiToken.name == name)).first()
    if row is None:
        return False
    session.delete(row)
    session.commit()
    return True


def list_tokens(*, session: Session) -> list[ApiToken]:
    return list(session.exec(select(ApiToken).order_by(ApiToken.name)))


def user_for_token(*, session: Session, token: str | None) -> str | None:
    """The name holding `token`, or None (also updates last_used_at, at most once a minute)."""
    if not token or len(token) > 512:
        return None
    digest = hash_token(token)
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    now = utcnow()
    last = row.last_used_at
    if last is None or now - (last if last.tzinfo else last.replace(tzinfo=now.tzinfo)) > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.add(row)
        session.commit()
    return row.name


def token_from_request(request: HTTPConnection) -> str | None:
    """The bearer token of the Authorization header, else the browser's cookie."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE_NAME) or None


def auth_enabled() -> bool:
    return get_settings().auth == "on"


async def auth_dependency(request: HTTPConnection) -> str | None:
    """For `gr.mount_gradio_app(..., auth_dependency=auth_dependency)`: the user name, or None to refuse.

    With auth off everybody is "anonymous" (Gradio refuses a None user). Gradio calls this on its event
    loop, so the token's query runs in a worker thread, in a session of its own that closes at once.
    """
    if not auth_enabled():
        return "anonymous"
    return await run_in_threadpool(_user_of_request, request)


def _user_of_request(request: HTTPConnection) -> str | None:
    from app.db import get_engine

    with Session(get_engine()) as session:
        return user_for_token(session=session, token=token_from_request(request))
