"""Sessions of the pages: a Haven bearer token exchanged once for a server-side session.

The browser holds only a random session id in a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/`,
`Secure` when the request came over TLS); the token stays in this process's memory, so every
page request is authenticated, decided by Casbin and audited exactly as an API request with
that token would be (`PageSessionMiddleware` hands the token to `api.guard.authorise`). A
revoked token ends its sessions at the next request.

A session ends on sign-out, after `IDLE_SECONDS` without a request, or `ABSOLUTE_SECONDS`
after sign-in, whichever comes first. Every form carries the session's CSRF token, compared
in constant time; the sign-in form, made before there is a session, carries a token paired
with a short-lived cookie of its own (double submit).

Sessions live in the serving process: behind several workers (`haven serve --workers N`) a
browser must reach the worker that signed it in (sticky routing), or sign in again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from api.problems import Problem
from api.trail import AuditNote

COOKIE = "haven_session"
SIGN_IN_COOKIE = "haven_sign_in"
IDLE_SECONDS = 30 * 60
ABSOLUTE_SECONDS = 8 * 60 * 60
MAX_SESSIONS = 10_000
PAGES = "/pages"
STATIC_PREFIX = "/pages/static/"
# API reads a page's script may fetch with the session (GET only; the answers are the API's).
API_READS = ("/aggregates", "/runs/current")


@dataclass
class Session:
    """One signed-in browser: the token it signed in with, and its CSRF token."""

    token: str
    user: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)

    def expired(self, now: float) -> bool:
        return now - self.seen > IDLE_SECONDS or now - self.created > ABSOLUTE_SECONDS


class SessionStore:
    """Sessions by the SHA-256 of their id (the id itself is only in the browser's cookie)."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    def create(self, token: str, user: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(token=token, user=user)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                self._sweep(time.monotonic())
            if len(self._sessions) >= MAX_SESSIONS:  # the oldest go first
                oldest = sorted(self._sessions, key=lambda k: self._sessions[k].seen)
                for key in oldest[: MAX_SESSIONS // 10]:
                    del self._sessions[key]
            self._sessions[self._key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None, touch: bool = True) -> tuple[Session | None, bool]:
        """The live session of this id, and whether one existed but has expired."""
        if not session_id:
            return None, False
        key = self._key(session_id)
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None, False
            if session.expired(now):
                del self._sessions[key]
                return None, True
            if touch:
                session.seen = now
        return session, False

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(self._key(session_id), None)

    def _sweep(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expired(now)]:
            del self._sessions[key]


def same(expected: str | None, given: str | None) -> bool:
    """Constant-time equality of two tokens (False when either is missing)."""
    return bool(expected) and bool(given) and hmac.compare_digest(
        str(expected).encode(), str(given).encode())


def check_csrf(request: Any, given: str | None) -> None:
    """Refuse (403, audited as refused `csrf`) a form whose token is not the session's."""
    session: Session | None = request.scope.get("state", {}).get("page_session")
    if session is None or not same(session.csrf, given):
        note = getattr(request.state, "audit_note", None)
        if note is not None:
            note.detail["refused"] = "csrf"
        raise Problem(403, "the form has expired or did not come from this site: open the "
                           "page again and resend it", slug="csrf")


def cookie_header(name: str, value: str, *, secure: bool, max_age: int | None = None,
                  path: str = "/") -> str:
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def is_tls(scope: dict[str, Any]) -> bool:
    return scope.get("scheme") == "https"


def _cookies(scope: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key and key not in found:
                    found[key] = val
    return found


class PageSessionMiddleware:
    """For the pages (and the few API reads their scripts make), turn the session cookie into
    the bearer token `authorise` expects; nothing else. A request that already carries an
    Authorization header, or no live session, passes unchanged (and `authorise` answers 401
    to an anonymous request for a page that needs a user)."""

    def __init__(self, app: Any, store: SessionStore, static: Any = None) -> None:
        self.app = app
        self.store = store
        self.static = static

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            if self.static is not None and path.startswith(STATIC_PREFIX):
                # Stylesheets, scripts and icons: no data, no session; still one audit entry.
                scope.setdefault("state", {})["audit_note"] = AuditNote(
                    action="page_asset.read", resource=STATIC_PREFIX.rstrip("/"))
                await self.static(scope, receive, send)
                return
            page = path == PAGES or path.startswith(PAGES + "/")
            api_read = scope.get("method") in ("GET", "HEAD") and path in API_READS
            if page or api_read:
                scope = self._with_session(scope, page)
        await self.app(scope, receive, send)

    def _with_session(self, scope: dict, page: bool) -> dict:
        headers = scope.get("headers", [])
        if any(name == b"authorization" for name, _ in headers):
            return scope
        cookies = _cookies(scope)
        session, expired = self.store.get(cookies.get(COOKIE))
        state = scope.setdefault("state", {})
        if page:
            state["page_cookies"] = cookies
            state["page_session_id"] = cookies.get(COOKIE)
        if expired:
            state["page_session_expired"] = True
        if session is None:
            return scope
        state["page_session"] = session
        return {**scope, "headers": [*headers,
                                     (b"authorization", f"Bearer {session.token}".encode())]}


class StaticAssets:
    """The pages' vendored stylesheets, scripts and icons (read-only files, no listing), with
    a day's caching: their file names carry their versions."""

    def __init__(self, folder: Any) -> None:
        from starlette.staticfiles import StaticFiles

        self.files = StaticFiles(directory=str(folder))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405,
                        "headers": [(b"allow", b"GET, HEAD")]})
            await send({"type": "http.response.body", "body": b""})
            return
        inner = {**scope, "root_path": scope.get("root_path", "") + STATIC_PREFIX[:-1]}

        async def cached(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [
                    *message.get("headers", []),
                    (b"cache-control", b"public, max-age=86400"),
                    (b"x-content-type-options", b"nosniff")]}
            await send(message)

        from starlette.exceptions import HTTPException

        try:
            await self.files(inner, receive, cached)
        except HTTPException as exc:  # outside the app's exception handlers: answer here
            await send({"type": "http.response.start", "status": exc.status_code,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"not found"})
