"""`haven score`, `haven scores export`, `haven model report|list|approve|reject`: risk runs
over the linked data, and the clinical safety decision on each model before it serves."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from governance import model_approvals
from pipeline.report import model_report, what_was_judged
from pipeline.score import (
    NoOneToScore,
    NoScoreRun,
    NothingToScore,
    RunIdTaken,
    TooLittleHistory,
    UnknownModel,
    export_scores,
    score,
)


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
        except (NothingToScore, RunIdTaken, TooLittleHistory, NoOneToScore) as exc:
            console.print(f"[red]not scored[/]: {exc}")
            raise typer.Exit(code=1) from None
        console.print(f"tiers {json.dumps(result.tiers)}")
        console.print(f"model {result.model_id}: {result.model_status}")

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
        """Evaluate a run on the year after its date, or, before that year has happened, show the
        back-test its model was chosen on: Markdown and PNG plots."""
        try:
            path = model_report(ctx.obj, run, out, progress=Console().print)
        except NoScoreRun as exc:
            raise typer.BadParameter(str(exc)) from exc
        Console().print(f"model report written to {path}\n{what_was_judged(path)}")

    @model.command("list")
    def list_command(ctx: typer.Context,
                     as_json: bool = typer.Option(False, "--json")) -> None:
        """Every model: candidate, approved or rejected, who decided, when and why."""
        found = model_approvals.list_models(ctx.obj.engine)
        if as_json:
            typer.echo(json.dumps(found))
            return
        table = Table("model", "status", "algorithm", "trained by run", "decided by",
                      "decided at", "reason", "retrain", expand=False)
        for column in table.columns[:4]:
            column.no_wrap = True
        for row in found:
            table.add_row(row["model_id"], row["status"], row["algorithm"], row["run_id"],
                          f"{row['decided_by'] or ''} {row['decided_role'] or ''}".strip(),
                          row["decided_at"] or "", row["reason"] or "",
                          "flagged" if row["retrain_flag"] else "")
        console = Console()
        console.print(table)
        console.print(f"{len(found)} models; in force: "
                      f"{(model_approvals.in_force(ctx.obj.engine) or {}).get('model_id', 'none')}")

    def _decide(ctx: typer.Context, model_id: str, decision: str, reason: str,
                user: str) -> None:
        engine = ctx.obj.engine
        try:
            actor = model_approvals.acting_user(engine, user)
            done = model_approvals.decide(engine, actor, model_id, decision, reason)
        except model_approvals.NotAllowed as exc:
            Console(stderr=True).print(f"[red]refused[/]: {exc} (audited)")
            raise typer.Exit(code=3) from None
        except model_approvals.ModelError as exc:
            raise typer.BadParameter(str(exc)) from exc
        Console().print(f"model {done['model_id']} {done['status']} by {done['decided_by']} "
                        f"({done['decided_role']}) at {done['decided_at']}; audited")

    @model.command("approve")
    def approve(ctx: typer.Context, model_id: str = typer.Argument(..., metavar="ID"),
                reason: str = typer.Option(..., "--reason", help="Why (3-500 characters)."),
                user: str = typer.Option(..., "--as", help="The clinical safety officer "
                                         "deciding (a user of `haven users add`).")) -> None:
        """Approve a candidate model: its runs serve from now on (clinical safety officer)."""
        _decide(ctx, model_id, "approve", reason, user)

    @model.command("reject")
    def reject(ctx: typer.Context, model_id: str = typer.Argument(..., metavar="ID"),
               reason: str = typer.Option(..., "--reason", help="Why (3-500 characters)."),
               user: str = typer.Option(..., "--as", help="The clinical safety officer "
                                        "deciding (a user of `haven users add`).")) -> None:
        """Reject a candidate model: it never serves; the model in force keeps serving."""
        _decide(ctx, model_id, "reject", reason, user)

    app.add_typer(scores, name="scores")
    app.add_typer(model, name="model")
