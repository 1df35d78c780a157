"""The `haven` command: `main(argv, environ)` builds settings and runs one subcommand.

Settings come from the environment passed in (HAVEN_HOME, HAVEN_DATABASE_URL, HAVEN_KEY_*),
never from globals deep inside, so every command can be tested without patching. Commands only
parse arguments, call the pipeline (`pipeline/`) and print what it did.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import typer

from cli import (
    analyses_cmd,
    demo_cmd,
    govern_cmd,
    impact_cmd,
    link_cmd,
    refresh_cmd,
    score_cmd,
    serve_cmd,
)
from cli.land_cmd import land_command
from cli.link_files_cmd import link_files_command
from cli.synth_cmd import synth_command
from governance import core_dumps
from governance.settings import Settings
from pipeline.context import Context
from pipeline.engines.spark_protections import SparkUnavailable


def build_app(environ: Mapping[str, str]) -> typer.Typer:
    """The typer application, with settings from `environ` handed to every command."""
    app = typer.Typer(help="Haven: privacy-preserving linkage and risk stratification.",
                      no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False)

    @app.callback()
    def _root(ctx: typer.Context) -> None:
        ctx.obj = Context(Settings.from_environ(environ))

    app.command("land")(land_command)
    app.command("synth")(synth_command)
    app.command("link-files")(link_files_command)
    for module in (link_cmd, score_cmd, refresh_cmd, govern_cmd, serve_cmd, demo_cmd,
                   impact_cmd):
        module.register(app)
    analyses_cmd.register(app)  # journeys, costs, segments (issue #14)
    return app


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run `haven` with explicit arguments and environment; returns the exit status."""
    core_dumps.forbid()  # this process and all it starts hold raw rows and keys in memory
    app = build_app(dict(os.environ if environ is None else environ))
    try:
        app(args=list(sys.argv[1:] if argv is None else argv), prog_name="haven",
            standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except SparkUnavailable as exc:  # HAVEN_ENGINE=spark cannot be honoured: why, not a trace
        print(f"haven: {exc}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """The console script: no process of this tree may ever write a core file, then `main`."""
    core_dumps.forbid(hard=True)
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover - `python -m cli.main`, as the console script
    run()
