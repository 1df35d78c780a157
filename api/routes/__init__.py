"""The API's routes, one module per audience: release (analysts, MDTs), reidentify (MDTs),
extracts (councils, IG), jobs and exports (super users), governance (IG leads), admin."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse, Response

from api.problems import Problem
from api.scored_run import NoRun, Release


def current_release(access: Any) -> Release:
    """The release answering the caller's purpose, or 409 when no score run may answer it."""
    try:
        return access.services.releases.current(access.purpose)
    except NoRun as exc:
        raise Problem(409, str(exc), slug="no-score-run") from None


def ok(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def json_response(body: Any, status: int = 200) -> Response:
    """JSON by orjson: a page of persons or an aggregate's cells is made several times faster
    than by the standard library (keys must be strings; NaN becomes null)."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def example_response(model: type, description: str = "OK",
                     media_type: str = "application/json") -> dict[str, Any]:
    """The documented success answer of a route, with the model's example."""
    examples = (model.model_config.get("json_schema_extra") or {}).get("examples") or [None]
    return {"model": model, "description": description,
            "content": {media_type: {"example": examples[0]}}}
