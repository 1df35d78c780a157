"""`haven evaluate`, `haven forecast`, `haven emergency vulnerable`: did it work, what is
coming, and who is vulnerable where (issue 14 parts 4-6; docs/impact.md)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipeline.impact import OUTCOMES, CohortError, TooSmall, evaluate, forecast
from pipeline.incidents import vulnerable


def _date(text: str | None, option: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{option} must be a date YYYY-MM-DD", param_hint=option) \
            from exc


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_command(
        ctx: typer.Context,
        cohort: Path = typer.Argument(..., help="CSV with person_key,start_date"),
        outcome: list[str] = typer.Option(
            list(OUTCOMES), "--outcome",
            help=f"Outcome to estimate (repeat): {', '.join(OUTCOMES)}."),
        months: int = typer.Option(12, "--months", min=1, max=36,
                                   help="Months before and after each start."),
        ratio: int = typer.Option(1, "--ratio", min=1, max=5,
                                  help="Comparison persons per cohort member."),
    ) -> None:
        """Compare a cohort with a matched comparison group before and after its start."""
        console = Console()
        try:
            text = cohort.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise typer.BadParameter("cannot read the cohort file as UTF-8 text",
                                     param_hint="COHORT") from exc
        unknown = sorted(set(outcome) - set(OUTCOMES))
        if unknown:
            raise typer.BadParameter(f"{unknown[0]!r} is not one of {', '.join(OUTCOMES)}",
                                     param_hint="--outcome")
        try:
            _, result = evaluate(ctx.obj, text, outcomes=tuple(dict.fromkeys(outcome)),
                                 months=months, ratio=ratio, progress=console.print)
        except (CohortError, TooSmall) as exc:
            console.print(f"[red]not evaluated[/]: {exc}")
            raise typer.Exit(code=2) from None
        console.print(result["statement"])
        table = Table(title=f"per person, {months} months before and after the start: "
                            "difference in differences with 95% CI")
        for column in ("outcome", "cohort before", "after", "comparison before", "after",
                       "effect", "95% CI"):
            table.add_column(column, no_wrap=True)
        for row in result["estimates"]:
            table.add_row(row["outcome"], *(f"{row[c]:,.2f}" for c in (
                "cohort_before", "cohort_after", "comparison_before", "comparison_after",
                "effect")), f"{row['ci_low']:,.2f} to {row['ci_high']:,.2f}")
        console.print(table)
        console.print(f"{result['matched']:,} of {result['cohort']:,} matched with "
                      f"{result['comparison']:,} comparison persons; largest |SMD| after "
                      f"matching {result['largest_smd_after']}; {result['seconds']} s")

    @app.command("forecast")
    def forecast_command(
        ctx: typer.Context,
        weeks: int = typer.Option(12, "--weeks", min=1, max=52),
        until: str | None = typer.Option(None, "--until",
                                         help="Last day of data (default: the data's end)."),
    ) -> None:
        """Weekly demand by locality, forecast with intervals, back-tested on the last year."""
        console = Console()
        _, result = forecast(ctx.obj, weeks=weeks, until=_date(until, "--until"),
                             progress=console.print)
        table = Table(title=f"back-test: {weeks}-week forecasts over the last 52 weeks")
        for column in ("series", "forecasts", "mae", "mape", "wape", "coverage80",
                       "coverage95"):
            table.add_column(column, no_wrap=column == "series")
        for row in result["backtest"]:
            table.add_row(*(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c])
                            for c in ("series", "forecasts", "mae", "mape", "wape",
                                      "coverage80", "coverage95")))
        console.print(table)

    emergency = typer.Typer(help="Emergency planning: vulnerable adults by postcode sector.")

    @emergency.command("vulnerable")
    def vulnerable_command(
        ctx: typer.Context,
        at: str | None = typer.Option(None, "--at", help="Reference date (default today)."),
    ) -> None:
        """Count vulnerable adults by postcode sector, suppressed, for planners."""
        console = Console()
        _, result = vulnerable(ctx.obj, _date(at, "--at"), progress=console.print)
        console.print(f"frailty: {result['frailty']}")

    app.add_typer(emergency, name="emergency")
