"""IG leads' pages: the audit log (search, export, chain verification), destruction
certificates and retention, the opt-out report, the policy tables and every upload's receipt.

Each calls the route function of `api.routes.governance` or `api.routes.extracts` it shows.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from fastapi import Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.guard import permission
from api.pages.common import PageAccess, answer, form, page_router, see_other
from api.pages.render import render
from api.problems import Problem
from api.routes import extracts as extract_routes
from api.routes import governance as gov
from api.schemas import PolicyTableUpdate, RetentionRequest
from governance import retention

router = page_router()
PAGE = 50
OUTCOMES = ("ok", "denied", "unauthenticated", "refused", "not_found", "error", "duplicate")
Day = Annotated[str | None, Query(max_length=10, pattern=r"^(\d{4}-\d{2}-\d{2})?$")]
Text = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:@/-]*$")]


def _day(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC) if text else None


@router.get("/pages/audit", summary="Audit log")
@permission("audit_log", "read")
async def audit_log(request: Request, access: PageAccess, actor: Text = None,
                    role: Text = None, action: Text = None, outcome: Text = None,
                    since: Day = None, until: Day = None,
                    after: Annotated[int, Query(ge=0, le=2**62)] = 0) -> Response:
    """Search by user, action, outcome and dates (`GET /audit`'s function), newest pages on
    with `after`; the role filter narrows each page the API returns."""
    until_at = _day(until) + dt.timedelta(days=1) if until else None
    filters = gov.audit_filters(actor=actor or None, action=action or None,
                                outcome=outcome or None, since=_day(since),
                                until=until_at, after=after)
    found = answer(await run_in_threadpool(gov.audit_search, access, filters, PAGE))
    items = [e for e in found["items"] if not role or e["role"] == role]
    for entry in items:
        entry["detail_text"] = json.dumps(entry["detail"], sort_keys=True)
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "after" and v]
    return render(request, "ig/audit.html", access=access, title="Audit log", items=items,
                  next_after=found["next_after"], query=query,
                  outcomes=[("", "Any")] + [(o, o) for o in OUTCOMES],
                  filters={"actor": actor or "", "role": role or "", "action": action or "",
                           "outcome": outcome or "", "since": since or "",
                           "until": until or ""},
                  may_verify=access.allows("audit_log", "verify"),
                  may_export=access.allows("audit_log", "export"))


@router.get("/pages/audit/export", summary="Export the audit log")
@permission("audit_log", "export")
async def audit_export(access: PageAccess,
                       filters: Annotated[dict, Depends(gov.audit_filters)],
                       format: Annotated[Literal["csv", "jsonl"], Query()] = "csv") -> Response:
    """The whole log as CSV or JSON lines (`GET /audit/export`'s function)."""
    return await run_in_threadpool(gov.audit_export, access, filters, format)


@router.get("/pages/audit/verify", summary="Verify the audit chain")
@permission("audit_log", "verify")
async def audit_verify(request: Request, access: PageAccess,
                       head_seq: Annotated[int | None, Query(ge=0, le=2**62)] = None,
                       head_hash: Annotated[str | None, Query(pattern=r"^([0-9a-f]{64})?$")]
                       = None) -> Response:
    """Walk the hash chain (`GET /audit/verify`'s function), against a head kept elsewhere
    when one is given."""
    result = answer(await gov.audit_verify(access, head_seq, head_hash or None))
    return render(request, "ig/verify.html", access=access, title="Audit chain",
                  result=result, head_seq=head_seq, head_hash=head_hash or "")


@router.get("/pages/certificates", summary="Destruction certificates")
@permission("destruction_certificate", "read")
async def certificates(request: Request, access: PageAccess) -> Response:
    """Every certificate, each verified against the audit chain and what it names."""
    items = answer(await run_in_threadpool(gov.certificates, access))["items"]
    engine = access.services.engine
    for item in items:
        item["verified"] = await run_in_threadpool(retention.verify_certificate, engine,
                                                   item["certificate_id"])
    return render(request, "ig/certificates.html", access=access,
                  title="Destruction certificates", items=items,
                  may_run=access.allows("retention", "run"))


@router.post("/pages/retention", summary="Run retention")
@permission("retention", "run")
async def retention_run(request: Request, access: PageAccess) -> Response:
    """Say what retention would destroy (dry run), or destroy it (`POST /retention/run`)."""
    data = await form(request)
    dry = data.get("dry_run") != "no"
    result = answer(await gov.retention_run(RetentionRequest(dry_run=dry), access))
    return render(request, "ig/retention.html", access=access, title="Retention",
                  result=result, dry_run=dry)


@router.get("/pages/optouts", summary="Opt-out report")
@permission("optout_report", "read")
async def optout_report(request: Request, access: PageAccess) -> Response:
    report = answer(await run_in_threadpool(gov.optout_report, access))
    return render(request, "ig/optouts.html", access=access, title="Opt-out report",
                  report=report, report_text=json.dumps(report, indent=2, sort_keys=True))


@router.get("/pages/policy-tables", summary="Policy tables")
@permission("policy_table", "read")
async def policy_tables(request: Request, access: PageAccess) -> Response:
    items = answer(await run_in_threadpool(gov.policy_tables, access))["items"]
    return render(request, "ig/policy_tables.html", access=access, title="Policy tables",
                  items=items)


def _history(access: Any, name: str) -> list[dict[str, Any]]:
    """Changes to one table, from the audit log (when the caller may read it)."""
    if not access.allows("audit_log", "read"):
        return []
    found = []
    for action in ("policy_table.change", "policy_table.reset"):
        filters = gov.audit_filters(actor=None, action=action, outcome=None, since=None,
                                    until=None, after=0)
        page = answer(gov.audit_search(access, filters, 1000))
        found += [e for e in page["items"] if e["resource"] == f"policy/{name}"]
    return sorted(found, key=lambda e: e["seq"], reverse=True)


@router.get("/pages/policy-tables/{name}", summary="A policy table")
@permission("policy_table", "read")
async def policy_table(request: Request, name: gov.TableName, access: PageAccess,
                       changed: Annotated[int | None, Query(ge=0, le=1)] = None) -> Response:
    table = answer(await run_in_threadpool(gov.policy_table, name, access))
    history = await run_in_threadpool(_history, access, name)
    access.answered(1)
    return render(request, "ig/policy_table.html", access=access, title=name, table=table,
                  history=history, changed=changed,
                  may_change=access.allows("policy_table", "update"))


@router.post("/pages/policy-tables/{name}", summary="Change a policy table")
@permission("policy_table", "update")
async def change_policy_table(request: Request, name: gov.TableName, access: PageAccess
                              ) -> Response:
    """Store a new version (`PUT /policy-tables/{name}`: checked, audited with digests), or
    restore the shipped one (`DELETE`)."""
    data = await form(request)
    if data.get("restore") == "yes":
        await run_in_threadpool(gov.reset_policy_table, name, access)
    else:
        try:
            body = PolicyTableUpdate(content=str(data.get("content") or "").replace("\r\n",
                                                                                   "\n"))
        except ValidationError:
            raise Problem(422, "content: the table's text, not empty") from None
        await run_in_threadpool(gov.change_policy_table, name, body, access)
    return see_other(f"/pages/policy-tables/{name}?changed=1")


@router.get("/pages/receipts", summary="Receipts")
@permission("receipt", "read", owner="collection")
async def receipts(request: Request, access: PageAccess,
                   status: Annotated[str | None, Query(pattern=r"^(landed|refused|destroyed)?$")]
                   = None) -> Response:
    """Every upload's receipt (`GET /extracts`): all of them for IG leads."""
    found = answer(await run_in_threadpool(extract_routes.receipts, access, 500,
                                           status or None))
    return render(request, "ig/receipts.html", access=access, title="Receipts",
                  items=found["items"], scope=found["scope"], chosen=status or "")


@router.get("/pages/receipts/{extract_id}", summary="A receipt")
@permission("receipt", "read", owner="collection")
async def receipt(request: Request, extract_id: Annotated[str, Path(
        pattern=extract_routes.EXTRACT_ID)], access: PageAccess) -> Response:
    found = answer(await run_in_threadpool(extract_routes.receipt, extract_id, access))
    return render(request, "council/receipt.html", access=access, title="Receipt",
                  receipt=found, rejections=[], back="/pages/receipts"
                  if found and access.scope == "any" else "/pages/upload")
