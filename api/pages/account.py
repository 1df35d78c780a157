"""Signing in and out, and each role's home page.

Signing in exchanges a Haven bearer token (as `haven users add` or an admin issues it) for a
session: the token is checked by the same `Authenticator` the API uses, and the audit entry
of the sign-in names the user who signed in, never the token. A page asked for without a
session answers 401 with the sign-in form (so the refusal is audited as `unauthenticated`).
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from api.guard import permission
from api.identity import AuthError
from api.pages.common import PageAccess, page_router, see_other
from api.pages.render import navigation, render
from api.pages.session import (
    COOKIE,
    PAGES,
    SIGN_IN_COOKIE,
    cookie_header,
    is_tls,
    same,
)

router = page_router()
SIGN_IN = f"{PAGES}/sign-in"
TOKEN_LIMIT = 4096
DESCRIPTIONS = {
    "/pages/case-finding": "Your practice's people at highest risk, for the next MDT meeting.",
    "/pages/dashboards": "The current run's published tables: tiers by PCN and practice, age, "
                         "sex and conditions.",
    "/pages/model": "How well the current model did on the year after its date.",
    "/pages/jobs": "Start linkage and scoring, and follow their progress.",
    "/pages/exports": "Export the current run for a named recipient.",
    "/pages/upload": "Send an extract and see your receipts.",
    "/pages/audit": "Search every access, and verify the audit chain.",
    "/pages/certificates": "Destruction certificates and retention.",
    "/pages/optouts": "Opt-outs in force and what they hold back.",
    "/pages/policy-tables": "Retention, suppression, opt-out purposes: view and change.",
    "/pages/receipts": "Every upload's receipt.",
    "/pages/users": "Users and their tokens.",
    "/pages/access-rules": "The access rules every request is decided by.",
}


def _safe_next(value: Any) -> str:
    """Where to go after signing in: a page of this site only."""
    text = str(value or "")
    if text.startswith(PAGES + "/") and "//" not in text and "\\" not in text \
            and not text.startswith(SIGN_IN) and len(text) < 300:
        return text
    return PAGES + "/"


def sign_in_page(request: Request, *, status: int = 401, message: str | None = None,
                 error: str | None = None, next_path: str = PAGES + "/") -> HTMLResponse:
    """The sign-in form, with a CSRF token paired with a short-lived cookie (double submit)."""
    token = secrets.token_urlsafe(32)
    response = render(request, "sign_in.html", status=status, title="Sign in",
                      message=message, error=error, next_path=_safe_next(next_path),
                      sign_in_csrf=token,
                      headers={"WWW-Authenticate": 'Bearer realm="haven"'} if status == 401
                      else None)
    response.headers.append("Set-Cookie", cookie_header(
        SIGN_IN_COOKIE, token, secure=is_tls(request.scope), max_age=900, path=SIGN_IN))
    return response


@router.get(PAGES + "/", summary="Home")
@permission("whoami", "read")
async def home(request: Request, access: PageAccess) -> Response:
    """The caller's pages (what Casbin lets them open)."""
    return render(request, "home.html", access=access, title="Your pages",
                  pages=navigation(access), descriptions=DESCRIPTIONS)


@router.get(PAGES, summary="Home")
@permission("whoami", "read")
async def home_bare(access: PageAccess) -> Response:
    return see_other(PAGES + "/")


@router.get(SIGN_IN, summary="Sign in")
@permission("whoami", "read")
async def signed_in_already(access: PageAccess) -> Response:
    """Signed in: go home (without a session this answers 401 with the sign-in form)."""
    return see_other(PAGES + "/")


@router.post(SIGN_IN, summary="Sign in")
@permission("session", "create")
async def sign_in(request: Request, access: PageAccess) -> Response:
    """Check the form's token (CSRF paired with its cookie), then the bearer token; start a
    session and go to the page asked for. Any failure answers 401 with the form again."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > TOKEN_LIMIT * 2:
        return sign_in_page(request, error="Enter your access token.")
    data = await request.form()
    next_path = _safe_next(data.get("next"))
    cookies = request.scope.get("state", {}).get("page_cookies", {})
    if not same(cookies.get(SIGN_IN_COOKIE), str(data.get("csrf") or "")):
        access.note.detail["refused"] = "csrf"
        return sign_in_page(request, error="The sign-in form had expired. Enter your token "
                                           "again.", next_path=next_path)
    token = str(data.get("token") or "").strip()
    if not token or len(token) > TOKEN_LIMIT:
        access.note.detail["reason"] = "no token"
        return sign_in_page(request, error="Enter your access token.", next_path=next_path)
    services = request.app.state.services
    try:
        principal = await run_in_threadpool(services.auth.authenticate, token)
    except AuthError as exc:
        access.note.detail["reason"] = str(exc)
        return sign_in_page(request, error="That access token was not accepted. Check it and "
                                           "try again, or ask your administrator for a new "
                                           "one.", next_path=next_path)
    store = request.app.state.page_sessions
    store.end(request.scope.get("state", {}).get("page_session_id"))  # never reuse an id
    session_id, _ = store.create(token, principal.user)
    note = access.note
    note.actor, note.org = principal.user, principal.org
    note.role = principal.roles[0] if principal.roles else "-"
    note.detail["method"] = principal.method
    response = see_other(next_path)
    secure = is_tls(request.scope)
    response.headers.append("Set-Cookie", cookie_header(COOKIE, session_id, secure=secure))
    response.headers.append("Set-Cookie", cookie_header(SIGN_IN_COOKIE, "", secure=secure,
                                                        max_age=0, path=SIGN_IN))
    return response


@router.post(PAGES + "/sign-out", summary="Sign out")
@permission("session", "delete")
async def sign_out(request: Request, access: PageAccess) -> Response:
    """End the session (CSRF-checked) and forget its cookie."""
    from api.pages.common import form

    await form(request)
    state = request.scope.get("state", {})
    request.app.state.page_sessions.end(state.get("page_session_id"))
    state.pop("page_session", None)
    response = sign_in_page(request, status=200, message="You have signed out.")
    response.headers.append("Set-Cookie", cookie_header(COOKIE, "", secure=is_tls(
        request.scope), max_age=0))
    return response
