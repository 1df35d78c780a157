"""Report: evaluate a score run on the year after its date and write the model report."""

from __future__ import annotations

from pathlib import Path

from governance import audit, optouts
from linkage.linked_view import load_sources
from pipeline.context import Context
from pipeline.score import NoScoreRun
from pipeline.serving import serving_run
from stratify.evaluate import evaluate
from stratify.report import write_report
from stratify.scoring import load_run


def model_report(ctx: Context, run_id: str | None = None, out: Path | None = None) -> Path:
    """Evaluate `run_id` (default: the run serving commissioning) from landed data and write
    Markdown and plots to `out` (default: the run's report folder); returns the report path."""
    if run_id is None:
        serving = serving_run(ctx.engine, "commissioning")
        if serving is None:
            raise NoScoreRun("no score run yet: run `haven score` first")
        run_id = serving.run_id
    run = load_run(ctx.settings.layout.run(run_id))
    sources = load_sources(ctx.settings, ctx.engine,
                           row_filter=optouts.purpose_filter(ctx.engine, "commissioning",
                                                             run.at))
    evaluation = evaluate(run, sources)
    path = write_report(evaluation, out or ctx.settings.layout.report(run_id), run=run)
    audit.log(ctx.engine, ctx.actor, "model.report", f"run/{run_id}",
              n_records=int(len(run.scores)), purpose="commissioning")
    return path
