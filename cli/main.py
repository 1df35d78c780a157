"""The `haven` command: `main(argv, environ)` builds settings and runs one subcommand.

Settings come from the environment passed in (HAVEN_HOME, HAVEN_DATABASE_URL, HAVEN_KEY_*),
never from globals deep inside, so every command can be tested without patching.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import typer

from cli.context import Haven
from governance.settings import Settings


def build_app(environ: Mapping[str, str]) -> typer.Typer:
    """The typer application, with settings from `environ` handed to every command."""
    app = typer.Typer(help="Haven: privacy-preserving linkage and risk stratification.",
                      no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False)

    @app.callback()
    def _root(ctx: typer.Context) -> None:
        ctx.obj = Haven(Settings.from_environ(environ))

    from cli.land_cmd import land_command
    app.command("land")(land_command)
    _optional(app, "synth", "cli.synth_cmd", "synth_command")
    _optional(app, "link-files", "cli.link_files_cmd", "link_files_command")
    for register in _registrars():
        register(app)
    return app


def _optional(app: typer.Typer, name: str, module: str, attribute: str) -> None:
    """Register a command whose module may not be installed in a slim deployment."""
    try:
        imported = __import__(module, fromlist=[attribute])
    except ImportError:  # pragma: no cover - all modules ship together today
        return
    app.command(name)(getattr(imported, attribute))


def _registrars() -> list:
    """Command groups contributed by later stages (link, score, govern, serve)."""
    found = []
    for module in ("cli.link_cmd", "cli.score_cmd", "cli.govern_cmd", "cli.serve_cmd",
                   "cli.demo_cmd"):
        try:
            imported = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        found.append(imported.register)
    return found


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run `haven` with explicit arguments and environment; returns the exit status."""
    app = build_app(dict(os.environ if environ is None else environ))
    try:
        app(args=list(sys.argv[1:] if argv is None else argv), prog_name="haven",
            standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def run() -> None:  # pragma: no cover - the console-script entry point
    sys.exit(main())
