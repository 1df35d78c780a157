"""`haven link`: build or update the person index; `haven link export`: the auditable map."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from pipeline.context import Context
from pipeline.link import export_link_map, link


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Link landed rows into persons (the person index).",
                        invoke_without_command=True)

    @group.callback()
    def link_command(ctx: typer.Context, retrain: bool = typer.Option(
            False, "--retrain", help="forget every kept linkage model: each source's is trained "
            "again when its rows are next linked, this run's now (by default a model kept "
            "from an earlier run is reused while policies/drift.json allows)"),
            ) -> None:
        """Build or update the person index over everything landed."""
        if ctx.invoked_subcommand is not None:
            return
        console = Console()
        summary = link(ctx.obj, progress=console.print, retrain=retrain)
        for source, methods in sorted(summary.by_source_method.items()):
            parts = ", ".join(f"{m} {n:,}" for m, n in sorted(methods.items()))
            console.print(f"  {source}: {parts}")
        for name, value in summary.quality.items():
            console.print(f"  quality {name}: {value}")

    @group.command("export")
    def export(ctx: typer.Context,
               out: Path = typer.Option(..., "--out", help="FILE.parquet or FILE.csv")) -> None:
        """Write one line per landed row: extract_id, source, row, person_key, method, weight."""
        context: Context = ctx.obj
        try:
            count = export_link_map(context, out)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--out") from exc
        Console().print(f"wrote {count:,} rows to {out}")

    app.add_typer(group, name="link")
