"""Report: evaluate a score run and write the model report that tells the truth about it.

When the year after the run's date is in the landed data, the run is judged on it
(prospective); when it is not (the normal case: a run scored today), the report says so first
and shows the back-test the model was chosen on (stratify.backtest), labelled. The report opens
with the model card and the measured counts of whom the run covers (pipeline.report_counts).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from governance import audit, model_approvals
from governance.layout import RunFiles
from pipeline.context import Context, Progress, quiet
from pipeline.linked_copy import linked_copy
from pipeline.report_counts import run_counts
from pipeline.score import NoScoreRun, purpose_rows
from pipeline.serving import (
    ServingRun,
    complete_run,
    optouts_applied,
    serving_run,
    withheld_person_keys,
)
from stratify.backtest import NoBacktest, backtest
from stratify.evaluate import Evaluation, evaluate, follow_up
from stratify.report import EVALUATION_FILE, write_report
from stratify.scoring import ScoreRun, load_run

# The scores' columns the evaluation and the report read (stratify.evaluate, stratify.report,
# stratify.model_card): the reasons and conditions text of a whole population is not loaded.
REPORT_COLUMNS = ("person_key", "probability", "tier", "reason_group_1", "change",
                  "tier_change", "sources", "sex", "age_band", "social_care_known")


def model_report(ctx: Context, run_id: str | None = None, out: Path | None = None,
                 progress: Progress = quiet) -> Path:
    """Evaluate `run_id` (default: the run serving commissioning) from landed data and write
    Markdown and plots to `out` (default: the run's report folder); returns the report path.

    Prospective when the year after the run's date is complete in the data, else the back-test
    the model was chosen on, said plainly (module docstring). Like every release, the
    evaluation follows the opt-outs in force now: outcomes are read from what the run's purpose
    may use today, and persons the run must withhold now (pipeline.serving) are left out of
    every figure. `progress` hears each step (the report takes minutes at millions of persons).
    """
    serving = serving_run(ctx.engine, "commissioning") if run_id is None \
        else complete_run(ctx.engine, run_id)
    if serving is None:
        raise NoScoreRun(f"no complete score run {run_id}" if run_id else
                         "no score run yet: run `haven score` first")
    run_id = serving.run_id
    files = ctx.settings.layout.run(run_id)
    progress(f"counting whom run {run_id} covers")
    withheld = withheld_person_keys(ctx.settings, ctx.engine, serving.purpose, serving)
    # The counts first, holding none of the run's rows: DuckDB's count over the whole link map
    # (up to its memory limit) and the evaluation's frames of a whole population are never
    # in memory at once (issue #12: at 3M persons they were, together).
    counts = run_counts(ctx.settings, ctx.engine, serving, files.scores,
                        _extract_ids(files), withheld_now=_withheld_count(files, withheld))
    applied = optouts_applied(ctx.engine)  # in force today, as use_filter's defaults
    progress(f"reading linked, pseudonymised data for {serving.purpose} (the opt-outs in force "
             "today)")
    with linked_copy(ctx, purpose_rows(ctx, serving.purpose, applied), progress) as sources:
        # The run's rows are read once the copy is made: making it (a batch of rows and
        # DuckDB's memory) and a whole population's scores are not held at once.
        run, _ = _run_rows(files, withheld)
        status = follow_up(sources, run.at)
        evaluation: Evaluation | None
        if status.complete:
            progress(f"judging the run's {len(run.scores):,} persons on the year after "
                     f"{run.at.isoformat()}")
            evaluation = evaluate(run, sources, progress=progress)
        else:
            # The back-test reads only the run's date, seed, model and id: the run's rows are
            # let go while it trains and scores everyone a year earlier, and read again after.
            progress(f"the year after {run.at.isoformat()} is not complete: back-testing the "
                     "model a year earlier")
            meta = replace(run, scores=run.scores.iloc[:0], candidates=run.candidates.iloc[:0])
            del run
            try:
                evaluation = backtest(sources, meta, leave_out=withheld, progress=progress)
            except NoBacktest:
                evaluation = None
            run, _ = _run_rows(files, withheld)
    progress("writing the report and its figures")
    path = write_report(evaluation, out or ctx.settings.layout.report(run_id), run=run,
                        status=status, counts=counts, approval=approval_of(ctx, serving))
    audit.log(ctx.engine, ctx.actor, "model.report", f"run/{run_id}",
              n_records=int(len(run.scores)), purpose=serving.purpose,
              detail={"evaluation": evaluation.kind if evaluation else "none",
                      "outcome_year_complete": status.complete})
    return path


def _extract_ids(files: RunFiles) -> dict[str, list[str]]:
    """The extracts the run at `files` read, from its description (none of its rows)."""
    return dict(json.loads(files.description.read_text(encoding="utf-8"))["extract_ids"])


def _withheld_count(files: RunFiles, withheld: set[str]) -> int:
    """How many of the run's persons `withheld` holds back now, counted in Arrow over its
    person keys alone (the keys of a run's scores are distinct)."""
    if not withheld:
        return 0
    keys = pq.read_table(files.scores, columns=["person_key"]).column("person_key")
    return int(pc.sum(pc.is_in(keys, value_set=pa.array(sorted(withheld), pa.string())))
               .as_py() or 0)


def _run_rows(files: RunFiles, withheld: set[str]) -> tuple[ScoreRun, int]:
    """The run at `files` with the scores' `REPORT_COLUMNS`, less the persons `withheld`
    now, and how many of its persons that withholds."""
    run = load_run(files, columns=list(REPORT_COLUMNS))
    held = run.scores["person_key"].isin(withheld)
    withheld_now = int(held.sum())  # the keys of a run's scores are distinct
    if withheld_now:  # (no copy of a whole population's rows to hold none back)
        run = replace(run, scores=run.scores[~held])
    return run, withheld_now


def approval_of(ctx: Context, serving: ServingRun) -> dict[str, Any] | None:
    """The clinical safety decision on the model that scored `serving`: its summary's own
    `approval`, else the model's record (governance.model_approvals) by its `model_id`; None
    when neither says (a run scored before models were recorded)."""
    found = serving.summary.get("approval")
    if isinstance(found, dict):
        return found
    model_id = serving.summary.get("model_id")
    record = model_approvals.get_model(ctx.engine, str(model_id)) if model_id else None
    if record is None:
        return None
    return {"model_id": record["model_id"], "status": record.get("status"),
            "decided_by_role": record.get("decided_role"),
            "decided_at": record.get("decided_at"), "reason": record.get("reason"),
            "retrain_flag": record.get("retrain_flag")}


def evaluation_figures(ctx: Context, run_id: str) -> dict | None:
    """The figures of the run's evaluation as `model_report` wrote them (None when it has not
    been evaluated yet)."""
    path = ctx.settings.layout.report(run_id) / EVALUATION_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def what_was_judged(report: Path) -> str:
    """One line saying what the report at `report` judged: the run's own outcome year, the
    back-test the model was chosen on (the year after the run has not happened), or nothing."""
    try:
        figures = json.loads((report.parent / EVALUATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no evaluation: neither the year after the run nor a back-test year is in the data"
    if figures.get("kind") == "backtest":
        return (f"back-test: the outcome year after the run has not happened, so the model "
                f"procedure is judged one year earlier, on the year from {figures['judged_at']}")
    return f"prospective: the run judged on the year after {figures.get('at')}"
