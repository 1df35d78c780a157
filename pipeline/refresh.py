"""`haven refresh`: the monthly refresh with drift watch.

Land what arrived, link, score everyone with the approved model in force (never a new
candidate: `haven score` trains those, and they wait for a clinical safety officer), and
compare with the run that served before:

- population and feature drift: PSI of every model feature (features at each run's date,
  from the data held now), share of persons with records in each source;
- the score: its distribution (PSI, quantiles, tier shares) and tier churn (who moved tier,
  by the main reason group they have now);
- linkage quality against the previous link run (match rate, probabilistic share per source);
- once outcomes have arrived: AUROC and calibration slope of the approved model on its most
  recent run whose outcome year is complete in the data held.

Every figure past its threshold (`policies/drift.json`) is a warning: in the report (Markdown
and JSON in the run's folder), the audit log, the run's summary and the API. A performance
warning flags the model for retraining (governance.model_approvals.flag_retrain).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sqlalchemy import func, select, update

from governance import audit, model_approvals
from governance.drift_policy import load_drift
from governance.schema import extracts, runs
from pipeline.context import Context, Progress, quiet
from pipeline.land import land
from pipeline.link import link
from pipeline.linked_copy import linked_copy
from pipeline.refresh_report import markdown
from pipeline.score import purpose_rows, score
from pipeline.serving import ServingRun, optouts_applied, run_purpose, serving_rank
from stratify import drift
from stratify.features import connect, features_from
from stratify.outcomes import OUTCOME_MONTHS, outcome_flags
from stratify.sources import add_months

SCORE_COLUMNS = ["person_key", "probability", "tier", "reason_group_1", "sources"]


class NoApprovedModel(LookupError):
    """No approved model to score the refreshed data with (or its fitted file is gone)."""


@dataclass
class RefreshResult:
    """What a refresh did: receipts' counts, the run, the model and the warnings."""

    run_id: str
    model_id: str
    previous_run_id: str | None
    persons: int
    landed: int
    refused: int
    duplicate: int
    warnings: list[dict[str, Any]] = field(default_factory=list)
    retrain: bool = False
    report: Path | None = None


def approved_bundle(ctx: Context) -> tuple[dict[str, Any], Any]:
    """The model in force and its fitted bundle (from the run that trained it)."""
    model = model_approvals.in_force(ctx.engine)
    if model is None:
        raise NoApprovedModel("no approved model: run `haven score`, and a clinical safety "
                              "officer approves its model (`haven model approve`)")
    path = ctx.settings.layout.run(model["run_id"]).model
    if not path.exists():
        raise NoApprovedModel(f"the approved model {model['model_id']} has no fitted file "
                              f"(its run {model['run_id']} was destroyed): score and approve "
                              "a new model")
    return model, joblib.load(path)


def previous_run(ctx: Context, purpose: str, at: dt.date) -> ServingRun | None:
    """The run to compare with: the newest complete run for `purpose` dated before `at`
    that may serve (scored by an approved model: `pipeline.serving.serving_rank`)."""
    approved = model_approvals.approved_models(ctx.engine)
    with ctx.engine.connect() as connection:
        listed = connection.execute(select(runs.c.run_id, runs.c.at, runs.c.summary).where(
            runs.c.kind == "score", runs.c.status == "complete").order_by(
            runs.c.at.desc(), runs.c.run_id.desc())).all()
    for run in listed:
        summary = dict(run.summary or {})
        if run_purpose(summary) == purpose and str(summary.get("at")) < at.isoformat() \
                and serving_rank(summary, approved) is not None:
            return ServingRun(run.run_id, run.at, summary)
    return None


def last_link_summary(ctx: Context) -> dict[str, Any] | None:
    """The newest complete link run's summary (None before any)."""
    with ctx.engine.connect() as connection:
        found = connection.execute(select(runs.c.summary).where(
            runs.c.kind == "link", runs.c.status == "complete").order_by(
            runs.c.at.desc(), runs.c.run_id.desc())).first()
    return None if found is None else dict(found.summary or {})


def _scores(ctx: Context, run_id: str) -> pd.DataFrame:
    path = ctx.settings.layout.run(run_id).scores
    present = set(pq.read_schema(path).names)
    return pd.read_parquet(path, columns=[c for c in SCORE_COLUMNS if c in present])


def hospital_data_end(ctx: Context) -> dt.date | None:
    """The last day the landed hospital admissions extracts cover (their manifests'
    `period_end`): outcomes are known up to it."""
    with ctx.engine.connect() as connection:
        return connection.scalar(select(func.max(extracts.c.period_end)).where(
            extracts.c.source == "apc", extracts.c.status == "landed"))


def performance_figures(ctx: Context, con: Any, model: str, purpose: str,
                        data_end: dt.date | None) -> dict[str, Any]:
    """AUROC and calibration slope of `model` on its newest run (for `purpose`) whose whole
    outcome year the hospital data held cover (`data_end`); else what is awaited."""
    with ctx.engine.connect() as connection:
        listed = connection.execute(select(runs.c.run_id, runs.c.summary).where(
            runs.c.kind == "score", runs.c.status == "complete")).all()
    mine = sorted(((str(r.summary.get("at")), r.run_id) for r in listed
                   if (r.summary or {}).get("model_id") == model
                   and run_purpose(r.summary) == purpose),
                  reverse=True)
    for at_text, run_id in mine:
        at = dt.date.fromisoformat(at_text)
        if data_end is None or data_end < add_months(at, OUTCOME_MONTHS) - dt.timedelta(days=1):
            continue  # its outcome year is not wholly in the hospital data held
        scored = _scores(ctx, run_id)
        outcome = outcome_flags(con, pd.Index(scored["person_key"].astype(str)), at)
        found = drift.performance(outcome["emergency"].astype("int8"),
                                  scored["probability"].to_numpy())
        return {"status": "measured", "run_id": run_id, "year": [
            at.isoformat(), add_months(at, OUTCOME_MONTHS).isoformat()], **found}
    waiting = min((dt.date.fromisoformat(a) for a, _ in mine), default=None)
    return {"status": "awaiting outcomes",
            "data_end": data_end.isoformat() if data_end else None,
            "complete_after": add_months(waiting, OUTCOME_MONTHS).isoformat()
            if waiting else None}


def compare(ctx: Context, before: ServingRun | None, after_run: str, at: dt.date,
            bundle: Any, model: str, purpose: str, link_before: dict[str, Any] | None,
            link_after: dict[str, Any]) -> dict[str, Any]:
    """Every drift figure of run `after_run` against `before` (see the module docstring)."""
    figures: dict[str, Any] = {
        "linkage": drift.linkage_changes((link_before or {}).get("by_source_method", {}),
                                         link_after.get("by_source_method", {})),
        "linkage_runs": {"before_rows": (link_before or {}).get("rows"),
                         "after_rows": link_after.get("rows")}}
    after = _scores(ctx, after_run)
    applied = optouts_applied(ctx.engine)
    with linked_copy(ctx, purpose_rows(ctx, purpose, applied)) as sources:  # on disk
        con = connect(sources)
        try:
            data_end = hospital_data_end(ctx)
            if before is not None:
                then = dt.date.fromisoformat(str(before.summary.get("at")))
                x_then = features_from(con, then, bundle.lookback_months)[bundle.features]
                x_now = features_from(con, at, bundle.lookback_months)[bundle.features]
                figures["feature_psi"] = drift.feature_psi(x_then, x_now).to_dict("records")
                earlier = _scores(ctx, before.run_id)
                figures["source_shares"] = drift.share_changes(
                    drift.source_shares(earlier["sources"]) if "sources" in earlier else {},
                    drift.source_shares(after["sources"]) if "sources" in after else {})
                figures["score_distribution"] = drift.score_distribution(earlier, after)
                figures["tier_churn"] = drift.tier_churn(earlier, after)
            figures["performance"] = performance_figures(ctx, con, model, purpose, data_end)
        finally:
            con.close()
    return figures


def refresh(ctx: Context, extracts: Path, at: dt.date, *, purpose: str = "commissioning",
            progress: Progress = quiet, retrain_linkage: bool = False) -> RefreshResult:
    """Land `extracts`, link, score at `at` with the approved model, compare with the run
    serving before, warn, report and audit (see the module docstring). The link reuses the
    kept linkage models unless `retrain_linkage`."""
    model, bundle = approved_bundle(ctx)
    link_before = last_link_summary(ctx)
    progress(f"1. land {extracts}")
    receipts = land(ctx, extracts, progress=lambda line: progress(f"  {line}"))
    progress("2. link")
    link_after = link(ctx, progress=lambda line: progress(f"  {line}"),
                      retrain=retrain_linkage).to_json()
    progress(f"3. score at {at.isoformat()} with the approved model {model['model_id']}")
    result = score(ctx, at, purpose=purpose, bundle=bundle, bundle_id=model["model_id"],
                   progress=lambda line: progress(f"  {line}"))
    before = previous_run(ctx, purpose, at)
    progress("4. compare with the run before" + (f" ({before.run_id})" if before else
                                                  " (none: first run)"))
    policy = load_drift(ctx.engine)
    figures = compare(ctx, before, result.run_id, at, bundle, model["model_id"], purpose,
                      link_before, link_after)
    found = drift.warnings(figures, policy)
    retrain = any(w["retrain"] for w in found)
    checks = sorted({f"{w['check']}:{w['subject']}" for w in found})
    if retrain:
        model_approvals.flag_retrain(ctx.engine, ctx.actor, model["model_id"], {
            "run_id": result.run_id, "checks": [c for c in checks
                                                if c.split(":")[0] in ("auroc",
                                                                       "calibration_slope")],
            "performance": {k: figures["performance"].get(k)
                            for k in ("auroc", "calibration_slope", "year")}})
    counts = {status: sum(r.status == status for r in receipts)
              for status in ("landed", "refused", "duplicate")}
    approval = model_approvals.get_model(ctx.engine, model["model_id"]) or model
    report = {
        "run_id": result.run_id, "at": at.isoformat(), "purpose": purpose,
        "previous_run_id": before.run_id if before else None,
        "previous_at": before.summary.get("at") if before else None,
        "model": {k: approval.get(k) for k in ("model_id", "algorithm", "status",
                                               "decided_by", "decided_role", "decided_at",
                                               "reason", "retrain_flag")},
        "extracts": counts, "persons": result.persons, "thresholds": policy,
        "figures": figures, "warnings": found, "retrain": retrain}
    files = ctx.settings.layout.run(result.run_id)
    report = _finite(report)
    files.refresh_json.write_text(json.dumps(report, indent=2, default=_json),
                                  encoding="utf-8")
    files.refresh_markdown.write_text(markdown(report), encoding="utf-8")
    summary_note = {"previous_run_id": report["previous_run_id"], "warnings": len(found),
                    "checks": checks, "retrain": retrain, "report": files.refresh_json.name}
    with ctx.engine.begin() as connection:
        summary = dict(connection.scalar(select(runs.c.summary).where(
            runs.c.run_id == result.run_id)) or {})
        connection.execute(update(runs).where(runs.c.run_id == result.run_id).values(
            summary={**summary, "refresh": summary_note}))
        audit.record(connection, ctx.actor, "refresh.drift", f"run/{result.run_id}",
                     n_records=result.persons, purpose=purpose,
                     detail={"model_id": model["model_id"], **summary_note})
    description = json.loads(files.description.read_text(encoding="utf-8"))
    files.description.write_text(json.dumps({**description, "refresh": summary_note},
                                            indent=2, default=_json), encoding="utf-8")
    progress(f"{len(found)} drift warnings" + (": " + ", ".join(checks) if checks else "")
             + ("; the model is flagged for retraining" if retrain else ""))
    progress(f"refresh report written to {files.refresh_markdown} and {files.refresh_json}")
    return RefreshResult(run_id=result.run_id, model_id=model["model_id"],
                         previous_run_id=report["previous_run_id"], persons=result.persons,
                         landed=counts["landed"], refused=counts["refused"],
                         duplicate=counts["duplicate"], warnings=found, retrain=retrain,
                         report=files.refresh_markdown)


def latest_report(ctx: Context, purpose: str = "commissioning") -> dict[str, Any] | None:
    """The drift report of the newest refreshed run still held (None before any)."""
    with ctx.engine.connect() as connection:
        listed = connection.execute(select(runs.c.run_id, runs.c.summary).where(
            runs.c.kind == "score", runs.c.status == "complete").order_by(
            runs.c.at.desc(), runs.c.run_id.desc())).all()
    for run in listed:
        summary = run.summary or {}
        if summary.get("refresh") and run_purpose(summary) == purpose:
            path = ctx.settings.layout.run(run.run_id).refresh_json
            if path.exists():
                return json.loads(path.read_text(encoding="utf-8"))
    return None


def _finite(value: Any) -> Any:
    """`value` with every NaN float as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    return value


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(type(value))
