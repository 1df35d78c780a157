"""Extract uploads and receipts: councils send their own extracts and see their own receipts;
IG leads see every receipt."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.authz import policy_source
from api.guard import Access, authorise, permission
from api.problems import PROBLEM_JSON, Problem, problem_body, responses, scrub
from api.routes import example_response, ok
from api.schemas import Receipt, ReceiptList
from api.uploads import received
from governance.audit import Actor
from governance.schema import extracts
from pipeline.land import ManifestError, land_upload, parse_manifest

router = APIRouter(tags=["extracts"])
MANIFEST_FIELDS = ("source", "sender", "period_start", "period_end", "sha256", "rows")
EXTRACT_ID = r"^[A-Za-z0-9_.-]{1,40}$"

UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {
        "schema": {
            "type": "object", "required": ["file", *MANIFEST_FIELDS],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "The extract: CSV with a header row, or Parquet."},
                "source": {"type": "string", "example": "social_care"},
                "sender": {"type": "string", "example": "E08000035",
                           "description": "ODS code of the sender: your own organisation."},
                "period_start": {"type": "string", "format": "date", "example": "2025-01-01"},
                "period_end": {"type": "string", "format": "date", "example": "2025-03-31"},
                "sha256": {"type": "string", "example": "9f86d081884c7d659a2feaa0c55ad015"
                                                        "a3bf4f1b2b0b822cd15d6c15b0f00a08"},
                "rows": {"type": "integer", "example": 1544},
            }},
        "encoding": {"file": {"contentType": "text/csv, application/octet-stream"}},
    }},
}


def _receipt_row(row: Any) -> dict[str, Any]:
    return {"extract_id": row.extract_id, "source": row.source, "sender": row.sender,
            "status": row.status, "reason": row.reason,
            "received_at": row.received_at.isoformat() if row.received_at else None,
            "retention_date": row.retention_date.isoformat() if row.retention_date else None,
            "rows_landed": int(row.rows_landed or 0), "counts": row.counts or {}}


@router.post("/extracts", summary="Upload an extract", status_code=201,
             openapi_extra={"requestBody": UPLOAD_BODY},
             responses={201: example_response(Receipt, "Landed"),
                        200: example_response(Receipt, "Already landed (same SHA-256)"),
                        **responses(401, 403, 413, 415, 422)})
@permission("extract", "create", owner="caller", any_source=True, streamed=True)
async def upload(request: Request, access: Annotated[Access, Depends(authorise)]
                 ) -> JSONResponse:
    """Land an extract with the same checks as `haven land`; the manifest's fields come as
    form fields. The sender must be the caller's own organisation, and the role must be
    allowed to send that source. Answers with the receipt (422 with the receipt when refused).
    """
    services = access.services
    async with received(request, services.settings.layout.uploads_dir,
                        services.config.max_upload_bytes) as upload:
        try:
            manifest = parse_manifest({k: upload.fields.get(k) for k in MANIFEST_FIELDS})
        except ManifestError as exc:
            raise Problem(422, str(exc), slug="invalid-manifest") from None
        access.note.detail.update(source=manifest.source, sender=manifest.sender)
        access.require("extract", "create", source=policy_source(manifest.source),
                       owner=manifest.sender,
                       detail=f"may not send {manifest.source} extracts as {manifest.sender}")
        principal = access.principal
        ctx = services.context.acting_as(
            Actor(principal.user, access.role, principal.org, access.purpose))
        receipt = await run_in_threadpool(land_upload, ctx, upload.path, manifest,
                                          upload.filename, principal.org)
    body = receipt.to_json()
    access.answered(int(receipt.counts.get("landed", 0)), extract_id=receipt.extract_id,
                    status=receipt.status)
    if receipt.status == "refused":
        body["reason"] = scrub(body.get("reason") or "")
        return JSONResponse(problem_body(422, receipt.reason, "extract-refused", receipt=body),
                            status_code=422, media_type=PROBLEM_JSON)
    return ok(body, 201 if receipt.status == "landed" else 200)


@router.get("/extracts", summary="Receipts",
            responses={200: example_response(ReceiptList), **responses(401, 403, 422)})
@permission("receipt", "read", owner="collection")
def receipts(access: Annotated[Access, Depends(authorise)],
             limit: Annotated[int, Query(ge=1, le=1000, examples=[100])] = 100,
             status: Annotated[str | None, Query(pattern=r"^(landed|refused|destroyed)$",
                                                 examples=["landed"])] = None
             ) -> JSONResponse:
    """Receipts of uploads, newest first: a council's own uploads only; IG leads see all."""
    query = select(extracts).order_by(extracts.c.received_at.desc()).limit(limit)
    if access.scope != "any":
        query = query.where(extracts.c.uploaded_by_org == access.principal.org)
    if status:
        query = query.where(extracts.c.status == status)
    with access.services.engine.connect() as connection:
        items = [_receipt_row(r) for r in connection.execute(query)]
    access.answered(len(items), scope=access.scope)
    return ok({"items": items, "scope": access.scope})


@router.get("/extracts/{extract_id}", summary="One receipt",
            responses={200: example_response(Receipt), **responses(401, 403, 404, 422)})
@permission("receipt", "read", owner="collection")
def receipt(extract_id: Annotated[str, Path(pattern=EXTRACT_ID,
                                            examples=["20250402-social_care-1a2b3c4d"])],
            access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """A receipt; another organisation's is not found."""
    query = select(extracts).where(extracts.c.extract_id == extract_id)
    if access.scope != "any":
        query = query.where(extracts.c.uploaded_by_org == access.principal.org)
    with access.services.engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        raise Problem(404, "no such receipt")
    access.answered(1)
    return ok(_receipt_row(row))
