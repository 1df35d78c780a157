"""MDT clinicians' pages (own practice only): the case-finding list, a person, their FHIR
view, re-identification with a reason, and marking persons reviewed at the MDT meeting.

Each page asks Casbin the API's own question (`case_finding.read`, `person.read`,
`fhir_risk_assessment.read`, `reidentify.create` for the caller's practice) and calls the API's
route functions or helpers (`api.routes.risk`, `api.routes.reidentify`) for the answer, so the
list, the sources and reasons shown, and re-identification's rules are the API's.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.guard import permission
from api.pages.common import PageAccess, answer, form, listed, page_router, see_other
from api.pages.render import render
from api.problems import Problem
from api.routes import current_release, risk
from api.routes import reidentify as reidentify_routes
from api.schemas import ReidentifyRequest
from api.scored_run import CONDITION_SOURCES, TIERS
from governance.audit import Actor
from pipeline import mdt_reviews, timeline

router = page_router()
PAGE_SIZE = 25
REASONS = {"mdt_review": "Review at the multidisciplinary team meeting",
           "care_planning": "Care planning",
           "clinical_follow_up": "Clinical follow-up",
           "safeguarding": "Safeguarding"}
SORTS = {"risk": "Highest risk first", "change": "Largest rise in risk first",
         "new": "Not yet reviewed first"}
Sort = Literal["risk", "change", "new"]
Show = Literal["all", "new"]


async def _release(access: Any) -> Any:
    return access.services.releases.fresh(access.purpose) or await run_in_threadpool(
        current_release, access)


def _rows_of(release: Any, keys: Any) -> np.ndarray:
    """Rows of the run's persons among `keys` (what `Release.position` gives one at a time,
    for a few thousand keys at once)."""
    if not keys:
        return np.empty(0, dtype=np.int64)
    wanted = np.array(list(keys), dtype=release.keys_sorted.dtype)
    at = np.minimum(np.searchsorted(release.keys_sorted, wanted),
                    max(len(release.keys_sorted) - 1, 0))
    if not len(release.keys_sorted):
        return np.empty(0, dtype=np.int64)
    rows = release.keys_order[at[release.keys_sorted[at] == wanted]].astype(np.int64)
    return rows if release.live is None else rows[release.live[rows]]


def _order(release: Any, selected: np.ndarray, sort: str, reviewed_rows: np.ndarray
           ) -> np.ndarray:
    """The practice's selected rows in the order asked for (rank order is the default)."""
    if sort == "change" and len(selected):
        change = release.change[selected]
        change = np.where(np.isnan(change), -np.inf, change)
        return selected[np.argsort(-change, kind="stable")]
    if sort == "new" and len(selected):
        return selected[np.argsort(np.isin(selected, reviewed_rows), kind="stable")]
    return selected


@router.get("/pages/case-finding", summary="Case-finding list")
@permission("case_finding", "read", owner="caller")
async def case_finding(
    request: Request, access: PageAccess,
    tier: risk.TierQ = [],  # noqa: B006 - FastAPI copies defaults
    age_band: risk.AgeQ = [],  # noqa: B006
    sex: risk.SexQ = [],  # noqa: B006
    condition: risk.ConditionQ = [],  # noqa: B006
    sort: Annotated[Sort, Query()] = "risk",
    show: Annotated[Show, Query()] = "all",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    reviewed: Annotated[int | None, Query(ge=0, le=500)] = None,
) -> Response:
    """The caller's practice's list for the next MDT meeting: the API's case-finding list
    (`api.routes.risk`: its selection and its `_page`), with who was reviewed when."""
    ods = access.principal.org
    risk._conditions_allowed(access, ods, bool(condition))
    release = await _release(access)
    rows = release.practice_rows.get(ods, risk.EMPTY)
    selected = release.select(rows, tiers=tier, age_bands=age_band, sexes=sex,
                              conditions=condition, practice=ods)
    marks = await run_in_threadpool(mdt_reviews.latest, access.services.settings, ods)
    reviewed_rows = _rows_of(release, marks)
    if show == "new":
        selected = selected[~np.isin(selected, reviewed_rows)]
    ordered = _order(release, selected, sort, reviewed_rows)
    pages = max(1, -(-len(ordered) // PAGE_SIZE))
    page = min(page, pages)
    body = answer(risk._page(release, access, ordered, (page - 1) * PAGE_SIZE, PAGE_SIZE))
    for item in body["items"]:
        item["reviewed_on"] = marks.get(item["person_key"])
    visible = access.visible_sources(ods)
    conditions = release.conditions if visible & CONDITION_SOURCES else []
    query = [(k, v) for k, v in request.query_params.multi_items()
             if k not in ("page", "reviewed")]
    return render(
        request, "mdt/case_finding.html", access=access, title="Case-finding list",
        practice=ods, run=release, items=body["items"], total=body["total"], page=page,
        pages=pages, page_size=PAGE_SIZE,
        filters={"tier": tier, "age_band": age_band, "sex": sex, "condition": condition,
                 "sort": sort, "show": show},
        tiers=TIERS, age_bands=list(risk.AgeBand.__args__), sexes=list(risk.Sex.__args__),
        conditions=conditions, sorts=SORTS, reasons=REASONS, query=query,
        reviewed_now=reviewed, today=dt.date.today().isoformat(),
        may_reidentify=access.allows("reidentify", "create", owner=ods),
        may_review=access.allows("mdt_review", "create", owner=ods))


@router.get("/pages/persons/{person_key}", summary="A person")
@permission("person", "read", owner="person")
async def person(request: Request, person_key: risk.PersonKey, access: PageAccess
                 ) -> Response:
    """A person's risk, reasons and conditions (`api.routes.risk.person_detail`), their
    activity by month in the sources the caller may see (`pipeline.timeline`)."""
    shown = answer(await run_in_threadpool(risk.person_detail, person_key, access))
    release = access.context["release"]
    practice = shown.get("practice") or "-"
    visible = access.visible_sources(practice)
    principal = access.principal
    ctx = access.services.context.acting_as(
        Actor(principal.user, access.role, principal.org, access.purpose))
    until = dt.date.fromisoformat(release.at) if release.at else None
    activity = await run_in_threadpool(timeline.activity_by_month, ctx, person_key, visible,
                                       access.purpose, until)
    counts = activity["counts"]
    activity["month_totals"] = [sum(series[i] for series in counts.values())  # type: ignore[union-attr]
                                for i in range(len(activity["months"]))]  # type: ignore[arg-type]
    marks = await run_in_threadpool(mdt_reviews.latest, access.services.settings, practice) \
        if access.purpose == "case_finding" else {}
    return render(
        request, "mdt/person.html", access=access, title="Person", person=shown,
        run=release, activity=activity, reviewed_on=marks.get(person_key),
        reasons=REASONS, today=dt.date.today().isoformat(),
        may_fhir=access.allows("fhir_risk_assessment", "read", owner=practice),
        may_reidentify=access.allows("reidentify", "create", owner=practice),
        may_review=access.allows("mdt_review", "create", owner=practice),
        back="/pages/case-finding" if access.allows("case_finding", "read", owner=practice)
        else None)


@router.get("/pages/persons/{person_key}/fhir", summary="FHIR view")
@permission("fhir_risk_assessment", "read", owner="person")
async def person_fhir(request: Request, person_key: risk.PersonKey, access: PageAccess
                      ) -> Response:
    """The person's FHIR R4 RiskAssessment, as `GET /persons/{key}/fhir` answers it."""
    resource = answer(await run_in_threadpool(risk.person_fhir, person_key, access))
    return render(request, "mdt/fhir.html", access=access, title="FHIR RiskAssessment",
                  person_key=person_key, resource=json.dumps(resource, indent=2))


@router.post("/pages/reidentify", summary="Re-identify")
@permission("reidentify", "create", owner="caller")
async def reidentify(request: Request, access: PageAccess) -> Response:
    """NHS numbers of the chosen persons, by `POST /reidentify`'s own function: Casbin per
    person, then governance's rules (purpose, reason, opt-outs), every attempt audited. The
    answer is shown on this response only (not cached, never stored by the page)."""
    data = await form(request)
    keys = listed(data.get("person_key"))
    if not keys:
        raise Problem(422, "choose at least one person to re-identify")
    try:
        body = ReidentifyRequest(person_keys=keys, reason=data.get("reason") or "")
    except ValidationError:
        raise Problem(422, "choose a reason from the list, and at most 100 persons, by "
                           "their person keys") from None
    found = answer(await reidentify_routes.reidentify(body, access))
    release = await _release(access)
    details = {}
    for row in release.rows(np.array([p for p in (release.position(k) for k in keys)
                                      if p is not None], dtype=np.int64)):
        details[row["person_key"]] = row
    items = [{**item, "tier": (details.get(item["person_key"]) or {}).get("tier"),
              "nhs_display": _spaced(item["nhs_number"])} for item in found["items"]]
    return render(request, "mdt/reidentified.html", access=access,
                  title="NHS numbers", items=items, reason=REASONS.get(body.reason),
                  headers={"Cache-Control": "no-store, max-age=0", "Pragma": "no-cache",
                           "Expires": "0"})


def _spaced(number: str) -> str:
    digits = "".join(c for c in number if c.isdigit())
    return f"{digits[:3]} {digits[3:6]} {digits[6:]}" if len(digits) == 10 else number


@router.post("/pages/reviews", summary="Mark reviewed at MDT")
@permission("mdt_review", "create", owner="caller")
async def mark_reviewed(request: Request, access: PageAccess) -> Response:
    """Mark persons of the caller's practice reviewed at the MDT meeting on a date; each
    person is checked with Casbin for the practice they belong to (as re-identification is)."""
    data = await form(request)
    keys = list(dict.fromkeys(listed(data.get("person_key"))))
    if not keys:
        raise Problem(422, "choose at least one person to mark as reviewed")
    if len(keys) > 500:
        raise Problem(422, "at most 500 persons at a time")
    try:
        on = dt.date.fromisoformat(str(data.get("reviewed_on") or ""))
    except ValueError:
        raise Problem(422, "reviewed_on: the meeting's date, as YYYY-MM-DD") from None
    if on > dt.date.today() or on < dt.date.today() - dt.timedelta(days=366):
        raise Problem(422, "reviewed_on: a meeting within the last year, not in the future")
    release = await _release(access)
    for key in keys:
        access.require("mdt_review", "create", owner=release.owner_of(key),
                       detail="person_key: not all are listed for your practice")
    principal = access.principal
    ctx = access.services.context.acting_as(
        Actor(principal.user, access.role, principal.org, access.purpose))
    marked = await run_in_threadpool(mdt_reviews.mark, ctx, principal.org, keys, on)
    access.answered(marked, reviewed_on=on.isoformat())
    back = str(data.get("back") or "")
    if back.startswith("/pages/persons/") and back[15:].isalnum():
        return see_other(back)
    return see_other(f"/pages/case-finding?reviewed={marked}")
