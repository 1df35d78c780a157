"""What every page route shares: the caller's `Access` (from `api.guard.authorise`, the same
decision as the API's), forms with their CSRF check, and reading a route function's answer."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from api.guard import Access, authorise
from api.pages.session import check_csrf
from api.problems import Problem

FORM_LIMIT = 64 * 1024


async def _remember_access(request: Request, access: Annotated[Access, Depends(authorise)]
                           ) -> None:
    """Keep the caller's access (`authorise` has decided) for the error page's navigation."""
    request.scope.setdefault("state", {})["page_access"] = access


PageAccess = Annotated[Access, Depends(authorise)]


def page_router() -> APIRouter:
    """A router of pages: left out of the API's description; each route depends on
    `authorise` itself (as every API route does) and remembers the caller's access."""
    return APIRouter(include_in_schema=False, dependencies=[Depends(_remember_access)])


async def form(request: Request) -> dict[str, Any]:
    """A posted form (urlencoded, small), its CSRF token checked against the session's.
    Repeated fields are lists; others single strings."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > FORM_LIMIT:
        raise Problem(413, "the form is too large")
    data = await request.form()
    check_csrf(request, data.get("csrf") if isinstance(data.get("csrf"), str) else None)
    out: dict[str, Any] = {}
    for key in data:
        values = [v for v in data.getlist(key) if isinstance(v, str)]
        out[key] = values if len(values) > 1 else (values[0] if values else "")
    return out


def listed(value: Any) -> list[str]:
    """A form or query field as a list of non-empty strings."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def answer(response: Response) -> dict[str, Any]:
    """The JSON body of a route function's response (what the API would have sent)."""
    return orjson.loads(response.body)


def see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers={"Cache-Control": "no-store"})
