"""`haven synth`: write a synthetic population's extracts for demos, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import typer

from synth.generator import DEFAULT_CHUNK, generate


def synth_command(
    persons: int = typer.Option(10000, "--persons", help=(
        "How many people (at most 9,090,909: the never-issued 990-999 NHS number range).")),
    seed: int = typer.Option(1, "--seed", help="Same seed, same bytes."),
    out: Path = typer.Option(..., "--out", help="Directory for the extracts (truth/ apart)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar, a one-line summary."),
    chunk: int = typer.Option(DEFAULT_CHUNK, "--chunk", min=1, help=(
        "Persons drawn and held in memory at once: peak memory follows the chunk, not the "
        "population. Same seed and chunk, same bytes.")),
) -> None:
    """Write synthetic extracts (one per source, with manifests) and ground truth under OUT."""
    try:
        summary = generate(persons, seed, out, progress=not quiet, chunk=chunk)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--persons") from exc
    files = summary["files"]
    if quiet:
        typer.echo(f"wrote {len(files)} extracts ({summary['rows']} rows) to {summary['out']} "
                   f"in {summary['chunks']} chunk(s) of at most {chunk} persons; "
                   f"truth in {summary['truth']['dir']}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"synthetic extracts in {summary['out']}")
    for name in ("file", "source", "sender"):
        table.add_column(name)
    table.add_column("rows", justify="right")
    for f in files:
        table.add_row(f["file"], f["source"], f["sender"], f"{f['rows']:,}")
    console = Console()
    console.print(table)
    console.print(f"{summary['persons']:,} persons, seed {summary['seed']}, history "
                  f"{summary['history_start']}..{summary['score_date']} (score date), outcome "
                  f"year to {summary['period_end']}; {summary['rows']:,} rows in "
                  f"{summary['seconds']} s, {summary['chunks']} chunk(s) of at most "
                  f"{chunk:,} persons")
    console.print(f"ground truth (evaluation only, never for the pipeline): "
                  f"{summary['truth']['dir']}")
