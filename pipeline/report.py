"""Report: evaluate a score run on the year after its date and write the model report."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

from governance import audit
from linkage.linked_view import load_sources
from pipeline.context import Context
from pipeline.score import NoScoreRun, use_filter
from pipeline.serving import complete_run, serving_run, withheld_person_keys
from stratify.evaluate import evaluate
from stratify.report import EVALUATION_FILE, write_report
from stratify.scoring import load_run


def model_report(ctx: Context, run_id: str | None = None, out: Path | None = None) -> Path:
    """Evaluate `run_id` (default: the run serving commissioning) from landed data and write
    Markdown and plots to `out` (default: the run's report folder); returns the report path.

    Like every release, the evaluation follows the opt-outs in force now: outcomes are read
    from what the run's purpose may use today, and persons the run must withhold now
    (pipeline.serving) are left out of every figure."""
    serving = serving_run(ctx.engine, "commissioning") if run_id is None \
        else complete_run(ctx.engine, run_id)
    if serving is None:
        raise NoScoreRun(f"no complete score run {run_id}" if run_id else
                         "no score run yet: run `haven score` first")
    run_id = serving.run_id
    run = load_run(ctx.settings.layout.run(run_id))
    withheld = withheld_person_keys(ctx.settings, ctx.engine, serving.purpose, serving)
    run = replace(run, scores=run.scores[~run.scores["person_key"].isin(withheld)])
    sources = load_sources(ctx.settings, ctx.engine, row_filter=use_filter(
        ctx, serving.purpose, dt.datetime.now(dt.UTC).date()))
    evaluation = evaluate(run, sources)
    path = write_report(evaluation, out or ctx.settings.layout.report(run_id), run=run)
    audit.log(ctx.engine, ctx.actor, "model.report", f"run/{run_id}",
              n_records=int(len(run.scores)), purpose=serving.purpose)
    return path


def evaluation_figures(ctx: Context, run_id: str) -> dict | None:
    """The figures of the run's evaluation as `model_report` wrote them (None when it has not
    been evaluated yet)."""
    path = ctx.settings.layout.report(run_id) / EVALUATION_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
