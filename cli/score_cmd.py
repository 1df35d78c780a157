"""`haven score`, `haven scores export`, `haven model report`: risk runs over the linked data."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import typer
from rich.console import Console

from pipeline.report import model_report
from pipeline.score import NoScoreRun, NothingToScore, UnknownModel, export_scores, score


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
        try:
            result = score(ctx.obj, day, seed=seed, model=model, progress=console.print)
        except UnknownModel as exc:
            raise typer.BadParameter(str(exc), param_hint="--model") from exc
        except NothingToScore as exc:
            console.print(f"[red]not scored[/]: {exc}")
            raise typer.Exit(code=1) from None
        console.print(f"tiers {json.dumps(result.tiers)}")

    scores = typer.Typer(help="Risk scores of the run serving commissioning.")

    @scores.command("export")
    def export(ctx: typer.Context,
               out: Path = typer.Option(..., "--out", help="FILE.parquet or FILE.csv")) -> None:
        """Write person_key, probability, tier, reasons of the run the API serves, without
        the persons it holds back."""
        try:
            run_id, count = export_scores(ctx.obj, out)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--out") from exc
        except NoScoreRun as exc:
            raise typer.BadParameter(str(exc)) from exc
        Console().print(f"wrote {count:,} scores of run {run_id} to {out}")

    model = typer.Typer(help="The risk model.")

    @model.command("report")
    def report(ctx: typer.Context, run: str = typer.Option(None, "--run"),
               out: Path = typer.Option(None, "--out")) -> None:
        """Evaluate a run on the year after its date: Markdown and PNG plots."""
        try:
            path = model_report(ctx.obj, run, out)
        except NoScoreRun as exc:
            raise typer.BadParameter(str(exc)) from exc
        Console().print(f"model report written to {path}")

    app.add_typer(scores, name="scores")
    app.add_typer(model, name="model")
