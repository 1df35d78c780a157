"""Council uploaders' pages: upload an extract with its manifest, see the receipt with each
rejected row explained in plain English, and the council's own uploads; nothing else.

The upload is `POST /extracts` itself: the page checks the form's CSRF token (sent in the
form's address, since the body is streamed to disk by the route and not read before), then
hands the request to the route function, which receives, checks (Casbin: own organisation,
a source the role may send) and lands it exactly as for the API.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.authz import policy_source
from api.guard import permission
from api.pages.common import PageAccess, answer, page_router
from api.pages.render import render
from api.pages.session import check_csrf
from api.routes import extracts as extract_routes

router = page_router()
SOURCES = {"social_care": "Social care (consented clients)", "optouts": "Opt-outs register"}
COUNT_LABELS = {"received": "Rows received", "landed": "Rows kept", "rejected": "Rows rejected",
                "dropped_no_consent": "Rows without consent (not kept)",
                "excluded_by_optout": "Rows of people who opted out (not kept)",
                "nhs_missing": "Rows without an NHS number (linked by other details)",
                "nhs_invalid": "Rows with an NHS number that fails its check (linked by "
                               "other details)",
                "encoded_for_linkage": "Rows prepared for linkage by other details"}
RULES = (
    (r"^required but blank$", "is empty, but it must be filled in"),
    (r"^fails the modulus-11 check$", "is not a valid NHS number: its check digit is wrong"),
    (r"^longer than (\d+) characters$", r"is longer than the \1 characters allowed"),
    (r"^not a date \(YYYY-MM-DD\)$", "is not a date written as year-month-day, for example "
                                     "2024-03-31"),
    (r"^not a plausible date of birth$", "is not a possible date of birth (in the future, or "
                                         "too long ago)"),
    (r"^not an ISO 8601 date-time$", "is not a date and time written like "
                                     "2024-03-31T14:05:00"),
    (r"^not a number$", "is not a number"),
    (r"^not one of the allowed codes$", "holds a code that is not one of those allowed for "
                                        "this column (see the data contract)"),
    (r"^not a valid (.+)$", r"is not a valid \1"),
    (r"^not up to 20 ICD-10 codes separated by ';'$", "should hold up to 20 ICD-10 codes "
                                                     "separated by semicolons"),
    (r"^duplicate of an earlier row$", "repeats the record id of an earlier row, so this row "
                                       "was not kept"),
)


def plain(reason: str) -> str:
    """A rejected row's reason (`column: rule`, never a value) as a sentence."""
    column, _, rule = reason.partition(": ")
    if not rule:
        return reason[:1].upper() + reason[1:]
    for pattern, text in RULES:
        if re.match(pattern, rule):
            explained = re.sub(pattern, text, rule)
            return f"The {column.replace('_', ' ')} (column {column}) {explained}."
    return f"The {column.replace('_', ' ')} (column {column}): {rule}."


def _explained(receipt: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"row": r["row"], "reason": r["reason"], "plain": plain(r["reason"])}
            for r in receipt.get("rejected_rows") or []]


@router.get("/pages/upload", summary="Upload an extract")
@permission("receipt", "read", owner="collection")
async def upload_form(request: Request, access: PageAccess,
                      status: Annotated[str | None, Query(pattern=r"^(landed|refused|destroyed)?$")]
                      = None) -> Response:
    """The upload form and the organisation's own receipts (`GET /extracts`)."""
    history = answer(await run_in_threadpool(extract_routes.receipts, access, 200,
                                             status or None))
    org = access.principal.org
    sources = {s: label for s, label in SOURCES.items()
               if access.allows("extract", "create", owner=org,
                                source=policy_source(s))}
    return render(request, "council/upload.html", access=access, title="Upload an extract",
                  items=history["items"], sources=sources, org=org)


@router.post("/pages/upload", summary="Upload an extract")
@permission("extract", "create", owner="caller", any_source=True, streamed=True)
async def upload(request: Request, access: PageAccess,
                 csrf: Annotated[str | None, Query(max_length=100)] = None) -> Response:
    """Land the extract by `POST /extracts`' own function and show its receipt."""
    check_csrf(request, csrf)
    response = await extract_routes.upload(request, access)
    body = orjson.loads(response.body)
    receipt = body.get("receipt", body) if response.status_code == 422 else body
    return render(request, "council/receipt.html", access=access, title="Receipt",
                  status=response.status_code, receipt=receipt,
                  rejections=_explained(receipt), counts=COUNT_LABELS, back="/pages/upload",
                  just_sent=True)
