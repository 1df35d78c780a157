"""The demo: synthetic extracts -> land -> link -> score -> model report, on one data directory.

The demo's first model is approved by a named demo clinical safety officer (cara.cso), said
as it happens: outside the demo a model serves only once a real one approves it.

Each stage reports what it did; a re-run reuses what is already there (landing recognises files
it has landed, linkage only adds what is new, the same extracts are not generated twice).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from governance.audit import Actor
from governance.model_approvals import CLINICAL_SAFETY_ROLE, decide
from pipeline.analyses import run_all as run_analyses
from pipeline.context import Context, Progress, quiet
from pipeline.land import land
from pipeline.link import link
from pipeline.report import model_report
from pipeline.score import ScoreResult, score
from synth import generate
from synth.population import PRACTICES

# (user, organisation, role); PRACTICE stands for the synthetic population's first practice.
DEMO_USERS = (
    ("ana.analyst", "X26", "analyst"),
    ("sam.superuser", "X26", "super_user"),
    ("dr.mdt", "PRACTICE", "mdt_clinician"),
    ("ivy.iglead", "X26", "ig_lead"),
    ("ada.admin", "X26", "admin"),
    ("carl.council", "E08000035", "council_uploader"),
    ("pat.planner", "X26", "planner"),
    ("rex.responder", "X26", "responder"),
    ("cara.cso", "X26", "clinical_safety_officer"),
)
# The demo's first model is approved by its named clinical safety officer (cara.cso), so the
# demo serves a list; outside the demo a model serves only once a real one approves it.
DEMO_APPROVAL = ("demo only: synthetic data; approved by the demo clinical safety officer so "
                 "that the demo serves a list")


@dataclass
class DemoResult:
    """What the demo made: the score run and where its report went."""

    score: ScoreResult
    report: Path


def demo_users() -> list[tuple[str, str, str]]:
    """One demo user per role, with real organisation codes."""
    return [(name, PRACTICES[0].code if org == "PRACTICE" else org, role)
            for name, org, role in DEMO_USERS]


def run_impact(ctx: Context, at: dt.date, progress: Progress = quiet) -> None:
    """Issue #14 parts 4-6 on the demo data: the demand forecast, vulnerable adults at `at`,
    and an evaluation of everyone a reablement service took on in the 6 months before `at`."""
    from pipeline import impact, incidents

    progress("did it work, demand, emergency planning (issue #14 parts 4-6)")
    impact.forecast(ctx, progress=lambda line: progress(f"  {line}"))
    incidents.vulnerable(ctx, at, progress=lambda line: progress(f"  {line}"))
    cohort = impact.demo_cohort(ctx, at)
    try:
        _, found = impact.evaluate(ctx, cohort, progress=lambda line: progress(f"  {line}"))
        progress(f"  {found['statement']}")
    except (impact.CohortError, impact.TooSmall) as exc:
        progress(f"  no demo evaluation: {exc}")


def run_demo(ctx: Context, persons: int, seed: int, out: Path,
             progress: Progress = quiet) -> DemoResult:
    """Generate (unless the same population is already in `out`), land, link, score, report."""
    meta_path = out / "truth" / "meta.json"
    fresh = True
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        fresh = (meta.get("persons"), meta.get("seed")) != (persons, seed)
    if fresh:
        progress("1. synthetic extracts")
        generate(persons, seed, out, progress=True)
        meta = json.loads(meta_path.read_text())
    progress(f"extracts for {persons:,} synthetic persons in {out}")
    progress("2. land")
    land(ctx, out, progress=lambda line: progress(f"  {line}"))
    progress("3. link")
    link(ctx, progress=lambda line: progress(f"  {line}"))
    progress("4. score")
    result = score(ctx, dt.date.fromisoformat(meta["score_date"]),
                   progress=lambda line: progress(f"  {line}"))
    if result.model_status == "candidate":
        officer = Actor("cara.cso", CLINICAL_SAFETY_ROLE, "X26", "clinical_safety")
        decide(ctx.engine, officer, result.model_id, "approve", DEMO_APPROVAL)
        progress(f"  model {result.model_id} approved by the demo clinical safety officer "
                 f"cara.cso ({DEMO_APPROVAL})")
    progress("5. model report")
    report = model_report(ctx, result.run_id)
    progress(f"  {report}")
    progress("journeys, costs and segments (issue #14)")
    run_analyses(ctx, dt.date.fromisoformat(meta["score_date"]),
                 progress=lambda line: progress(f"  {line}"))
    run_impact(ctx, dt.date.fromisoformat(meta["score_date"]),
               progress=lambda line: progress(f"  {line}"))
    return DemoResult(score=result, report=report)
