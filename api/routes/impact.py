"""Did it work, what is coming, and emergency planning (issue 14 parts 4-6): analysts read the
evaluations and demand forecasts `haven evaluate` and `haven forecast` wrote; planners read
the suppressed counts of vulnerable adults by postcode sector; IG leads and admins declare and
end incidents (an admin's waits for an IG lead's approval); during one, a responder of a
responding organisation it names re-identifies the vulnerable adults of its sectors
(governance/incidents.py decides and audits). docs/impact.md."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.guard import Access, authorise, permission
from api.problems import Problem, responses
from api.routes import ok
from api.schemas import PERSON_KEY
from governance import incidents
from governance.audit import Actor
from governance.reidentify import Refused, reason_category
from pipeline import impact
from pipeline import incidents as pipeline_incidents

router = APIRouter(tags=["impact and emergency planning"])
OutputId = Annotated[str, Path(pattern=r"^evaluation-\d{8}T\d{6}-[0-9a-f]{8}$",
                               examples=["evaluation-20250401T101500-1a2b3c4d"])]
IncidentId = Annotated[str, Path(pattern=r"^INC-\d{8}-[0-9a-f]{8}$",
                                 examples=["INC-20250401-1a2b3c4d"])]


class IncidentRequest(BaseModel):
    """A declaration: why (no identifiers), where (postcode sectors such as `LS1 4`), who
    responds (ODS codes) and until when."""

    reason: str = Field(min_length=1, max_length=500)
    sectors: list[str] = Field(min_length=1, max_length=incidents.MAX_SECTORS)
    organisations: list[Annotated[str, Field(max_length=10)]] = Field(
        min_length=1, max_length=50, examples=[["X26"]])
    expires_at: dt.datetime


class IncidentReidentify(BaseModel):
    """A responder's request: a reason, and optionally the persons wanted (each must be on
    the incident's list); without them, the whole list of the incident's sectors."""

    reason: str = Field(min_length=1, max_length=500)
    person_keys: list[Annotated[str, Field(pattern=PERSON_KEY)]] | None = Field(
        default=None, max_length=5000)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _clean(v) for k, v in row.items()}
            for row in json.loads(frame.to_json(orient="records", date_format="iso"))]


def _actor(access: Access) -> Actor:
    principal = access.principal
    return Actor(principal.user, access.role, principal.org, access.purpose)


BAD_INPUT = frozenset({"reason", "sectors", "organisations", "expiry"})


def _refused(access: Access, exc: Refused, declaring: bool = False) -> Problem:
    """The problem for a refusal: 404 for no such incident, 422 for a declaration's bad
    input (the message names the field), else 403."""
    access.note.detail["refused"] = exc.rule
    status = 404 if exc.rule in ("not_found", "incident") else (
        422 if declaring and exc.rule in BAD_INPUT else 403)
    return Problem(status, str(exc), slug=f"incident-refused-{exc.rule}")


@router.get("/impact/evaluations", summary="Evaluations of cohorts",
            responses=responses(401, 403))
@permission("evaluation", "read")
def evaluations(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Every evaluation `haven evaluate` wrote, newest last: cohort size, matched, balance
    and the plain statement (no person keys)."""
    found = [impact.read_result(f) for f in
             access.services.settings.layout.impact_outputs(impact.EVALUATIONS)]
    access.answered(len(found))
    return ok({"items": found})


@router.get("/impact/evaluations/{evaluation_id}", summary="One evaluation",
            responses=responses(401, 403, 404, 422))
@permission("evaluation", "read")
def evaluation(evaluation_id: OutputId,
               access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """An evaluation's estimates (difference in differences per person with 95% CI, for
    each outcome) and balance table (standardised mean differences before and after)."""
    files = access.services.settings.layout.impact(evaluation_id)
    if not files.result.exists():
        raise Problem(404, "no such evaluation")
    body = {**impact.read_result(files),
            "estimates": _records(pd.read_parquet(files.table("estimates"))),
            "balance": _records(pd.read_parquet(files.table("balance")))}
    access.answered(1, evaluation_id=evaluation_id)
    return ok(body)


@router.get("/impact/forecast", summary="Demand forecast by locality",
            responses=responses(401, 403, 404))
@permission("forecast", "read")
def demand_forecast(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """The latest weekly forecast by series and locality (mean, 80% and 95% prediction
    intervals) with its back-test's error (MAE, MAPE, WAPE, interval coverage)."""
    files = impact.latest(access.services.context, impact.FORECASTS)
    if files is None:
        raise Problem(404, "no forecast yet: run `haven forecast`")
    frame = pd.read_parquet(files.table("forecast"))
    frame[["mean", "lo80", "hi80", "lo95", "hi95"]] = frame[
        ["mean", "lo80", "hi80", "lo95", "hi95"]].round(1)
    body = {**impact.read_result(files), "forecast": _records(frame)}
    access.answered(len(frame))
    return ok(body)


@router.get("/emergency/vulnerable", summary="Vulnerable adults by postcode sector",
            responses=responses(401, 403, 404))
@permission("vulnerable_counts", "read")
def vulnerable_counts(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Adults who are frail, receive home care, depend on oxygen or dialysis (where coded) or
    live alone (where known), by postcode sector: each flag's counts suppressed (1-7 hidden,
    others rounded, more hidden until its total gives none away). Never who."""
    try:
        body = pipeline_incidents.published_counts(access.services.context)
    except pipeline_incidents.NoCounts as exc:
        raise Problem(404, str(exc)) from None
    access.answered(len(body["sectors"]))
    return ok(body)


@router.get("/incidents", summary="Declared incidents", responses=responses(401, 403))
@permission("incident", "read")
def incident_list(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Every incident, newest first, with whether it is in force now."""
    now = dt.datetime.now(dt.UTC)
    found = [i.to_json(now) for i in incidents.listed(access.services.engine)]
    access.answered(len(found))
    return ok({"items": found})


@router.post("/incidents", summary="Declare an incident", status_code=201,
             responses=responses(401, 403, 422))
@permission("incident", "create")
def declare(body: IncidentRequest, access: Annotated[Access, Depends(authorise)]
            ) -> JSONResponse:
    """An IG lead or admin declares an incident: a reason without identifiers, the affected
    postcode sectors, the responding organisations and an expiry, within the limits of
    policies/incidents.json. An IG lead's is in force at once; an admin's is pending until
    an IG lead approves it. Audited (`incident.declare`), refused ones too."""
    access.note.detail["reason_category"] = reason_category(body.reason)
    try:
        found = incidents.declare(access.services.engine, _actor(access), body.reason,
                                  body.sectors, body.organisations, body.expires_at)
    except Refused as exc:
        raise _refused(access, exc, declaring=True) from None
    access.answered(len(found.sectors), incident_id=found.incident_id)
    return ok(found.to_json(dt.datetime.now(dt.UTC)), status=201)


@router.post("/incidents/{incident_id}/approve", summary="Approve an admin's incident",
             responses=responses(401, 403, 404, 422))
@permission("incident", "update")
def approve(incident_id: IncidentId, access: Annotated[Access, Depends(authorise)]
            ) -> JSONResponse:
    """An IG lead other than the declarer approves a pending declaration: from then on it is
    in force. Admins are refused (governance.incidents, which audits every attempt)."""
    try:
        found = incidents.approve(access.services.engine, _actor(access), incident_id)
    except Refused as exc:
        raise _refused(access, exc) from None
    access.answered(1, incident_id=incident_id)
    return ok(found.to_json(dt.datetime.now(dt.UTC)))


@router.post("/incidents/{incident_id}/end", summary="End an incident",
             responses=responses(401, 403, 422))
@permission("incident", "update")
def end(incident_id: IncidentId, access: Annotated[Access, Depends(authorise)]
        ) -> JSONResponse:
    """End an incident in force or pending now: from then on its list is refused."""
    try:
        found = incidents.end(access.services.engine, _actor(access), incident_id)
    except Refused as exc:
        raise _refused(access, exc) from None
    access.answered(1, incident_id=incident_id)
    return ok(found.to_json(dt.datetime.now(dt.UTC)))


@router.post("/incidents/{incident_id}/reidentify",
             summary="Re-identify the vulnerable adults of an incident's sectors",
             responses=responses(401, 403, 404, 422))
@permission("incident_reidentify", "create")
async def reidentify(incident_id: IncidentId, body: IncidentReidentify,
                     access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """For a responder, only while the incident is in force: NHS numbers and flags of the
    vulnerable adults of its sectors (from the latest `haven emergency vulnerable`), with a
    reason. Refused whole outside an incident (or while it awaits approval), after it ends or
    expires, to a responder of an organisation it does not name, or for anyone outside its
    sectors; a person with a whole-person opt-out is held back and counted, never named
    (`governance.incidents`, which audits every attempt, never the numbers)."""
    access.note.detail["reason_category"] = reason_category(body.reason)
    ctx = access.services.context.acting_as(_actor(access))
    try:
        found = await run_in_threadpool(pipeline_incidents.incident_list, ctx,
                                        _actor(access), incident_id, body.reason,
                                        body.person_keys)
    except Refused as exc:
        raise _refused(access, exc) from None
    except pipeline_incidents.NoCounts as exc:
        raise Problem(404, str(exc)) from None
    access.answered(len(found["items"]), incident_id=incident_id,
                    person_keys=[i["person_key"] for i in found["items"]])
    return ok(found)
