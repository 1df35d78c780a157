"""`haven land`: land extracts and print their receipts."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from pipeline.context import Context
from pipeline.land import land


def land_command(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="An extract file (manifest beside it) or a folder."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file."),
    remove: bool = typer.Option(False, "--remove",
                                help="Delete each inbound file once landed or refused."),
) -> None:
    """Check extracts against their contract, pseudonymise them and land them."""
    context: Context = ctx.obj
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist", param_hint="PATH")
    console = Console(stderr=as_json)
    receipts = land(context, path, remove=remove)
    for receipt in receipts:
        if as_json:
            typer.echo(json.dumps(receipt.to_json(), default=str))
            continue
        counts = receipt.counts
        if receipt.status == "landed":
            console.print(
                f"[green]landed[/] {receipt.file} as {receipt.extract_id}: "
                f"{counts['landed']:,} of {counts['received']:,} rows, "
                f"{counts['rejected']:,} rejected, {counts['dropped_no_consent']:,} dropped "
                f"(no consent), {counts['nhs_invalid']:,} invalid NHS numbers; "
                f"destroy after {receipt.retention_date}")
            for reason, n in list(counts["rejected_by_reason"].items())[:5]:
                console.print(f"    {n:,} × {reason}")
        elif receipt.status == "duplicate":
            console.print(f"[yellow]duplicate[/] {receipt.file}: already landed as "
                          f"{receipt.extract_id}")
        else:
            console.print(f"[red]refused[/] {receipt.file}: {receipt.reason}")
    if not as_json:
        landed = sum(r.status == "landed" for r in receipts)
        console.print(f"{landed} landed, {sum(r.status == 'refused' for r in receipts)} refused, "
                      f"{sum(r.status == 'duplicate' for r in receipts)} duplicate; "
                      f"data in {context.settings.layout.extracts_dir}")
    if any(r.status == "refused" for r in receipts):
        raise typer.Exit(code=1)
