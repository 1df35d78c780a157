"""`haven link-files`: the command-line face of `pipeline.link.link_files`.

`--field KIND=COL` may be repeated, and a KIND may be given more than once (each column becomes
its own compared field: `--field address=street --field address=town`).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from pipeline.link import FIELD_KINDS, link_files


def parse_fields(items: list[str]) -> dict[str, list[str]]:
    """`KIND=COL` strings -> {kind: [columns]}; typer.BadParameter naming the bad field."""
    fields: dict[str, list[str]] = {}
    for item in items:
        kind, sep, col = item.partition("=")
        kind, col = kind.strip(), col.strip()
        if not sep or not kind or not col:
            raise typer.BadParameter(f"{item!r} is not KIND=COL", param_hint="--field")
        if kind not in FIELD_KINDS:
            raise typer.BadParameter(
                f"{item!r}: unknown KIND {kind!r} (one of {', '.join(FIELD_KINDS)})",
                param_hint="--field")
        fields.setdefault(kind, []).append(col)
    return fields


def link_files_command(
    left: Path = typer.Argument(..., exists=True, dir_okay=False, help="person CSV file"),
    right: Path | None = typer.Argument(
        None, exists=True, dir_okay=False, help="second CSV; omit to deduplicate LEFT"),
    id: str = typer.Option(..., "--id", help="record id column (in both files)"),
    field: list[str] = typer.Option(..., "--field", help="KIND=COL, repeatable"),
    out: Path = typer.Option(..., "--out", help="CSV of matched pairs to write"),
) -> None:
    """Link two person CSV files (or deduplicate one) on keyed encodings; write matched pairs."""
    fields = parse_fields(field)
    console = Console(stderr=True)
    try:
        summary = link_files(left, right, id, fields, out, progress=console.print)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    records = f"{summary['left_records']:,}"
    if right is not None:
        records += f" x {summary['right_records']:,}"
    typer.echo(f"records: {records}; candidate pairs: {summary['candidate_pairs']:,}; "
               f"matched pairs: {summary['matches']:,}; review pairs: {summary['review']:,}")
    if "clusters" in summary:
        typer.echo(f"clusters of duplicates: {summary['clusters']:,} "
                   f"(largest {summary['largest_cluster']})")
    for warning in summary.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"matches written to {summary['out']}")
    typer.echo(f"review list written to {summary['review_out']}")
