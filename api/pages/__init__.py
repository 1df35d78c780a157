"""The pages: Haven's web face for each role, on the same app as the API.

One more face on the pipeline, never a second implementation of a rule: every page is a route
of the same app, so the app-level `api.guard.authorise` authenticates it, asks Casbin and
notes the audit entry the middleware writes (one per request, as for the API); a page calls
the same route functions or pipeline and governance functions the JSON routes call, and shows
their answer. Refusals are the API's refusals, rendered as a plain page.

- `session`: sign-in with a Haven token -> server-side session cookie, CSRF, expiry.
- `render`: Jinja2 templates (NHS design system markup), navigation by Casbin, headers.
- `account`, `mdt`, `analyst`, `ig`, `council`, `admin`: the routes, one module per audience.

`install(app)` is called by `api.app.create_app`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.pages import account, admin, analyst, council, ig, mdt
from api.pages.render import STATIC, render
from api.pages.session import PAGES, PageSessionMiddleware, SessionStore, StaticAssets
from api.problems import Halted, Problem

TITLES = {401: "Sign in", 403: "You cannot see this page", 404: "Page not found",
          405: "Not available", 409: "Not available yet", 413: "The file is too large",
          415: "Not accepted", 422: "There is a problem", 500: "Sorry, there is a problem"}


def _is_page(request: Request) -> bool:
    path = request.url.path
    return path == PAGES or path.startswith(PAGES + "/")


def _status_and_detail(exc: Exception) -> tuple[int, str | None, dict[str, str]]:
    exc = getattr(exc, "problem", None) or exc  # a problem raised while a body was read
    if isinstance(exc, Problem):
        return exc.status, exc.detail, exc.headers
    if isinstance(exc, StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) and exc.status_code != 404 else None
        return exc.status_code, detail, dict(exc.headers or {})
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0].get("loc", ())[1:]) if errors else "request"
        return 422, f"{where or 'request'}: {errors[0].get('msg', 'invalid') if errors else ''}", {}
    return 500, None, {}


def error_page(request: Request, exc: Exception) -> Any:
    """A refusal or error as a page: 401 shows the sign-in form, anything else a plain page
    with the API's own explanation (problem details never hold an identifier)."""
    from api.problems import scrub

    status, detail, headers = _status_and_detail(exc)
    state = request.scope.get("state", {})
    if status == 401:
        return account.sign_in_page(
            request, status=401,
            message="Your session has ended. Sign in again to continue."
            if state.get("page_session_expired") else None,
            next_path=request.url.path if request.method == "GET" else "/pages/")
    headers = {k: v for k, v in headers.items() if k.lower() != "www-authenticate"}
    return render(request, "error.html", access=state.get("page_access"), status=status,
                  headers=headers, title=TITLES.get(status, "There is a problem"),
                  status_code=status, detail=scrub(detail) if detail else None)


def _wrap(app: FastAPI, kind: type[Exception] | int) -> None:
    original = app.exception_handlers.get(kind)

    async def handler(request: Request, exc: Exception) -> Any:
        if _is_page(request):
            return error_page(request, exc)
        return await original(request, exc)  # type: ignore[misc]

    if original is not None:
        app.exception_handlers[kind] = handler


def install(app: FastAPI) -> None:
    """Add the pages to the app: their routes, their session middleware (which also serves
    their static files) and their error pages. Call before the audit middleware is added, so
    that every page request, static files included, is audited, and after the body gate, so
    that the gate authorises a page's request with its session's token."""
    store = SessionStore()
    app.state.page_sessions = store
    for module in (account, mdt, analyst, ig, council, admin):
        app.include_router(module.router)
    for kind in (Problem, Halted, StarletteHTTPException, RequestValidationError,
                 Exception):
        _wrap(app, kind)
    app.add_middleware(PageSessionMiddleware, store=store, static=StaticAssets(STATIC))
