"""Risk data: the MDT case-finding list, the analysts' risk list, a person, FHIR, aggregates."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api import present
from api.aggregates import publish, table
from api.guard import Access, authorise, permission
from api.problems import Problem, responses
from api.routes import current_release, example_response, json_response, ok
from api.schemas import ODS, PERSON_KEY, Aggregate, PersonDetail, PersonPage, RunInfo
from api.scored_run import CONDITION_SOURCES, NoRun, Release

router = APIRouter(tags=["risk"])
Tier = Literal["very_high", "high", "moderate", "low"]
AgeBand = Literal["0-17", "18-44", "45-64", "65-74", "75-84", "85+"]
Sex = Literal["1", "2", "9", "0"]
Dimension = Literal["tier", "age_band", "sex", "condition", "condition_count",
                    "tier_change"]
Geography = Literal["area", "locality", "pcn", "practice"]
EMPTY = np.empty(0, dtype=np.int64)

TierQ = Annotated[list[Tier], Query(description="Tiers to keep (repeat for several).",
                                    examples=[["very_high", "high"]])]
AgeQ = Annotated[list[AgeBand], Query(description="Age bands to keep.", examples=[["75-84"]])]
SexQ = Annotated[list[Sex], Query(description="Sex codes to keep (1 male, 2 female, 9 not "
                                              "specified, 0 not known).", examples=[["2"]])]
ConditionQ = Annotated[list[Annotated[str, Query(max_length=64)]],
                       Query(description="Long-term conditions (any of them).",
                             examples=[["COPD"]], max_length=20)]
LimitQ = Annotated[int, Query(ge=1, le=500, description="Page size.", examples=[50])]
OffsetQ = Annotated[int, Query(ge=0, le=100_000_000, description="Rows to skip.",
                               examples=[0])]
PersonKey = Annotated[str, Path(pattern=PERSON_KEY, description="A person key (pseudonym).",
                                examples=["P3f2a9c41d0b7e6a58c13"])]


def _conditions_allowed(access: Access, owner: str, asked: bool) -> None:
    if asked and not access.visible_sources(owner) & CONDITION_SOURCES:
        raise Problem(403, "conditions come from sources this role may not see")


def _page(release: Release, access: Access, selected: np.ndarray, offset: int, limit: int
          ) -> Response:
    """One page of persons, ranked, as JSON: the page's rows are taken column by column and
    shown (`present.people`) per group of persons whose visible sources are the same (one
    practice's, on a case-finding list)."""
    chosen = selected[offset:offset + limit]
    codes = release.practice[chosen]
    items: list[dict] = []
    if len(chosen):
        owners = np.unique(codes)
        visible = {int(code): access.visible_sources(
            release.practices[code] if code >= 0 else "-") for code in owners}
        groups = any(present.needs_reason_groups(v) for v in visible.values())
        columns = release.columns(chosen, reason_groups=groups)
        if len(owners) == 1:
            items = present.people(columns, visible[int(owners[0])], offset + 1)
        else:  # several practices on one page (the analysts' list): shown per practice
            items = [None] * len(chosen)  # type: ignore[list-item]
            for code, shown in visible.items():
                at = np.flatnonzero(codes == code).tolist()
                part = present.people({name: [values[i] for i in at]
                                       for name, values in columns.items()}, shown, 0)
                for i, person in zip(at, part, strict=True):
                    person["rank"] = offset + i + 1
                    items[i] = person
    nxt = offset + limit if offset + limit < len(selected) else None
    access.answered(len(items), run_id=release.run_id)
    return json_response({"run_id": release.run_id, "total": int(len(selected)),
                          "offset": offset, "limit": limit, "next_offset": nxt,
                          "items": items, "provenance": release.provenance})


@router.get("/practices/{ods}/case-finding", summary="Case-finding list of a practice",
            responses={200: example_response(PersonPage), **responses(401, 403, 409, 422)})
@permission("case_finding", "read", owner="path:ods")
async def case_finding(
    ods: Annotated[str, Path(pattern=ODS, description="The practice's ODS code.",
                             examples=["B86001"])],
    access: Annotated[Access, Depends(authorise)],
    tier: TierQ = [],  # noqa: B006 - FastAPI copies defaults
    age_band: AgeQ = [],  # noqa: B006
    sex: SexQ = [],  # noqa: B006
    condition: ConditionQ = [],  # noqa: B006
    limit: LimitQ = 50, offset: OffsetQ = 0,
) -> JSONResponse:
    """The practice's scored patients, highest risk first: tier, reasons and change since the
    last run, pseudonymised (re-identify with `POST /reidentify`). MDT clinicians of that
    practice only.

    Runs on the event loop: one practice's list is a slice of a few thousand rows, cheaper to
    filter than a hop to a worker thread."""
    _conditions_allowed(access, ods, bool(condition))
    release = access.services.releases.fresh(access.purpose) or await run_in_threadpool(
        current_release, access)
    selected = release.select(release.practice_rows.get(ods, EMPTY), tiers=tier,
                              age_bands=age_band, sexes=sex, conditions=condition,
                              practice=ods)
    return _page(release, access, selected, offset, limit)


@router.get("/risk/persons", summary="Pseudonymised risk list",
            responses={200: example_response(PersonPage), **responses(401, 403, 409, 422)})
@permission("risk_list", "read")
def risk_list(
    access: Annotated[Access, Depends(authorise)],
    practice: Annotated[list[Annotated[str, Query(pattern=ODS)]],
                        Query(description="Practices to keep.", examples=[["B86001"]],
                              max_length=500)] = [],  # noqa: B006
    tier: TierQ = [],  # noqa: B006
    age_band: AgeQ = [],  # noqa: B006
    sex: SexQ = [],  # noqa: B006
    condition: ConditionQ = [],  # noqa: B006
    limit: LimitQ = 50, offset: OffsetQ = 0,
) -> JSONResponse:
    """Record-level risk for commissioning: person keys only, highest risk first."""
    _conditions_allowed(access, "-", bool(condition))
    release = current_release(access)
    rows = None
    if practice:
        found = [release.practice_rows[p] for p in dict.fromkeys(practice)
                 if p in release.practice_rows]
        rows = np.sort(np.concatenate(found)) if found else EMPTY
    selected = release.select(rows, tiers=tier, age_bands=age_band, sexes=sex,
                              conditions=condition)
    return _page(release, access, selected, offset, limit)


def _person_row(access: Access) -> tuple[Release, dict]:
    release, row = access.context.get("release"), access.context.get("row")
    if release is None:
        current_release(access)  # 409 when there is no run
    if row is None:
        raise Problem(404, "no such person in the current run")
    return release, release.rows(np.array([row]))[0]


@router.get("/persons/{person_key}", summary="One person's risk",
            responses={200: example_response(PersonDetail), **responses(401, 403, 404, 409,
                                                                        422)})
@permission("person", "read", owner="person")
def person_detail(person_key: PersonKey,
                  access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Tier, probability, reasons, change and the sources visible to the caller."""
    release, row = _person_row(access)
    visible = access.visible_sources(row.get("gp_practice_code") or "-")
    access.answered(1, person_key=person_key)
    return ok({**present.person(row, visible), "run_id": release.run_id})


FHIR_EXAMPLE = {
    "resourceType": "RiskAssessment", "id": "score-2025-04-01-jkbmcoepflen-P3f2a9c41d0b7e6a58c13",
    "status": "final", "subject": {"identifier": {"system": present.FHIR_PERSON_KEY_SYSTEM,
                                                  "value": "P3f2a9c41d0b7e6a58c13"}},
    "occurrenceDateTime": "2025-04-01", "method": {"text": "Haven risk model boosting 1.0"},
    "prediction": [{"outcome": {"text": present.OUTCOME}, "probabilityDecimal": 0.4127,
                    "qualitativeRisk": {"coding": [{"system": present.RISK_PROBABILITY,
                                                    "code": "high"}], "text": "very high"},
                    "whenRange": {"high": {"value": 12, "unit": "months",
                                           "system": "http://unitsofmeasure.org",
                                           "code": "mo"}}}],
    "note": [{"text": "Reason: 3 emergency admissions in 12 months"}],
}


@router.get("/persons/{person_key}/fhir", summary="FHIR R4 RiskAssessment",
            response_class=JSONResponse,
            responses={200: {"description": "A FHIR R4 RiskAssessment resource.",
                             "content": {"application/fhir+json": {
                                 "schema": {"type": "object",
                                            "required": ["resourceType", "status",
                                                         "subject"]},
                                 "example": FHIR_EXAMPLE}}},
                       **responses(401, 403, 404, 409, 422)})
@permission("fhir_risk_assessment", "read", owner="person")
def person_fhir(person_key: PersonKey,
                access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """The person's risk as a FHIR R4 `RiskAssessment` (subject: the person key)."""
    release, row = _person_row(access)
    visible = access.visible_sources(row.get("gp_practice_code") or "-")
    access.answered(1, person_key=person_key)
    return JSONResponse(present.risk_assessment(row, visible, release),
                        media_type="application/fhir+json")


AGGREGATE_PARAMETERS = frozenset({"by", "geography"})


def scored_release(access: Access) -> Release:
    """The run answering the caller's purpose as it was scored (published tables are made
    from it, `ReleaseStore.as_scored`), or 409 when no score run may answer it."""
    try:
        return access.services.releases.as_scored(access.purpose)
    except NoRun as exc:
        raise Problem(409, str(exc), slug="no-score-run") from None


@router.get("/aggregates", summary="Published tables, with small-number suppression",
            responses={200: example_response(Aggregate), **responses(401, 403, 409, 422)})
@permission("aggregate", "read")
async def aggregates(
    request: Request,
    access: Annotated[Access, Depends(authorise)],
    by: Annotated[Dimension, Query(description="The dimension counted: `tier`, `age_band`, "
                                               "`sex`, `condition` (long-term condition; a "
                                               "person counts under each of theirs), "
                                               "`condition_count` (number of long-term "
                                               "conditions: 0, 1, 2, 3, 4+) or `tier_change` "
                                               "(since the last run: up, same, down, new, "
                                               "unknown).", examples=["tier"])],
    geography: Annotated[Geography, Query(description="Whose counts: each practice, PCN or "
                                                      "locality, or the whole area.",
                                          examples=["pcn"])] = "area",
) -> Response:
    """Persons by one dimension on one geography: the anonymous tier, safe to publish. Only
    these fixed tables are answered (no practice sets, no filters: answers that could be
    differenced against each other are what let a suppressed count be solved). Counts of 1-7
    are suppressed, others rounded to the nearest 5, and further figures suppressed until none
    hidden can be solved from all the tables together (`api.aggregates`).

    `by` and the categories of its cells:
    - `tier`: very_high, high, moderate, low, unknown.
    - `age_band`: 0-17, 18-44, 45-64, 65-74, 75-84, 85+, unknown.
    - `sex`: 1 male, 2 female, 9 not specified, 0 not known, unknown.
    - `condition`: each long-term condition of the run; a person counts once under each of
      their conditions, so the totals count mentions, not persons. Refused (403) to a role that
      may not see the sources conditions come from.
    - `condition_count`: persons by how many long-term conditions they have, 0, 1, 2, 3 and
      4+ (up to the run's number of conditions); each person once, totals are persons. Refused
      as `condition` is.
    - `tier_change`: persons by their tier against the last run's: up (a higher tier), same,
      down, new (no tier in the last run, or no last run), unknown (no tier in this one).

    Every table (each category's cells sum to the unit's persons, or mentions for
    `condition`) is part of the one publication: no suppressed figure of one table can be
    worked out from the others.

    Tables are made from the run as it was scored (the opt-outs in force when it was made
    applied then, and recorded with it): an opt-out arriving later takes effect here at the
    next run, never between, so two answers read before and after it are the same and cannot
    single out whoever opted out. Record-level answers honour it at once.

    The whole publication is computed once per run, rule and geography table, in a worker
    thread (its exact check can take minutes on a small population with many hidden cells,
    and on the event loop it would stop every other request, health included); each answer is
    kept as the JSON sent and served from the event loop after that."""
    asked = [name for name, _ in request.query_params.multi_items()]
    if set(asked) - AGGREGATE_PARAMETERS or asked.count("by") > 1 \
            or asked.count("geography") > 1:
        raise Problem(422, "only published tables are answered: one `by` and one "
                           "`geography`, no filters (record-level lists take filters)")
    _conditions_allowed(access, "-", by in ("condition", "condition_count"))
    services = access.services
    release = services.releases.fresh_as_scored(access.purpose) or await run_in_threadpool(
        scored_release, access)
    rule = services.fresh_suppression_rule() or await run_in_threadpool(
        services.suppression_rule)
    places = services.releases.geography()

    def answer() -> tuple[int, bytes]:
        publication = release.cached(("publication", rule, places),
                                     lambda: publish(release, places, rule))
        shown = table(publication, geography, by)
        return len(shown["cells"]), orjson.dumps({"run_id": release.run_id, **shown})

    key = ("aggregate", by, geography, rule, places)
    cells, body = release.cached_now(key) or await run_in_threadpool(release.cached, key,
                                                                     answer)
    access.answered(cells, by=[by], geography=geography)
    return Response(body, media_type="application/json")


@router.get("/runs/current", summary="The score run being served",
            responses={200: example_response(RunInfo), **responses(401, 403, 409)})
@permission("run", "read")
def run_info(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Which run answers the risk endpoints: its date, model and size (persons scored).

    Nothing here moves when an opt-out arrives after the run: how many it withholds since,
    or the size less them, would show a single withdrawal, and beside a list read before it,
    whose. The IG lead's opt-out report counts them (`GET /optouts/report`)."""
    release = current_release(access)
    return ok({"run_id": release.run_id, "at": release.at, "model": release.model,
               "model_version": release.model_version, "persons": release.scored,
               "provenance": release.provenance})
