"""Errors as RFC 9457 problem details (`application/problem+json`), never an identifier or a
stack trace: the detail names the field or rule, not the value the caller sent."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from governance.audit import NHS_SHAPE, url_decoded
from governance.suppression import PublicationUnchecked

PROBLEM_JSON = "application/problem+json"
# Ten digits as 3-3-4, with any common separators or none (governance.audit.NHS_SHAPE):
# whatever a caller sent that could be an NHS number. URL-encoded text is decoded first.
NHS_SHAPED = re.compile(rf"(?<!\d){NHS_SHAPE}(?!\d)")
TYPE_BASE = "https://haven.nhs.uk/problems/"
logger = logging.getLogger("haven.api")

TITLES = {
    400: "bad request",
    401: "not authenticated",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    413: "content too large",
    415: "unsupported media type",
    422: "unprocessable content",
    500: "internal error",
}


class ProblemModel(BaseModel):
    """A problem detail. Extra members (`errors`, `receipt`) appear where documented."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "type": "https://haven.nhs.uk/problems/forbidden", "title": "forbidden", "status": 403,
        "detail": "role analyst may not read case_finding for purpose commissioning"}]})

    type: str
    title: str
    status: int
    detail: str | None = None


class Problem(Exception):
    """Raise to answer with a problem; `extra` members are added to the body."""

    def __init__(self, status: int, detail: str | None = None, *, slug: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or TITLES.get(status, "error"))
        self.status = status
        self.detail = detail
        self.slug = slug or TITLES.get(status, "error").replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra


class Halted(StarletteHTTPException):
    """A problem raised while a request's body is being read (`api.guard.BodyGate`): FastAPI
    lets only HTTP exceptions through there, so the problem travels inside one."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.status, problem.detail, problem.headers or None)
        self.problem = problem


def scrub(text: str) -> str:
    """Text fit to answer with: anything shaped like an NHS number is withheld."""
    plain = url_decoded(text)
    if plain != text and NHS_SHAPED.search(plain):
        text = plain
    return NHS_SHAPED.sub("(withheld)", text)


def problem_body(status: int, detail: str | None = None, slug: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    title = TITLES.get(status, "error")
    detail = scrub(detail) if detail else detail
    body: dict[str, Any] = {"type": TYPE_BASE + (slug or title.replace(" ", "-")),
                            "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return body


def problem_response(status: int, detail: str | None = None, *, slug: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(problem_body(status, detail, slug, **extra), status_code=status,
                        media_type=PROBLEM_JSON, headers=headers)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problems a route may answer with."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {
            "description": TITLES.get(status, "error"),
            "content": {PROBLEM_JSON: {
                "schema": {"$ref": "#/components/schemas/ProblemModel"},
                "example": problem_body(status, _EXAMPLE_DETAIL.get(status))}},
        }
    return out


_EXAMPLE_DETAIL = {
    401: "a bearer token is required",
    403: "role analyst may not read case_finding for purpose commissioning",
    404: "no such person in the current run",
    409: "a job is already running",
    413: "the extract is larger than the 1024 MiB limit",
    422: "query parameter limit: must be at most 500",
}


def _validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """Where and what, without the value sent (it may hold an identifier)."""
    errors = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error.get("loc", ()))
        errors.append({"location": scrub(location),
                       "message": scrub(str(error.get("msg", "invalid")))})
    return errors


def install(app: FastAPI) -> None:
    """Answer every error the app can raise as a problem."""

    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, slug=exc.slug, headers=exc.headers,
                                **exc.extra)

    @app.exception_handler(Halted)
    async def _halted(request: Request, exc: Halted) -> JSONResponse:
        return await _problem(request, exc.problem)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) and exc.status_code != 404 else None
        if exc.status_code == 404:
            detail = "no such resource"
        return problem_response(exc.status_code, detail,
                                headers=dict(exc.headers or {}) or None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"location": "request", "message": "invalid"}
        return problem_response(422, f"{first['location']}: {first['message']}",
                                slug="invalid-request", errors=errors)

    @app.exception_handler(PublicationUnchecked)
    async def _unchecked(_request: Request, exc: PublicationUnchecked) -> JSONResponse:
        logger.error("publication refused: %s", exc)
        return problem_response(503, "the published figures could not be checked for "
                                     "disclosure, so none are shown; try again later",
                                slug="publication-unchecked")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # The type only: a message or traceback could quote data.
        logger.error("unhandled %s", type(exc).__name__)
        return problem_response(500, "the request could not be completed")
