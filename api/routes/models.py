"""Risk models and the drift watch: the clinical safety officer's decisions, which model a
list came from, and the latest refresh's drift warnings.

- `GET /models`: every model, candidate, approved or rejected (clinical safety, IG lead).
- `POST /models/{model_id}/approve|reject`: a clinical safety officer's decision, with a
  reason (governance.model_approvals: any other role is refused, and audited).
- `GET /models/serving`: the model and approval behind the run answering the caller's
  purpose (anyone who may read the run: analysts, MDT clinicians).
- `GET /refresh/latest`: the newest refresh report, its figures and warnings (counts only).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.guard import Access, authorise, permission
from api.problems import Problem, responses
from api.routes import current_release, json_response, ok
from governance import model_approvals
from governance.audit import Actor
from pipeline.refresh import latest_report

router = APIRouter(tags=["models"])
ModelId = Annotated[str, Path(pattern=r"^model-[a-p]{12}$",
                              examples=["model-dpcknmebaelh"])]
SHOWN = ("model_id", "status", "algorithm", "run_id", "purpose", "proposed_at", "decided_by",
         "decided_role", "decided_at", "reason", "retrain_flag", "description")


class Decision(BaseModel):
    """A clinical safety officer's reason for approving or rejecting a model."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "reason": "Back-test AUROC 0.78 (0.76-0.80), calibration slope 0.97; hazards "
                  "H1-H3 reviewed"}]})
    reason: str = Field(min_length=3, max_length=500)


def _shown(model: dict[str, Any]) -> dict[str, Any]:
    return {k: model.get(k) for k in SHOWN}


@router.get("/models", summary="Risk models and their clinical safety decisions",
            responses=responses(401, 403))
@permission("model", "read")
def list_models(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Every model, newest first: candidate, approved or rejected, who decided, when, why."""
    found = model_approvals.list_models(access.services.engine)
    force = model_approvals.in_force(access.services.engine)
    access.answered(len(found))
    return ok({"in_force": force["model_id"] if force else None,
               "items": [_shown(m) for m in found]})


async def _decide(model_id: str, decision: str, body: Decision, access: Access
                  ) -> JSONResponse:
    services = access.services
    principal = access.principal
    actor = Actor(principal.user, access.role, principal.org, access.purpose)
    try:
        done = await run_in_threadpool(model_approvals.decide, services.engine, actor,
                                       model_id, decision, body.reason)
    except model_approvals.NotAllowed as exc:  # pragma: no cover - Casbin refuses first
        raise Problem(403, str(exc)) from None
    except model_approvals.ModelError as exc:
        status = 404 if str(exc).startswith("no model") else (
            409 if "already" in str(exc) else 422)
        raise Problem(status, str(exc)) from None
    services.releases.forget()  # the run serving may change at once
    access.answered(1, model_id=model_id, decision=done["status"])
    return ok(_shown(done))


@router.post("/models/{model_id}/approve", summary="Approve a candidate model",
             responses=responses(401, 403, 404, 409, 422))
@permission("model", "approve")
async def approve(model_id: ModelId, body: Decision,
                  access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """A clinical safety officer approves a candidate, with a reason: its runs serve from
    now on (the newest approval is the model in force). Audited."""
    return await _decide(model_id, "approve", body, access)


@router.post("/models/{model_id}/reject", summary="Reject a candidate model",
             responses=responses(401, 403, 404, 409, 422))
@permission("model", "approve")
async def reject(model_id: ModelId, body: Decision,
                 access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """A clinical safety officer rejects a candidate, with a reason: it never serves; the
    model in force keeps serving. Audited."""
    return await _decide(model_id, "reject", body, access)


@router.get("/models/serving", summary="The model and approval behind the lists served",
            responses=responses(401, 403, 409))
@permission("run", "read")
def serving(access: Annotated[Access, Depends(authorise)]) -> JSONResponse:
    """Which run answers the caller's purpose, the model that scored it, and its approval
    (role and time of the clinical safety officer's decision; a run recorded before
    approvals says so)."""
    release = current_release(access)
    access.answered(0, run_id=release.run_id)
    return ok({"run_id": release.run_id, "at": release.at, "purpose": release.purpose,
               **release.provenance})


@router.get("/refresh/latest", summary="The latest refresh's drift report",
            responses=responses(401, 403, 404))
@permission("drift_report", "read")
def refresh_latest(access: Annotated[Access, Depends(authorise)]) -> Any:
    """The newest `haven refresh` report: every drift figure (counts and shares), the
    thresholds in force and the warnings past them; whether the model is flagged for
    retraining."""
    report = latest_report(access.services.context)
    if report is None:
        raise Problem(404, "no refresh yet: `haven refresh EXTRACTS --at DATE`")
    access.answered(len(report["warnings"]), run_id=report["run_id"])
    return json_response(report)
