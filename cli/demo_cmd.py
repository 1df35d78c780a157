"""`haven demo`: the whole job on the embedded default, from synthetic extracts to the API.

synthetic extracts -> land -> link -> score -> model report (pipeline.demo), then one demo user
per role (a sign-in link each for the pages) and the API.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from pipeline.context import Context
from pipeline.demo import demo_users, run_demo


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
        context: Context = ctx.obj
        console = Console()
        result = run_demo(context, persons, seed, out, progress=console.print)
        console.print(f"run {result.score.run_id}: {result.score.persons:,} persons, model "
                      f"{result.score.model}, tiers {result.score.tiers}")
        if not serve:
            return
        console.rule("6. serve")
        from cli.main import main

        environ = {"HAVEN_HOME": str(context.settings.home),
                   "HAVEN_DATABASE_URL": context.settings.database_url,
                   **context.settings.key_env}
        from api.authz import AccessPolicy
        from api.users import add_user

        roles = AccessPolicy(context.engine, context.settings).roles()
        pages = f"http://127.0.0.1:{port}/pages/"
        console.print(f"Haven's pages: {pages}  (sign in with a token below; each link carries "
                      "it after #, which the browser never sends to the server)")
        for name, org, role in demo_users():
            token = add_user(context.engine, context.actor, name, org, [role], roles,
                             replace=True)
            console.print(f"  {role:<17} {name:<14} {pages}sign-in#token={token}",
                          soft_wrap=True, highlight=False)
        main(["serve", "--port", str(port)], environ)
