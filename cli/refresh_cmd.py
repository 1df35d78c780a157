"""`haven refresh EXTRACTS --at DATE`: the monthly refresh with drift watch (pipeline.refresh)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer
from rich.console import Console

from pipeline.refresh import NoApprovedModel, refresh
from pipeline.score import NothingToScore


def register(app: typer.Typer) -> None:
    @app.command("refresh")
    def refresh_command(
        ctx: typer.Context,
        extracts: Path = typer.Argument(..., help="What arrived: an extract file (manifest "
                                                  "beside it) or a folder, as `haven land`."),
        at: str = typer.Option(..., "--at", help="Reference date to score at (YYYY-MM-DD)."),
        retrain_linkage: bool = typer.Option(
            False, "--retrain-linkage", help="train the linkage models again (by default the "
            "link reuses the kept ones while policies/drift.json allows)"),
    ) -> None:
        """Land what arrived, link, score with the approved model and report drift against
        the run before (warnings past `policies/drift.json` are audited; a model whose
        performance falls past its threshold is flagged for retraining)."""
        try:
            day = dt.date.fromisoformat(at)
        except ValueError as exc:
            raise typer.BadParameter("--at must be a date YYYY-MM-DD", param_hint="--at") \
                from exc
        if not extracts.exists():
            raise typer.BadParameter(f"{extracts} does not exist", param_hint="EXTRACTS")
        console = Console()
        try:
            result = refresh(ctx.obj, extracts, day, progress=console.print,
                             retrain_linkage=retrain_linkage)
        except (NoApprovedModel, NothingToScore) as exc:
            console.print(f"[red]not refreshed[/]: {exc}")
            raise typer.Exit(code=1) from None
        console.print(f"run {result.run_id}: {result.persons:,} persons scored with approved "
                      f"model {result.model_id}; {result.landed} extracts landed, "
                      f"{result.refused} refused; {len(result.warnings)} drift warnings"
                      + ("; model flagged for retraining" if result.retrain else ""))
        if result.refused:
            raise typer.Exit(code=1)
