"""The demo: synthetic extracts -> land -> link -> score -> model report, on one data directory.

Each stage reports what it did; a re-run reuses what is already there (landing recognises files
it has landed, linkage only adds what is new, the same extracts are not generated twice).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

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
)


@dataclass
class DemoResult:
    """What the demo made: the score run and where its report went."""

    score: ScoreResult
    report: Path


def demo_users() -> list[tuple[str, str, str]]:
    """One demo user per role, with real organisation codes."""
    return [(name, PRACTICES[0].code if org == "PRACTICE" else org, role)
            for name, org, role in DEMO_USERS]


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
    progress("5. model report")
    report = model_report(ctx, result.run_id)
    progress(f"  {report}")
    progress("journeys, costs and segments (issue #14)")
    run_analyses(ctx, dt.date.fromisoformat(meta["score_date"]),
                 progress=lambda line: progress(f"  {line}"))
    return DemoResult(score=result, report=report)
