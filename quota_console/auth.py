"""Signing in, and the checks every request passes: a signed session cookie names the person, and every form
that changes something carries the session's CSRF token.

The cookie is Starlette's signed session (HttpOnly, SameSite=Strict, Secure when the console serves HTTPS):
it holds the login name and the CSRF token, nothing the center trusts. Writes are POST only, each checked
against the token, so neither a link nor another site's form can act for the person.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from quota_console.users import User, Users

Handler = Callable[[Request], Awaitable[Response]]
CSRF_FIELD = "csrf"


def csrf_token(request: Request) -> str:
    """The session's token, made on first use (before sign-in too: the login form carries it)."""
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return token


async def posted_form(request: Request) -> dict[str, str]:
    """The posted fields, once the CSRF token among them matched the session's; 403 otherwise."""
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    expected = request.session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not hmac.compare_digest(fields.get(CSRF_FIELD, ""), expected):
        raise HTTPException(403, "the form's security token does not match this session: reload the page and retry")
    return fields


def users_of(request: Request) -> Users:
    users: Users = request.app.state.users
    return users


def signed_in(request: Request) -> User | None:
    login = request.session.get("login")
    return users_of(request).by_login.get(login) if isinstance(login, str) else None


def require_user(handler: Handler) -> Handler:
    """The handler, for a signed-in person; anyone else is sent to the login page, and back afterwards."""

    async def guarded(request: Request) -> Response:
        if signed_in(request) is None:
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        return await handler(request)

    return guarded


def safe_next(target: str) -> str:
    """Where to go after sign-in: a path of this console only, never another site (`//host`, `/\\host`)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


async def sign_in(request: Request, fields: dict[str, str]) -> User | None:
    """The person the login and password name, now signed in with a fresh session (a token planted before
    sign-in does not carry over); None when they do not match."""
    users = users_of(request)
    # scrypt takes tens of milliseconds of CPU: off the event loop, so other pages keep answering.
    user = await asyncio.to_thread(users.authenticate, fields.get("login", ""), fields.get("password", ""))
    if user is not None:
        request.session.clear()
        request.session["login"] = user.login
        csrf_token(request)
    return user
