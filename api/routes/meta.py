"""Liveness, the API's own description, and who the caller is."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from api.guard import Access, authorise, permission
from api.problems import responses
from api.routes import example_response, ok
from api.schemas import Health, WhoAmI

router = APIRouter(tags=["service"])


@router.get("/health", summary="Liveness", responses={200: example_response(Health)})
@permission("health", "read")
async def health(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Answers while the service runs (no data)."""
    return ok({"status": "ok"})


@router.get("/openapi.json", include_in_schema=False)
@permission("api_docs", "read")
async def openapi(request: Request, access: Annotated[Access, Depends(authorise)]
                  ) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
@permission("api_docs", "read")
async def docs(access: Annotated[Access, Depends(authorise)]) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="Haven API")


@router.get("/whoami", summary="Who am I",
            responses={200: example_response(WhoAmI), **responses(401, 422)})
@permission("whoami", "read")
async def whoami(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """The caller's user, organisation, roles, and the purposes of use open to them."""
    principal = access.principal
    purposes = sorted({p for role in principal.roles
                       for p in access.services.policy.purposes(role)})
    return ok({"user": principal.user, "org": principal.org, "roles": list(principal.roles),
               "authenticated_by": principal.method, "purpose": access.purpose,
               "purposes": purposes})
