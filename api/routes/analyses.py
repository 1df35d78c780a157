"""Journeys after discharge, cost per person and population segments (issue #14 parts 1-3):
the published tables to the roles whose purpose covers them (commissioning: analysts and super
users), the pseudonymised records to analysts only, and the unit cost table, which super users
may change (checked, audited). Answers come from the newest run of each analysis
(pipeline.analyses); docs/analyses.md."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.guard import Access, authorise, permission
from api.problems import Problem, responses
from api.routes import ok
from governance.audit import Actor
from governance.policy_tables import policy_text, set_policy
from pipeline import analyses

router = APIRouter(tags=["journeys, costs and segments"])
Kind = Annotated[Literal["journeys", "costs", "segments"],
                 Path(description="The analysis.", examples=["journeys"])]
TableName = Annotated[str, Path(pattern=r"^[a-z0-9_.]{1,64}$", examples=["flow_91d"])]


# What of a run's summary the published answer shows: when and what it covered, never its
# figures. The summary also holds exact counts (persons, discharges per pathway, persons per
# segment), exact spend and ratios of true counts (ASCOF 2B): beside the published tables,
# rounded to 5, they would give the true counts. Those figures are in the tables, protected.
DESCRIBED = frozenset({"at", "start", "end", "through", "year", "kind", "purpose",
                       "tiers_from"})


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _table(frame: pd.DataFrame) -> dict[str, Any]:
    """A published table as rows of cells (counts as published: a number or the symbol)."""
    def cell(value: Any) -> Any:
        text = str(value)
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text
    return {"dimension": frame.index.name, "columns": [str(c) for c in frame.columns],
            "rows": [{"row": str(r), "cells": [cell(v) for v in values]}
                     for r, values in zip(frame.index, frame.to_numpy().tolist(), strict=True)]}


def _run(kind: str, access: Access) -> Any:
    try:
        return analyses.published(access.services.context, kind)
    except analyses.NoAnalysisRun as exc:
        raise Problem(409, str(exc), slug="no-analysis-run") from None


def _sankey(table: pd.DataFrame) -> dict[str, Any]:
    """Discharge -> pathway -> outcome at 91 days, as nodes and links (values as published)."""
    links = []
    for pathway in table.index:
        if pathway == "total":
            continue
        links.append({"source": "discharge", "target": pathway,
                      "value": _table(table.loc[[pathway], ["total"]])["rows"][0]["cells"][0]})
        for outcome in table.columns:
            if outcome != "total":
                links.append({"source": pathway, "target": f"91d:{outcome}",
                              "value": _table(table.loc[[pathway], [outcome]])["rows"][0][
                                  "cells"][0]})
    nodes = sorted({link["source"] for link in links} | {link["target"] for link in links})
    return {"nodes": nodes, "links": links}


@router.get("/analyses/{kind}", summary="An analysis's published tables",
            responses=responses(401, 403, 409, 422))
@permission("analysis_table", "read")
async def tables(kind: Kind, access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Every published table of the newest run (counts of 1-7 shown as `*`, others rounded to
    5; more hidden until no hidden figure can be solved from all the tables together; spend
    shown only beside a shown count). Journeys add `sankey`: discharge -> pathway -> outcome
    at 91 days."""
    run, found = await run_in_threadpool(_run, kind, access)
    body: dict[str, Any] = {"run_id": run.run_id, "kind": kind,
                            "summary": {k: v for k, v in run.summary.items()
                                        if k in DESCRIBED},
                            "tables": {name: _table(t) for name, t in found.items()}}
    if kind == "journeys" and "flow_91d" in found:
        body["sankey"] = _sankey(found["flow_91d"])
    access.answered(sum(len(t) for t in found.values()), run_id=run.run_id)
    return ok(body)


@router.get("/analyses/{kind}/tables/{name}", summary="One published table",
            responses=responses(401, 403, 404, 409, 422))
@permission("analysis_table", "read")
async def one_table(kind: Kind, name: TableName,
                    access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """One published table of the newest run (as in `/analyses/{kind}`)."""
    run, found = await run_in_threadpool(_run, kind, access)
    if name not in found:
        raise Problem(404, "no such table")
    access.answered(len(found[name]), run_id=run.run_id, table=name)
    return ok({"run_id": run.run_id, "kind": kind, "name": name, **_table(found[name])})


@router.get("/analyses/{kind}/records", summary="Pseudonymised records (analysts)",
            responses=responses(401, 403, 409, 422))
@permission("analysis_records", "read")
def records(kind: Kind, access: Annotated[Access, Depends(authorise)],
            limit: Annotated[int, Query(ge=1, le=5000)] = 500,
            offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0) -> JSONResponse:
    """The newest run's records, person keys only (journeys: one per discharge; costs and
    segments: one per person), without persons an opt-out in force now withholds."""
    try:
        run, frame = analyses.records(access.services.context, kind)
    except analyses.NoAnalysisRun as exc:
        raise Problem(409, str(exc), slug="no-analysis-run") from None
    page = frame.iloc[offset:offset + limit]
    items = [{k: _clean(v) for k, v in row.items()}
             for row in json.loads(page.to_json(orient="records", date_format="iso"))]
    access.answered(len(items), run_id=run.run_id)
    nxt = offset + limit if offset + limit < len(frame) else None
    return ok({"run_id": run.run_id, "total": int(len(frame)), "offset": offset,
               "limit": limit, "next_offset": nxt, "items": items})


@router.get("/analyses/unit-costs/table", summary="The unit cost table in force",
            responses=responses(401, 403))
@permission("unit_costs", "read")
def unit_costs(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """The unit cost table (CSV text, its sources and price years in each row)."""
    access.answered(0)
    return ok({"name": analyses.UNIT_COSTS,
               "content": policy_text(analyses.UNIT_COSTS, access.services.engine)})


@router.put("/analyses/unit-costs/table", summary="Change the unit cost table (super users)",
            responses=responses(400, 401, 403, 422))
@permission("unit_costs", "update")
async def change_unit_costs(request: Request,
                            access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Replace the unit cost table (the CSV as the body): checked (every unit priced, with a
    source and price year; an error names the row and field), stored and audited
    (`policy_table.change` with digests of the old and new text)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    principal = access.principal
    actor = Actor(principal.user, access.role, principal.org, access.purpose)
    try:
        changed = await run_in_threadpool(set_policy, access.services.engine,
                                          analyses.UNIT_COSTS, body, actor)
    except ValueError as exc:
        raise Problem(400, str(exc)) from None
    access.answered(0, table=analyses.UNIT_COSTS)
    return ok(changed)
