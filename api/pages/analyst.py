"""Analysts' and super users' pages: dashboards of the current run from the published tables,
linkage and scoring jobs with their progress, and exports for a named recipient.

Every figure on a dashboard is a cell of `GET /aggregates` (the route function itself, so its
small-number suppression and its one-publication protection are the API's); the page's charts
fetch the same tables from the API. Jobs and exports call `api.routes.jobs`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.aggregates import CONDITION_COUNTS, TIER_CHANGES
from api.guard import Access, permission
from api.pages.common import PageAccess, answer, form, listed, page_router, see_other
from api.pages.render import render
from api.problems import Problem
from api.routes import jobs as job_routes
from api.routes import risk
from api.schemas import ExportRequest, LinkJobRequest, ScoreJobRequest
from api.scored_run import AGE_BANDS, CONDITION_SOURCES, SEXES, TIERS
from pipeline import report as model_report

router = page_router()
MODELS = {"": "Best on validation (recommended)", "rule": "Rule baseline",
          "logistic": "Logistic regression", "boosting": "Gradient boosting",
          "blend": "Blend"}
TABLES = (("tier", "pcn", "People by risk tier and Primary Care Network"),
          ("tier", "practice", "People by risk tier and practice"),
          ("age_band", "area", "People by age band"),
          ("sex", "area", "People by sex"),
          ("condition", "area", "People by long-term condition"),
          ("condition_count", "area", "People by number of long-term conditions"),
          ("tier_change", "area", "People by change of risk tier since the last run"))
# Tables counted from conditions, shown only to a role that may see their sources.
FROM_CONDITIONS = frozenset({"condition", "condition_count"})


async def published(request: Request, access: Access, by: str, geography: str
                    ) -> dict[str, Any]:
    """One published table, answered by `GET /aggregates`' own function."""
    scope = {"type": "http", "method": "GET", "path": "/aggregates", "headers": [],
             "query_string": urlencode({"by": by, "geography": geography}).encode(),
             "app": request.app}
    return answer(await risk.aggregates(Request(scope), access, by=by, geography=geography))


def grid(table: dict[str, Any], by: str, geography: str) -> dict[str, Any]:
    """A published table as rows (units) x columns (categories), for an HTML table. A cell
    the API leaves out is a true zero; a suppressed one stays suppressed."""
    order = {"tier": list(TIERS), "age_band": list(AGE_BANDS), "sex": list(SEXES),
             "condition_count": list(CONDITION_COUNTS), "tier_change": list(TIER_CHANGES)
             }.get(by)
    categories = [c[by] for c in (table["margins"].get(by) or table["cells"])]
    if order:
        categories = [c for c in order if c in categories] + \
            [c for c in categories if c not in order]
    if geography == "area":
        found = {c[by]: c for c in table["cells"]}
        return {"units": [], "categories": categories,
                "rows": [{"label": c, "cells": [found.get(c, {"count": 0, "suppressed": False})]}
                         for c in categories], "total": table["total"]}
    found = {(c[geography], c[by]): c for c in table["cells"]}
    rows = []
    for unit in table["margins"].get(geography, []):
        name = unit[geography]
        rows.append({"label": name, "total": unit,
                     "cells": [found.get((name, c), {"count": 0, "suppressed": False})
                               for c in categories]})
    column_totals = {c[by]: c for c in table["margins"].get(by, [])}
    return {"units": rows, "categories": categories, "rows": rows,
            "column_totals": [column_totals.get(c) for c in categories],
            "total": table["total"]}


@router.get("/pages/dashboards", summary="Dashboards")
@permission("aggregate", "read")
async def dashboards(request: Request, access: PageAccess) -> Response:
    """The current run's published tables, with charts drawn from the same API tables."""
    run = answer(await run_in_threadpool(risk.run_info, access))
    conditions_visible = bool(access.visible_sources("-") & CONDITION_SOURCES)
    tables = []
    cells = 0
    for by, geography, title in TABLES:
        if by in FROM_CONDITIONS and not conditions_visible:
            continue
        table = await published(request, access, by, geography)
        cells += len(table["cells"])
        tables.append({"by": by, "geography": geography, "title": title,
                       "id": f"{by}-{geography}", "rule": table["rule"],
                       "shown": any(not c["suppressed"] for c in table["cells"]),
                       "grid": grid(table, by, geography)})
    access.answered(cells, tables=[t["id"] for t in tables])
    rule = tables[0]["rule"] if tables else {}
    made_by = access.services.releases.current(access.purpose).provenance  # the same run
    return render(request, "analyst/dashboards.html", access=access, title="Dashboards",
                  run=run, tables=tables, rule=rule, made_by=made_by,
                  may_model=access.allows("run", "read"))


MODEL_METRICS = (("auroc", "AUROC"), ("auprc", "AUPRC"), ("brier", "Brier score"),
                 ("calibration_slope", "Calibration slope"),
                 ("calibration_intercept", "Calibration intercept"),
                 ("ppv_top0_5", "PPV, top 0.5% (very high)"),
                 ("ppv_top5", "PPV, top 5% (high and above)"),
                 ("ppv_top20", "PPV, top 20% (moderate and above)"),
                 ("sensitivity_top5", "Sensitivity, top 5%"))


def _shown_counts(figures: dict[str, Any], rule: Any) -> dict[str, Any]:
    """The evaluation's counts as the small-number rule shows counts (a subgroup whose persons
    are hidden shows no figure at all); rates and AUROCs as they are."""
    def show(value: Any) -> Any:
        if value is None:
            return None
        shown = rule.show(int(value))
        return "suppressed" if shown == rule.symbol else shown

    for row in figures.get("overall", []):
        for name in ("events_top5", "events_top1000"):
            if name in row:
                row[name] = show(row[name])
    for curve in figures.get("calibration", {}).values():
        for point in curve:
            point["persons"] = show(point.get("persons"))
    for row in figures.get("subgroups", []):
        persons = row.get("persons")
        row["hidden"] = persons is not None and rule.hides(int(persons))
        row["persons"], row["events"] = show(persons), show(row.get("events"))
    return figures


@router.get("/pages/model", summary="The model's evaluation")
@permission("run", "read")
async def model(request: Request, access: PageAccess) -> Response:
    """The serving run's evaluation on the year after its date, as `haven model report` wrote
    it (discrimination with its interval, calibration by decile, PPV at each tier, subgroups),
    counts shown as the small-number rule shows them."""
    run = answer(await run_in_threadpool(risk.run_info, access))
    figures = await run_in_threadpool(model_report.evaluation_figures, access.services.context,
                                      run["run_id"])
    if figures is not None:
        rule = await run_in_threadpool(access.services.suppression_rule)
        figures = _shown_counts(figures, rule)
    access.answered(0, run_id=run["run_id"], evaluated=figures is not None)
    chosen = next((r for r in (figures or {}).get("overall", []) if r["model"] == "chosen"),
                  None)
    return render(request, "analyst/model.html", access=access, title="Model evaluation",
                  run=run, figures=figures, chosen=chosen, metrics=MODEL_METRICS)


def _jobs_of(access: Access) -> list[dict[str, Any]]:
    runner = access.services.jobs
    folder = access.services.settings.layout.jobs_dir
    found = []
    if folder.exists():
        for path in sorted(folder.glob("job-*.json"), reverse=True)[:20]:
            job = runner.get(path.stem)
            if job and (access.scope == "any" or job["org"] == access.principal.org):
                found.append(job_routes._public(job))
    return found


@router.get("/pages/jobs", summary="Jobs")
@permission("job", "read", owner="collection")
async def jobs(request: Request, access: PageAccess) -> Response:
    """Start linkage or scoring; the organisation's recent jobs."""
    recent = await run_in_threadpool(_jobs_of, access)
    access.answered(len(recent))
    return render(request, "analyst/jobs.html", access=access, title="Jobs", jobs=recent,
                  models=MODELS, today=dt.date.today().isoformat(),
                  may_link=access.allows("job_link", "create"),
                  may_score=access.allows("job_score", "create"))


@router.post("/pages/jobs/link", summary="Start linkage")
@permission("job_link", "create")
async def start_link(request: Request, access: PageAccess) -> Response:
    data = await form(request)
    body = LinkJobRequest(retrain=data.get("retrain") == "yes")
    job = answer(await run_in_threadpool(job_routes.start_link, access, body))
    return see_other(f"/pages/jobs/{job['job_id']}")


@router.post("/pages/jobs/score", summary="Start scoring")
@permission("job_score", "create")
async def start_score(request: Request, access: PageAccess) -> Response:
    data = await form(request)
    try:
        body = ScoreJobRequest(at=data.get("at") or "", model=data.get("model") or None)
    except ValidationError:
        raise Problem(422, "at: the scoring date, as YYYY-MM-DD; model: one from the "
                           "list") from None
    job = answer(await run_in_threadpool(job_routes.start_score, body, access))
    return see_other(f"/pages/jobs/{job['job_id']}")


@router.get("/pages/jobs/{job_id}", summary="A job")
@permission("job", "read", owner="collection")
async def job(request: Request, job_id: job_routes.JobId, access: PageAccess) -> Response:
    """A job's progress (the page refreshes itself every few seconds while it runs)."""
    found = answer(await run_in_threadpool(job_routes.job_status, job_id, access))
    running = found["status"] in ("queued", "running")
    # The stage's progress lines (the route has checked the job is the caller's to see).
    kept = await run_in_threadpool(access.services.jobs.get, job_id) or {}
    found["progress"] = [str(line) for line in kept.get("progress") or []]
    return render(request, "analyst/job.html", access=access, title="Job", job=found,
                  running=running,
                  result=json.dumps(found.get("result") or {}, indent=2, sort_keys=True))


def _exports_of(access: Access) -> list[dict[str, Any]]:
    found = []
    for path in reversed(access.services.settings.layout.export_descriptions()):
        try:
            description = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if access.scope == "any" or description.get("org") == access.principal.org:
            found.append(description)
    return sorted(found, key=lambda d: d.get("created_at", ""), reverse=True)[:50]


@router.get("/pages/exports", summary="Exports")
@permission("export", "read", owner="collection")
async def exports(request: Request, access: PageAccess,
                  made: Annotated[str | None, Query(pattern=r"^exp-\d{14}-[0-9a-f]{8}$")]
                  = None) -> Response:
    """Create an export of the current run for a named recipient; the organisation's exports."""
    recent = await run_in_threadpool(_exports_of, access)
    access.answered(len(recent))
    return render(request, "analyst/exports.html", access=access, title="Exports",
                  exports=recent, tiers=TIERS, made=made,
                  may_create=access.allows("export", "create"))


@router.post("/pages/exports", summary="Create an export")
@permission("export", "create")
async def create_export(request: Request, access: PageAccess) -> Response:
    data = await form(request)
    try:
        body = ExportRequest(recipient=(data.get("recipient") or "").strip().upper(),
                             format=data.get("format") or "csv",
                             tiers=listed(data.get("tiers")),
                             practice=(data.get("practice") or "").strip().upper() or None)
    except ValidationError:
        raise Problem(422, "recipient: the ODS code of the organisation receiving it; "
                           "practice: an ODS code or blank") from None
    made = answer(await run_in_threadpool(job_routes.create_export, body, access))
    return see_other(f"/pages/exports?made={made['export_id']}")


@router.get("/pages/exports/{export_id}/file", summary="Download an export")
@permission("export", "read", owner="collection")
async def export_file(export_id: job_routes.ExportId, access: PageAccess) -> Response:
    """The file, by `GET /exports/{id}/file`'s own function."""
    return await run_in_threadpool(job_routes.export_file, export_id, access)
