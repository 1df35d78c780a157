"""`haven link`: build or update the person index; `haven link export`: the auditable map."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from sqlalchemy import insert

from cli.context import Haven
from governance import audit
from governance.schema import runs
from linkage import person_index
from linkage.index_matcher import estimate_quality, match_profiles


def run_link(haven: Haven, console: Console | None = None) -> person_index.LinkSummary:
    """Update the index, record the run and audit it; shared by the CLI, demo and API jobs."""
    say = console.print if console else None
    summary = person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"),
                                  match_profiles, progress=say, quality=estimate_quality)
    run_id = f"link-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    with haven.engine.begin() as connection:
        connection.execute(insert(runs).values(
            run_id=run_id, kind="link", at=datetime.now(UTC), status="complete",
            extract_ids=sorted(person_index.read_link_map(
                haven.settings, columns=["extract_id"])["extract_id"].unique().tolist()),
            summary=summary.to_json()))
        audit.record(connection, haven.actor, "link.run", f"run/{run_id}",
                     n_records=summary.rows,
                     detail={"added": len(summary.extracts_added),
                             "removed": len(summary.extracts_removed),
                             "review_pairs": summary.review_pairs})
    return summary


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Link landed rows into persons (the person index).",
                        invoke_without_command=True)

    @group.callback()
    def link(ctx: typer.Context) -> None:
        """Build or update the person index over everything landed."""
        if ctx.invoked_subcommand is not None:
            return
        haven: Haven = ctx.obj
        console = Console()
        summary = run_link(haven, console)
        console.print(f"person index: {summary.rows:,} rows; "
                      f"{len(summary.extracts_added)} extracts added, "
                      f"{len(summary.extracts_removed)} removed; "
                      f"{summary.review_pairs:,} pairs for review")
        for source, methods in sorted(summary.by_source_method.items()):
            parts = ", ".join(f"{m} {n:,}" for m, n in sorted(methods.items()))
            console.print(f"  {source}: {parts}")
        for name, value in summary.quality.items():
            console.print(f"  quality {name}: {value}")
        console.print(f"written to {haven.settings.index_dir}")

    @group.command("export")
    def export(ctx: typer.Context,
               out: Path = typer.Option(..., "--out", help="FILE.parquet or FILE.csv")) -> None:
        """Write one line per landed row: extract_id, source, row, person_key, method, weight."""
        haven: Haven = ctx.obj
        try:
            count = person_index.export(haven.settings, out)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--out") from exc
        audit.log(haven.engine, haven.actor, "link.export", "index/link_map", n_records=count)
        Console().print(f"wrote {count:,} rows to {out}")

    app.add_typer(group, name="link")
