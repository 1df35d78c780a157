"""The back-test a run's model was chosen on, as a full evaluation, for when its own outcome year
has not happened yet.

A run at `at` learns from features at `at - 12 months` and admissions up to `at`; its
candidates were compared by fitting at `at - 24 months` and judging on the year from
`at - 12 months` to `at` (stratify.train). When the year after `at` is not in the data, that
back-test year is the most recent one whose outcomes are known, so the report shows it:
`backtest(sources, run)` runs the run's own training procedure one year earlier
(`train(con, at - 12 months)`: fit on features at `at - 24 months` with admissions to
`at - 12 months`, calibrated on held-out persons), scores everyone registered at
`at - 12 months` with the run's chosen candidate (`score` with that bundle), and evaluates it on
emergency admissions in the year up to `at`. Nothing on or after `at` is read; the run's seed is
reused, so the back-test is as deterministic as the run.

Given an on-disk copy of the sources (`features.OnDisk`, as the model report passes), the
back-test's scores are written a batch at a time into the copy's workspace
(`scoring.score(out=...)`) and only the columns the evaluation reads are read back (issue #12:
the whole population's scores, reasons and conditions text included, were held in memory);
the evaluation is the same as from the scores kept in memory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pandas as pd

from governance.layout import RunFiles
from stratify.bootstrap import RESAMPLES
from stratify.evaluate import Evaluation, evaluate
from stratify.features import OnDisk, Sources, connect
from stratify.outcomes import OUTCOME_MONTHS
from stratify.progress import Progress, quiet
from stratify.scoring import ScoreRun, score
from stratify.sources import EMERGENCY_METHODS, add_months
from stratify.train import train


class NoBacktest(ValueError):
    """The data do not reach back far enough (or hold no admissions) for a back-test."""


def backtest_dates(at: dt.date, months: int = OUTCOME_MONTHS) -> tuple[dt.date, dt.date]:
    """(fit date, judged date) of the back-test of a run at `at`."""
    return add_months(at, -2 * months), add_months(at, -months)


def backtest(sources: Sources, run: ScoreRun, months: int = OUTCOME_MONTHS,
             resamples: int = RESAMPLES, max_train_persons: int | None = 400_000,
             leave_out: set[str] | None = None, progress: Progress = quiet) -> Evaluation:
    """The back-test evaluation of `run` (see the module docstring); NoBacktest when the data
    hold no emergency admission in either year the back-test needs. Persons of `leave_out`
    (person keys a release must hold back now) are in none of its figures. `progress` is
    told the training's, scoring's and evaluation's steps."""
    fit_at, judged_at = backtest_dates(run.at, months)
    con = connect(sources)
    try:
        methods = ", ".join(f"'{m}'" for m in EMERGENCY_METHODS)
        counts = con.execute(f"""SELECT
            count(*) FILTER (WHERE admission_date >= DATE '{fit_at}'
                             AND admission_date < DATE '{judged_at}'),
            count(*) FILTER (WHERE admission_date >= DATE '{judged_at}'
                             AND admission_date < DATE '{run.at}')
            FROM v_apc WHERE admission_method IN ({methods})""").fetchone()
        if not counts or not counts[0] or not counts[1]:
            raise NoBacktest(f"no back-test: hospital records hold no emergency admission in "
                             f"{fit_at} to {judged_at} or in {judged_at} to {run.at}")
        bundle = train(con, judged_at, run.seed, max_train_persons=max_train_persons,
                       progress=progress)
    finally:
        con.close()
    model = run.model if run.model in bundle.models else None
    out = sources.folder if isinstance(sources, OnDisk) else None
    past: ScoreRun = score(sources, judged_at, seed=run.seed, bundle=bundle, model=model,
                           out=out, progress=progress)
    if out is not None:
        past = _read_back(past, RunFiles(out))
    kept = ~past.scores["person_key"].isin(leave_out or set())
    past = dataclasses.replace(past, run_id=run.run_id, scores=past.scores[kept])
    ev = evaluate(past, sources, months=months, resamples=resamples, seed=run.seed,
                  progress=progress)
    return dataclasses.replace(ev, at=run.at, kind="backtest", judged_at=judged_at)


# The scores' columns `evaluate` reads (its `used`): a back-test written to files reads back
# only these, not the reasons and conditions text of a whole population.
EVALUATED = ["person_key", "probability", "tier", "sex", "sources", "age_band",
             "social_care_known"]


def _read_back(past: ScoreRun, files: RunFiles) -> ScoreRun:
    """The back-test run `past`, whose scores and candidates were written to `files` (a
    scratch workspace), with the scores' `EVALUATED` columns and the candidates read back;
    the files are removed once read (the workspace itself goes with the stage)."""
    scores = pd.read_parquet(files.scores, columns=EVALUATED)
    candidates = pd.read_parquet(files.candidates)
    files.scores.unlink()
    files.candidates.unlink()
    return dataclasses.replace(past, scores=scores, candidates=candidates, written=None)
