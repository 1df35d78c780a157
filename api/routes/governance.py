"""Oversight for IG leads, with no patient-level data: the audit log (search, export, verify),
destruction certificates, retention, opt-out counts and the policy tables."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import String, cast, func, select
from starlette.concurrency import run_in_threadpool

from api.exports import neutralise
from api.guard import Access, authorise, permission
from api.problems import Problem, responses
from api.routes import example_response, ok
from api.schemas import (
    AuditPage,
    Certificate,
    CertificateList,
    OptoutReport,
    PolicyTable,
    PolicyTableList,
    PolicyTableUpdate,
    RetentionAnswer,
    RetentionRequest,
    Verification,
)
from api.scored_run import NoRun
from governance import audit, optouts, retention
from governance.audit import Actor
from governance.policy_tables import policy_names, policy_text, reset_policy, set_policy
from governance.schema import audit_log, policy_overrides
from pipeline import govern

router = APIRouter(tags=["governance"])
AUDIT_COLUMNS = ("seq", "at", "actor", "role", "org", "purpose", "action", "resource",
                 "n_records", "outcome", "detail")
TABLE_NAME = r"^[a-z0-9_]{1,60}\.(csv|json)$"
Text = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:@/-]*$")]


UNREADABLE = {"unreadable": "this entry was altered in the database; `haven audit verify` "
                            "names it"}


def _detail(text: str | None) -> Any:
    """An entry's detail as stored: JSON text read here, so an entry an insider corrupted is
    shown as altered rather than failing the whole search."""
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return UNREADABLE
    return value if value is None or isinstance(value, dict) else UNREADABLE


def _entry(row: Any) -> dict[str, Any]:
    data = {c: row[c] for c in AUDIT_COLUMNS}
    at = row["at"]
    data["at"] = at.isoformat() if isinstance(at, dt.datetime) else str(at)
    data["detail"] = _detail(row["detail"])
    return data


# Every column as stored, the detail as text (parsed by `_detail`, not by the driver).
_AUDIT_COLUMNS = [audit_log.c[c] for c in AUDIT_COLUMNS if c != "detail"] + [
    cast(audit_log.c.detail, String).label("detail")]


def _audit_query(actor: str | None, action: str | None, outcome: str | None,
                 since: dt.datetime | None, until: dt.datetime | None, after: int) -> Any:
    query = select(*_AUDIT_COLUMNS).where(audit_log.c.seq > after).order_by(audit_log.c.seq)
    for column, value in ((audit_log.c.actor, actor), (audit_log.c.action, action),
                          (audit_log.c.outcome, outcome)):
        if value:
            query = query.where(column == value)
    if since:
        query = query.where(audit_log.c.at >= since)
    if until:
        query = query.where(audit_log.c.at < until)
    return query


def audit_filters(actor: Text = None, action: Text = None, outcome: Text = None,
                  since: Annotated[dt.datetime | None, Query(examples=["2025-04-01T00:00:00Z"])]
                  = None,
                  until: Annotated[dt.datetime | None, Query()] = None,
                  after: Annotated[int, Query(ge=0, le=2**62, description="Entries after this "
                                              "sequence number.")] = 0) -> dict[str, Any]:
    return {"actor": actor, "action": action, "outcome": outcome, "since": since,
            "until": until, "after": after}


@router.get("/audit", summary="Search the audit log",
            responses={200: example_response(AuditPage), **responses(401, 403, 422)})
@permission("audit_log", "read")
def audit_search(access: Annotated[Access, Depends(authorise)],
                 filters: Annotated[dict, Depends(audit_filters)],
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    """Entries in order; page with `after` = the last `seq` seen (`next_after`)."""
    with access.services.engine.connect() as connection:
        rows = connection.execute(_audit_query(**filters).limit(limit)).mappings().all()
    items = [_entry(r) for r in rows]
    access.answered(len(items))
    return ok({"items": items, "next_after": items[-1]["seq"] if len(items) == limit else None})


@router.get("/audit/export", summary="Export the audit log",
            responses={200: {"description": "CSV or JSON lines.", "content": {
                "text/csv": {"schema": {"type": "string"},
                             "example": "seq,at,actor,role,org,purpose,action,resource,"
                                        "n_records,outcome,detail\n"},
                "application/x-ndjson": {"schema": {"type": "string"}}}},
                **responses(401, 403, 422)})
@permission("audit_log", "export")
def audit_export(access: Annotated[Access, Depends(authorise)],
                 filters: Annotated[dict, Depends(audit_filters)],
                 format: Annotated[Literal["csv", "jsonl"], Query()] = "csv"
                 ) -> StreamingResponse:
    """Every matching entry, streamed; CSV cells that could start a formula are neutralised."""
    engine = access.services.engine
    with engine.connect() as connection:
        total = connection.scalar(select(func.count()).select_from(
            _audit_query(**filters).subquery()))
    access.answered(int(total or 0), format=format)

    def lines() -> Iterator[str]:
        after = filters["after"]
        if format == "csv":
            buffer = io.StringIO()
            csv.writer(buffer).writerow(AUDIT_COLUMNS)
            yield buffer.getvalue()
        while True:
            with engine.connect() as connection:
                rows = connection.execute(_audit_query(**{**filters, "after": after})
                                          .limit(5000)).mappings().all()
            if not rows:
                return
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            for row in rows:
                entry = _entry(row)
                if format == "csv":
                    entry["detail"] = json.dumps(entry["detail"], sort_keys=True)
                    writer.writerow([neutralise(entry[c]) for c in AUDIT_COLUMNS])
                else:
                    buffer.write(json.dumps(entry, sort_keys=True) + "\n")
            after = rows[-1]["seq"]
            yield buffer.getvalue()

    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return StreamingResponse(lines(), media_type=media, headers={
        "Content-Disposition": f'attachment; filename="audit.{format}"'})


@router.get("/audit/verify", summary="Verify the audit chain",
            responses={200: example_response(Verification), **responses(401, 403, 422)})
@permission("audit_log", "verify")
async def audit_verify(access: Annotated[Access, Depends(authorise)],
                       head_seq: Annotated[int | None, Query(ge=0, le=2**62)] = None,
                       head_hash: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")]
                       = None) -> JSONResponse:
    """Walk the hash chain and name the first entry modified, deleted, inserted or reordered;
    give a head exported earlier (`head_seq`, `head_hash`) to catch a chain cut short."""
    expected = {"seq": head_seq, "hash": head_hash} if head_seq is not None and head_hash \
        else None
    result = await run_in_threadpool(audit.verify, access.services.engine, expected)
    access.answered(result.entries, ok=result.ok)
    finding = {"seq": result.finding.seq, "problem": result.finding.problem} \
        if result.finding else None
    return ok({"ok": result.ok, "entries": result.entries, "head": result.head,
               "finding": finding, "details": result.details})


def _certificate(row: dict[str, Any]) -> dict[str, Any]:
    at = row["at"]
    return {"certificate_id": row["certificate_id"],
            "at": at.isoformat() if hasattr(at, "isoformat") else str(at),
            "actor": row["actor"], "schedule": row["schedule"],
            "extract_ids": list(row["extract_ids"] or []), "counts": row["counts"] or {},
            "manifest_digest": row["manifest_digest"], "audit_seq": row["audit_seq"]}


@router.get("/destruction-certificates", summary="Destruction certificates",
            responses={200: example_response(CertificateList), **responses(401, 403)})
@permission("destruction_certificate", "read")
def certificates(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Every certificate of destruction, newest first."""
    items = [_certificate(r) for r in retention.list_certificates(access.services.engine)]
    access.answered(len(items))
    return ok({"items": items})


@router.get("/destruction-certificates/{certificate_id}", summary="One certificate",
            responses={200: example_response(Certificate), **responses(401, 403, 404, 422)})
@permission("destruction_certificate", "read")
def certificate(certificate_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,40}$",
                                                    examples=["dc-20250402-1a2b"])],
                access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    found = [r for r in retention.list_certificates(access.services.engine)
             if r["certificate_id"] == certificate_id]
    if not found:
        raise Problem(404, "no such certificate")
    access.answered(1)
    return ok(_certificate(found[0]))


@router.post("/retention/run", summary="Run retention",
             responses={200: example_response(RetentionAnswer), **responses(401, 403, 422)})
@permission("retention", "run")
async def retention_run(body: RetentionRequest,
                        access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Destroy every extract past its retention date, with the person index rows, runs and
    exports made from it, and issue a destruction certificate (`governance.retention.run`, as
    `haven retention run`); with `dry_run`, only say what would go."""

    services = access.services
    principal = access.principal
    ctx = services.context.acting_as(
        Actor(principal.user, access.role, principal.org, access.purpose))
    try:
        certificate = await run_in_threadpool(govern.destroy_expired, ctx, None, body.dry_run)
    except retention.DestructionIncomplete as exc:
        left = {k: v for k, v in exc.certificate.remaining.items() if v}
        raise Problem(500, "destruction not certified: something of the extracts is still "
                      "present; they stay due and the next run resumes",
                      slug="destruction-incomplete", remaining=left) from None
    finally:
        if not body.dry_run:  # runs may have been voided: none is served from memory
            services.releases.forget()
    result = certificate.to_json()
    access.answered(len(result["extract_ids"]), dry_run=body.dry_run,
                    certificate_id=result["certificate_id"])
    return ok({"dry_run": body.dry_run, "due": [
        {"extract_id": e, "source": result["sources"].get(e)} for e in result["extract_ids"]],
        "result": {k: result[k] for k in ("certificate_id", "counts", "manifest_digest",
                                          "remaining")}})


@router.get("/optouts/report", summary="Opt-out counts",
            responses={200: example_response(OptoutReport), **responses(401, 403)})
@permission("optout_report", "read")
def optout_report(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Persons with an opt-out in force, by type and by the purpose it restricts (suppressed,
    `governance.optouts.report`), and how many each purpose's current run withholds because
    their opt-out arrived after it was scored: counts, never persons."""
    services = access.services
    report = optouts.report(services.engine, dt.datetime.now(dt.UTC).date(),
                            services.suppression_rule())
    withheld = {}
    for purpose in ("commissioning", "case_finding"):
        try:
            release = services.releases.current(purpose)
        except NoRun:
            continue
        withheld[purpose] = {"run_id": release.run_id, "persons": len(release.withheld)}
    access.answered(0)
    return ok({**report, "withheld_from_current_runs": withheld})


@router.get("/policy-tables", summary="Policy tables",
            responses={200: example_response(PolicyTableList), **responses(401, 403)})
@permission("policy_table", "read")
def policy_tables(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Retention, suppression, opt-out purposes and the other tables Haven runs by."""
    with access.services.engine.connect() as connection:
        overridden = set(connection.scalars(select(policy_overrides.c.name)))
    items = [{"name": n, "overridden": n in overridden} for n in policy_names()]
    access.answered(len(items))
    return ok({"items": items})


TableName = Annotated[str, Path(pattern=TABLE_NAME, examples=["retention.csv"])]
# Tables a role other than the IG lead owns, changed only through their own route (its own
# permission): the unit costs are the super users' (issue #14), not the governance table set's.
OWNED_ELSEWHERE = {"unit_costs.csv": "PUT /analyses/unit-costs/table (super users)"}


def _changeable_here(name: str) -> None:
    """404 for an unknown table; 403 naming the route for a table another role owns."""
    if name not in policy_names():
        raise Problem(404, "no such policy table")
    if name in OWNED_ELSEWHERE:
        raise Problem(403, f"{name} is changed through {OWNED_ELSEWHERE[name]}")


def _table(access: Access, name: str) -> dict[str, Any]:
    engine = access.services.engine
    with engine.connect() as connection:
        overridden = connection.scalar(select(func.count()).select_from(policy_overrides)
                                       .where(policy_overrides.c.name == name))
    return {"name": name, "overridden": bool(overridden), "content": policy_text(name, engine)}


@router.get("/policy-tables/{name}", summary="One policy table",
            responses={200: example_response(PolicyTable), **responses(401, 403, 404, 422)})
@permission("policy_table", "read")
def policy_table(name: TableName, access: Annotated[Access, Depends(authorise)]
                 ) -> JSONResponse:
    """The table in force: an IG lead's version, else the shipped one."""
    if name not in policy_names():
        raise Problem(404, "no such policy table")
    access.answered(1)
    return ok(_table(access, name))


@router.put("/policy-tables/{name}", summary="Change a policy table",
            responses={200: example_response(PolicyTable), **responses(401, 403, 404, 422)})
@permission("policy_table", "update")
def change_policy_table(name: TableName, body: PolicyTableUpdate,
                        access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Store a new version of a table (it takes precedence over the shipped one), checked and
    audited with digests of old and new content (`governance.policy_tables.set_policy`).
    A table another role owns (the unit costs) is refused here: see OWNED_ELSEWHERE."""
    _changeable_here(name)
    principal = access.principal
    try:
        set_policy(access.services.engine, name, body.content,
                   Actor(principal.user, access.role, principal.org, access.purpose))
    except ValueError as exc:
        raise Problem(422, f"content: {exc}") from None
    access.services.forget_suppression_rule()
    access.answered(1)
    return ok(_table(access, name))


@router.delete("/policy-tables/{name}", summary="Restore a shipped policy table",
               responses={200: example_response(PolicyTable), **responses(401, 403, 404,
                                                                          422)})
@permission("policy_table", "update")
def reset_policy_table(name: TableName, access: Annotated[Access, Depends(authorise)]
                       ) -> JSONResponse:
    """Drop the IG lead's version so the shipped table applies again (audited); not for a
    table another role owns."""
    _changeable_here(name)
    principal = access.principal
    reset_policy(access.services.engine, name,
                 Actor(principal.user, access.role, principal.org, access.purpose))
    access.services.forget_suppression_rule()
    access.answered(1)
    return ok(_table(access, name))
