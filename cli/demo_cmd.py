"""`haven demo`: the whole job on the embedded default, from synthetic extracts to the API.

synthetic extracts -> land -> link -> score -> model report -> demo users -> serve.
Each stage prints what it did; a re-run reuses what is already there (landing recognises
files it has landed, linkage only adds what is new).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import typer
from rich.console import Console

from cli.context import Haven
from cli.link_cmd import run_link
from cli.score_cmd import run_score, write_model_report
from linkage.landing.land import LandingContext, land_path

DEMO_USERS = (
    ("ana.analyst", "X26", "analyst"),
    ("sam.superuser", "X26", "super_user"),
    ("dr.mdt", "PRACTICE", "mdt_clinician"),  # the synthetic population's first practice
    ("ivy.iglead", "X26", "ig_lead"),
    ("ada.admin", "X26", "admin"),
    ("carl.council", "E08000035", "council_uploader"),
)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        ctx: typer.Context,
        persons: int = typer.Option(20_000, "--persons"),
        seed: int = typer.Option(1, "--seed"),
        out: Path = typer.Option(Path("demo/extracts"), "--out",
                                 help="Where the synthetic extracts are written."),
        serve: bool = typer.Option(True, "--serve/--no-serve",
                                   help="End by serving the API with one user per role."),
        port: int = typer.Option(8000, "--port"),
    ) -> None:
        """Run the main job end to end on synthetic data, then serve the API."""
        haven: Haven = ctx.obj
        console = Console()
        meta_path = out / "truth" / "meta.json"
        fresh = True
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            fresh = (meta.get("persons"), meta.get("seed")) != (persons, seed)
        if fresh:
            from synth import generate

            console.rule("1. synthetic extracts")
            generate(persons, seed, out, progress=True)
            meta = json.loads(meta_path.read_text())
        console.print(f"extracts for {persons:,} synthetic persons in {out}")
        console.rule("2. land")
        landing = LandingContext(haven.settings, haven.engine, haven.keys, haven.actor)
        for receipt in land_path(landing, out):
            counts = receipt.counts
            console.print(f"  {receipt.status:<9} {receipt.file:<28} "
                          f"{counts.get('landed', 0):>10,} rows landed, "
                          f"{counts.get('rejected', 0):>5,} rejected")
        console.rule("3. link")
        summary = run_link(haven, console)
        console.print(f"  {summary.rows:,} rows in the person index; "
                      f"{summary.review_pairs:,} pairs for review; quality {summary.quality}")
        console.rule("4. score")
        at = dt.date.fromisoformat(meta["score_date"])
        result = run_score(haven, at, console=console)
        console.print(f"  run {result['run_id']}: {result['persons']:,} persons, model "
                      f"{result['model']}, tiers {result['tiers']}")
        console.rule("5. model report")
        console.print(f"  {write_model_report(haven, result['run_id'], None)}")
        if not serve:
            return
        console.rule("6. serve")
        from cli.main import main

        environ = {"HAVEN_HOME": str(haven.settings.home),
                   "HAVEN_DATABASE_URL": haven.settings.database_url,
                   **haven.settings.key_env}
        from synth.population import PRACTICES

        for name, org, role in DEMO_USERS:
            org = PRACTICES[0].code if org == "PRACTICE" else org
            main(["users", "add", name, "--org", org, "--role", role, "--replace"], environ)
        main(["serve", "--port", str(port)], environ)
