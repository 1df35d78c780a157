"""`haven score`, `haven scores export`, `haven model report`: risk runs over the linked data."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console
from sqlalchemy import insert, select

from cli.context import Haven
from governance import audit, optouts
from governance.schema import runs
from linkage.linked_view import load_sources

RELEASE_COLUMNS = ["person_key", "probability", "tier", "reasons"]


def latest_run_id(haven: Haven) -> str | None:
    """The newest complete score run, which the API and exports serve."""
    with haven.engine.connect() as connection:
        return connection.scalar(
            select(runs.c.run_id).where(runs.c.kind == "score", runs.c.status == "complete")
            .order_by(runs.c.at.desc()).limit(1))


def run_score(haven: Haven, at: dt.date, seed: int = 0,
              console: Console | None = None, purpose: str = "commissioning",
              model: str | None = None) -> dict:
    """Score everyone at `at` and record the run; shared by the CLI, demo and API jobs.

    Rows the purpose may not use (opt-outs in force at `at`, by the policy table) are left out
    before anything is read by the model: for commissioning, a national data opt-out removes
    the person; a type 1 objection removes their GP data. `model` overrides the candidate
    chosen on validation (rule, logistic, boosting or blend).
    """
    from stratify.scoring import save_run, score

    say = console.print if console else (lambda *_a, **_k: None)
    say(f"reading linked, pseudonymised data for {at.isoformat()} ({purpose})")
    sources = load_sources(haven.settings, haven.engine,
                           row_filter=optouts.purpose_filter(haven.engine, purpose, at))
    previous_id = latest_run_id(haven)
    previous = None
    if previous_id is not None:
        previous = pd.read_parquet(haven.settings.runs_dir / previous_id / "scores.parquet",
                                   columns=["person_key", "probability", "tier"])
    say(f"training on history before {at.isoformat()} and scoring "
        f"{sum(len(f) for f in sources.values()):,} linked rows")
    # Opt-outs were applied above, by the policy table, so the model reads only what it may.
    run = score(sources, at, seed=seed, previous=previous, respect_optouts=False, model=model)
    folder = save_run(run, haven.settings.runs_dir / run.run_id)
    used = sorted({e for ids in run.extract_ids.values() for e in ids})
    with haven.engine.begin() as connection:
        connection.execute(runs.delete().where(runs.c.run_id == run.run_id))
        connection.execute(insert(runs).values(
            run_id=run.run_id, kind="score", at=dt.datetime.now(dt.UTC), status="complete",
            extract_ids=used, summary={"at": at.isoformat(), "model": run.model,
                                       "purpose": purpose,
                                       "model_version": run.model_version,
                                       "persons": int(len(run.scores)),
                                       "thresholds": run.thresholds}))
        audit.record(connection, haven.actor, "score.run", f"run/{run.run_id}",
                     n_records=int(len(run.scores)), purpose=purpose,
                     detail={"model": run.model, "extracts": len(used),
                             "chosen_by": run.metrics.get("chosen_by", "validation")})
    return {"run_id": run.run_id, "folder": str(folder), "persons": int(len(run.scores)),
            "model": run.model, "tiers": run.metrics.get("tiers", {}),
            "thresholds": run.thresholds}


def write_model_report(haven: Haven, run_id: str | None, out: Path | None) -> Path:
    """Evaluate a run on the 12 months after its date (from landed data) and write the report."""
    from stratify.evaluate import evaluate
    from stratify.report import write_report
    from stratify.scoring import load_run

    run_id = run_id or latest_run_id(haven)
    if run_id is None:
        raise typer.BadParameter("no score run yet: run `haven score` first")
    run = load_run(haven.settings.runs_dir / run_id)
    sources = load_sources(haven.settings, haven.engine,
                           row_filter=optouts.purpose_filter(haven.engine, "commissioning",
                                                             run.at))
    evaluation = evaluate(run, sources)
    target = out or haven.settings.home / "reports" / run_id
    path = write_report(evaluation, target, run=run)
    audit.log(haven.engine, haven.actor, "model.report", f"run/{run_id}",
              n_records=int(len(run.scores)), purpose="commissioning")
    return path


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score_command(
        ctx: typer.Context,
        at: str = typer.Option(..., "--at", help="Reference date (YYYY-MM-DD)."),
        seed: int = typer.Option(0, "--seed"),
        model: str | None = typer.Option(
            None, "--model", help="Score with this candidate (rule, logistic, boosting, blend) "
                                  "instead of the best on validation."),
    ) -> None:
        """Train on the years before DATE, score everyone alive and registered at DATE."""
        try:
            day = dt.date.fromisoformat(at)
        except ValueError as exc:
            raise typer.BadParameter("--at must be a date YYYY-MM-DD", param_hint="--at") \
                from exc
        console = Console()
        from stratify.scoring import UnknownModel

        try:
            result = run_score(ctx.obj, day, seed, console, model=model)
        except UnknownModel as exc:
            raise typer.BadParameter(str(exc), param_hint="--model") from exc
        console.print(f"score run {result['run_id']}: {result['persons']:,} persons, "
                      f"model {result['model']}; tiers {json.dumps(result['tiers'])}; "
                      f"written to {result['folder']}")

    scores = typer.Typer(help="Risk scores of the latest run.")

    @scores.command("export")
    def export(ctx: typer.Context,
               out: Path = typer.Option(..., "--out", help="FILE.parquet or FILE.csv")) -> None:
        """Write person_key, probability, tier, reasons of the latest run."""
        haven: Haven = ctx.obj
        run_id = latest_run_id(haven)
        if run_id is None:
            raise typer.BadParameter("no score run yet: run `haven score` first")
        frame = pd.read_parquet(haven.settings.runs_dir / run_id / "scores.parquet",
                                columns=RELEASE_COLUMNS)
        if out.suffix.lower() == ".csv":
            frame.to_csv(out, index=False)
        elif out.suffix.lower() == ".parquet":
            frame.to_parquet(out, index=False)
        else:
            raise typer.BadParameter("--out must end in .csv or .parquet", param_hint="--out")
        audit.log(haven.engine, haven.actor, "scores.export", f"run/{run_id}",
                  n_records=len(frame), purpose="commissioning")
        Console().print(f"wrote {len(frame):,} scores of run {run_id} to {out}")

    model = typer.Typer(help="The risk model.")

    @model.command("report")
    def report(ctx: typer.Context, run: str = typer.Option(None, "--run"),
               out: Path = typer.Option(None, "--out")) -> None:
        """Evaluate a run on the year after its date: Markdown and PNG plots."""
        path = write_model_report(ctx.obj, run, out)
        Console().print(f"model report written to {path}")

    app.add_typer(scores, name="scores")
    app.add_typer(model, name="model")
