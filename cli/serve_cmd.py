"""`haven serve`: the API under uvicorn; `haven users add|list|revoke`: who may call it.

`haven users add NAME --org ODS --role ROLE` prints the user's token once; only its SHA-256 is
stored. Roles are those the access policy names (policies/casbin_policy.csv, as seeded into the
database). OIDC and the upload limit come from `HAVEN_OIDC_*` / `HAVEN_API_*` variables or the
options below.
"""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.table import Table

from api.authz import AccessPolicy
from api.users import UserError, add_user, list_users, revoke_user
from pipeline.context import Context


def _roles(context: Context) -> set[str]:
    return AccessPolicy(context.engine, context.settings).roles()


def _environment(context: Context, extra: dict[str, str]) -> dict[str, str]:
    """Variables a worker process needs to rebuild these settings (several workers)."""
    settings = context.settings
    environ = {"HAVEN_HOME": str(settings.home), "HAVEN_BATCH_ROWS": str(settings.batch_rows),
               **settings.key_env, **extra}
    if settings.database_url:
        environ["HAVEN_DATABASE_URL"] = settings.database_url
    return environ


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        ctx: typer.Context,
        port: int = typer.Option(8000, "--port", min=1, max=65535),
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to listen on (0.0.0.0 inside a container)."),
        workers: int = typer.Option(1, "--workers", min=1, max=64),
        oidc_issuer: str = typer.Option("", "--oidc-issuer", help="Accept JWTs from this "
                                        "issuer (with --oidc-jwks)."),
        oidc_audience: str = typer.Option("", "--oidc-audience"),
        oidc_jwks: str = typer.Option("", "--oidc-jwks", help="JWKS file or https URL."),
        migrate_only: bool = typer.Option(False, "--migrate-only", help="Migrate the "
                                          "database, seed the access policy, and exit."),
    ) -> None:
        """Serve the API (every request authenticated, decided by Casbin and audited)."""
        import uvicorn

        from api.app import create_app
        from api.config import ApiConfig

        context: Context = ctx.obj
        console = Console(stderr=True)
        overrides = {k: v for k, v in (("HAVEN_OIDC_ISSUER", oidc_issuer),
                                       ("HAVEN_OIDC_AUDIENCE", oidc_audience),
                                       ("HAVEN_OIDC_JWKS", oidc_jwks)) if v}
        if migrate_only:
            rules = len(AccessPolicy(context.engine, context.settings).rules()["p"])
            console.print(f"database migrated; {rules} access rules in force")
            return
        environ = {**{k: v for k, v in os.environ.items()
                      if k.startswith(("HAVEN_API_", "HAVEN_OIDC_"))}, **overrides}
        console.print(f"Haven API on http://{host}:{port} (documentation at /docs)")
        if workers > 1:
            os.environ.update(_environment(context, environ))
            uvicorn.run("api.app:create_app_from_environ", factory=True, host=host, port=port,
                        workers=workers, log_level="warning", access_log=False)
            return
        app_ = create_app(context.settings, engine=context.engine, keys=context.keys,
                          config=ApiConfig.from_environ(environ))
        uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)

    users = typer.Typer(help="Users of the API and their tokens.", no_args_is_help=True)

    @users.command("add")
    def users_add(
        ctx: typer.Context,
        name: str = typer.Argument(..., help="User id (lower case, e.g. dr.mdt)."),
        org: str = typer.Option(..., "--org", help="ODS code of their organisation."),
        role: list[str] = typer.Option(..., "--role", help="A role (repeat for several)."),
        replace: bool = typer.Option(False, "--replace", help="Reset an existing user: new "
                                     "organisation and roles, old tokens revoked."),
    ) -> None:
        """Add a user and print their token (shown once; only its SHA-256 is kept)."""
        context: Context = ctx.obj
        try:
            token = add_user(context.engine, context.actor, name, org, role, _roles(context),
                             replace=replace)
        except UserError as exc:
            raise typer.BadParameter(str(exc)) from None
        Console(stderr=True).print(f"user {name} ({', '.join(role)}, {org.upper()}); token:")
        typer.echo(token)

    @users.command("list")
    def users_list(ctx: typer.Context) -> None:
        """Every user, organisation, roles and live tokens."""
        context: Context = ctx.obj
        table = Table("user", "org", "roles", "active", "tokens", "created")
        for user in list_users(context.engine):
            table.add_row(user["user_id"], user["org"], ", ".join(user["roles"]),
                          "yes" if user["active"] else "no", str(user["active_tokens"]),
                          user["created_at"][:19])
        Console(width=120).print(table)

    @users.command("revoke")
    def users_revoke(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
        """Deactivate a user and revoke all their tokens."""
        context: Context = ctx.obj
        try:
            revoked = revoke_user(context.engine, context.actor, name)
        except LookupError:
            raise typer.BadParameter(f"no user {name}") from None
        Console().print(f"user {name} deactivated; {revoked} token(s) revoked")

    app.add_typer(users, name="users")

