"""Jobs (super users): run linkage or scoring in the background, choose the model, and
exports of the current run for a named recipient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path
from fastapi.responses import FileResponse, JSONResponse

from api import exports, present
from api.guard import Access, authorise, permission
from api.jobs import JOB_ID, JobRefused
from api.problems import Problem, responses
from api.routes import current_release, example_response, ok
from api.schemas import Export, ExportRequest, Job, LinkJobRequest, ScoreJobRequest
from api.scored_run import CONDITION_SOURCES
from governance.audit import Actor
from governance.release_rule import ReleaseRule

router = APIRouter(tags=["jobs and exports"])
JobId = Annotated[str, Path(pattern=JOB_ID.pattern, examples=["job-20250402091403-a1b2c3"])]
ExportId = Annotated[str, Path(pattern=exports.EXPORT_ID.pattern,
                               examples=["exp-20250402092000-5e6f7a8b"])]


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job.get(k) for k in ("job_id", "kind", "status", "org", "created_at",
                                     "finished_at", "result", "error")}


def _start(access: Access, start: Callable[[Actor], dict[str, Any]],
           **asked: Any) -> JSONResponse:
    """Start a job as the caller; its audit event records the job and what was `asked`."""
    principal = access.principal
    actor = Actor(principal.user, access.role, principal.org, access.purpose)
    try:
        job = start(actor)
    except JobRefused as exc:
        raise Problem(409, str(exc), slug="job-refused") from None
    access.answered(0, job_id=job["job_id"], **asked)
    return ok(_public(job), 202)


@router.post("/jobs/link", summary="Run linkage", status_code=202,
             responses={202: example_response(Job, "Started"), **responses(401, 403, 409)})
@permission("job_link", "create")
def start_link(access: Annotated[Access, Depends(authorise)],
               body: LinkJobRequest | None = None) -> JSONResponse:
    """Update the person index over everything landed (`haven link`), in the background;
    with `retrain`, every kept linkage model forgotten (`haven link --retrain`)."""
    retrain = body.retrain if body is not None else False
    return _start(access, lambda actor: access.services.jobs.start_link(actor, retrain),
                  retrain=retrain)


@router.post("/jobs/score", summary="Run scoring", status_code=202,
             responses={202: example_response(Job, "Started"), **responses(401, 403, 409,
                                                                           422)})
@permission("job_score", "create")
def start_score(body: ScoreJobRequest,
                access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Train and score at a date (`haven score --at`), optionally with a chosen model."""
    return _start(access, lambda actor: access.services.jobs.start_score(
        actor, body.at, seed=body.seed, purpose=body.purpose, model=body.model))


@router.get("/jobs/{job_id}", summary="Job status",
            responses={200: example_response(Job), **responses(401, 403, 404, 422)})
@permission("job", "read", owner="collection")
def job_status(job_id: JobId, access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """A job started by the caller's organisation."""
    job = access.services.jobs.get(job_id)
    if job is None or (access.scope != "any" and job["org"] != access.principal.org):
        raise Problem(404, "no such job")
    access.answered(0)
    return ok(_public(job))


@router.post("/exports", summary="Export for a named recipient", status_code=201,
             responses={201: example_response(Export, "Written"),
                        **responses(401, 403, 409, 422)})
@permission("export", "create")
def create_export(body: ExportRequest,
                  access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Write the current run (optionally some tiers or one practice) as Parquet or CSV, with
    the recipient's own pseudonyms in place of person keys: only the columns the purpose
    needs, coarsened until every combination is shared by k persons of the file
    (`policies/release.json`; rows left in smaller groups are not written)."""
    release = current_release(access)
    rows = None
    if body.practice:
        rows = release.practice_rows.get(body.practice, np.empty(0, dtype=np.int64))
    selected = release.select(rows, tiers=body.tiers)
    people = []
    for row in release.rows(selected):
        visible = access.visible_sources(row.get("gp_practice_code") or "-")
        person = present.person(row, visible)
        if not visible & CONDITION_SOURCES:
            person["conditions"] = None  # not "none": unknown to this caller
        people.append(person)
    principal = access.principal
    services = access.services
    description = exports.write(services.settings, services.keys, people,
                                recipient=body.recipient, fmt=body.format,
                                run_id=release.run_id, org=principal.org, user=principal.user,
                                purpose=access.purpose,
                                rule=ReleaseRule.load(engine=services.engine),
                                geography=services.releases.geography())
    access.answered(len(people), export_id=description["export_id"], recipient=body.recipient,
                    format=body.format)
    return ok({k: description.get(k) for k in Export.model_fields}, 201)


def _own_export(access: Access, export_id: str) -> tuple[dict[str, Any], Any]:
    found = exports.describe(access.services.settings, export_id)
    if found is None or (access.scope != "any" and found[0]["org"] != access.principal.org):
        raise Problem(404, "no such export")
    return found


@router.get("/exports/{export_id}", summary="An export's description",
            responses={200: example_response(Export), **responses(401, 403, 404, 422)})
@permission("export", "read", owner="collection")
def export_info(export_id: ExportId, access: Annotated[Access, Depends(authorise)]
                ) -> JSONResponse:
    """Recipient, format, rows and SHA-256 of an export made by the caller's organisation."""
    description, _ = _own_export(access, export_id)
    access.answered(0)
    return ok({k: description.get(k) for k in Export.model_fields})


@router.get("/exports/{export_id}/file", summary="Download an export",
            response_class=FileResponse,
            responses={200: {"description": "The export file.", "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/vnd.apache.parquet": {"schema": {"type": "string",
                                                              "format": "binary"}}}},
                       **responses(401, 403, 404, 422)})
@permission("export", "read", owner="collection")
def export_file(export_id: ExportId, access: Annotated[Access, Depends(authorise)]
                ) -> FileResponse:
    """The file itself (CSV cells that could start a formula are neutralised)."""
    description, path = _own_export(access, export_id)
    access.answered(int(description["rows"]), recipient=description["recipient"])
    media = "text/csv" if description["format"] == "csv" else "application/vnd.apache.parquet"
    return FileResponse(path, media_type=media, filename=f"{export_id}.{description['format']}")
