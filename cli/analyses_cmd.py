"""`haven journeys --at DATE`, `haven costs --year YEAR`, `haven segments --at DATE`: the
analyses of issue #14 parts 1-3 (pipeline.analyses), each printing what it did and the headline
published table."""

from __future__ import annotations

import datetime as dt

import typer
from rich.console import Console
from rich.table import Table

from pipeline.analyses import (
    AnalysisResult,
    NothingToAnalyse,
    published,
    run_costs,
    run_journeys,
    run_segments,
)
from pipeline.context import Context

HEADLINE = {"journeys": "flow_91d", "costs": "spend_by_tier", "segments": "segment_shares"}


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter("--at must be a date YYYY-MM-DD", param_hint="--at") from exc


def _show(context: Context, result: AnalysisResult, console: Console) -> None:
    """Print the run's headline published table (suppressed as published)."""
    _, tables = published(context, result.kind)
    name = HEADLINE[result.kind]
    frame = tables[name]
    table = Table(title=f"{result.kind}: {name} (published: 1-7 shown as *, others rounded)")
    table.add_column(frame.index.name or "")
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for row, values in frame.iterrows():
        table.add_row(str(row), *(str(v) for v in values))
    console.print(table)


def _run(context: Context, console: Console, work) -> None:  # noqa: ANN001 - a closure
    try:
        result = work()
    except NothingToAnalyse as exc:
        console.print(f"[red]not run[/]: {exc}")
        raise typer.Exit(code=1) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _show(context, result, console)


def register(app: typer.Typer) -> None:
    @app.command("journeys")
    def journeys(ctx: typer.Context,
                 at: str = typer.Option(..., "--at", help="End of the period (YYYY-MM-DD): "
                                                          "discharges in the months before."),
                 months: int = typer.Option(12, "--months", help="Length of the period.")
                 ) -> None:
        """Journeys after every discharge of a person 65+: pathway 0-3 and what followed."""
        day, console = _day(at), Console()
        _run(ctx.obj, console, lambda: run_journeys(ctx.obj, day, months,
                                                    progress=console.print))

    @app.command("costs")
    def costs(ctx: typer.Context,
              year: int = typer.Option(..., "--year", help="Financial year from April YEAR "
                                                           "(2024 = 2024/25).")) -> None:
        """Each person's spend across health and social care in a financial year."""
        console = Console()
        _run(ctx.obj, console, lambda: run_costs(ctx.obj, year, progress=console.print))

    @app.command("segments")
    def segments(ctx: typer.Context,
                 at: str = typer.Option(..., "--at", help="Reference date (YYYY-MM-DD).")
                 ) -> None:
        """Everyone in one Bridges to Health segment, with shares of persons and spend."""
        day, console = _day(at), Console()
        _run(ctx.obj, console, lambda: run_segments(ctx.obj, day, progress=console.print))
