"""Governance commands: opt-outs, retention and destruction, the audit chain, keys, policies."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import typer
from rich.console import Console
from sqlalchemy import delete, insert

from cli.context import Haven
from governance import audit, optouts, retention, rotation
from governance.policy_tables import policy_text
from governance.schema import policy_overrides
from policies import POLICIES_DIR


def _day(value: str | None, option: str) -> dt.date:
    if value is None:
        return dt.date.today()
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter("expected a date YYYY-MM-DD", param_hint=option) from exc


def dependents(haven: Haven) -> list[retention.Dependent]:
    """What destruction must also destroy: the person index's rows and derived runs."""
    from linkage import person_index
    from linkage.index_matcher import match_profiles

    def index(ids: list[str]) -> dict[str, int]:
        return person_index.forget_extracts(haven.settings, haven.engine,
                                            haven.keys.current("linkage"), ids, match_profiles)

    def derived(ids: list[str]) -> dict[str, int]:
        return retention.void_runs(haven.settings, haven.engine, ids)

    return [index, derived]


def register(app: typer.Typer) -> None:  # noqa: C901 - one small function per command
    opt = typer.Typer(help="Opt-outs honoured by purpose.")
    ret = typer.Typer(help="Retention and destruction.")
    aud = typer.Typer(help="The tamper-evident audit log.")
    keys = typer.Typer(help="Keys and their rotation.")
    pol = typer.Typer(help="Policy tables (data, not code).")

    @opt.command("report")
    def optouts_report(ctx: typer.Context, as_of: str = typer.Option(None, "--as-of")) -> None:
        """Persons with an opt-out in force, by type and purpose (suppressed; never who)."""
        haven: Haven = ctx.obj
        result = optouts.report(haven.engine, _day(as_of, "--as-of"))
        audit.log(haven.engine, haven.actor, "optouts.report", "optouts")
        typer.echo(json.dumps(result, indent=2))

    @opt.command("purge")
    def optouts_purge(ctx: typer.Context, as_of: str = typer.Option(None, "--as-of")) -> None:
        """Remove landed rows that no purpose may use since later opt-outs."""
        haven: Haven = ctx.obj
        removed = optouts.purge(haven.settings, haven.engine, haven.actor,
                                _day(as_of, "--as-of"))
        Console().print(f"removed {sum(removed.values()):,} rows from {len(removed)} extracts")

    @ret.command("run")
    def retention_run(ctx: typer.Context, dry_run: bool = typer.Option(False, "--dry-run"),
                      as_of: str = typer.Option(None, "--as-of",
                                                help="Treat DATE as today.")) -> None:
        """Destroy every extract past its retention date, and all derived from it."""
        haven: Haven = ctx.obj
        certificate = retention.run(haven.settings, haven.engine, haven.actor,
                                    _day(as_of, "--as-of"), dependents(haven), dry_run)
        verb = "would destroy" if dry_run else "destroyed"
        Console().print(f"{verb} {len(certificate.extract_ids)} extracts: "
                        f"{json.dumps(certificate.counts)}")
        if not dry_run and certificate.extract_ids:
            Console().print(f"certificate {certificate.certificate_id}, digest "
                            f"{certificate.manifest_digest}, audit entry {certificate.audit_seq}")

    @ret.command("certificates")
    def certificates(ctx: typer.Context) -> None:
        """Every destruction certificate, newest first."""
        haven: Haven = ctx.obj
        listed = retention.list_certificates(haven.engine)
        audit.log(haven.engine, haven.actor, "retention.certificates", "certificates",
                  n_records=len(listed))
        typer.echo(json.dumps(listed, indent=2, default=str))

    @aud.command("verify")
    def verify(ctx: typer.Context,
               head: Path = typer.Option(None, "--head", help="A head exported earlier.")) -> None:
        """Walk the chain; name the first entry modified, deleted, inserted or reordered."""
        haven: Haven = ctx.obj
        expected = json.loads(head.read_text()) if head else None
        result = audit.verify(haven.engine, expected)
        if result.ok:
            Console().print(f"audit chain intact: {result.entries:,} entries, head {result.head}")
            return
        Console().print(f"[red]audit chain broken[/]: {result.finding}; "
                        f"{' '.join(result.details)}")
        raise typer.Exit(code=1)

    @aud.command("head")
    def head_command(ctx: typer.Context, out: Path = typer.Option(None, "--out")) -> None:
        """The chain head, to keep outside the database."""
        haven: Haven = ctx.obj
        value = json.dumps(audit.head(haven.engine))
        if out:
            out.write_text(value)
            Console().print(f"chain head written to {out}")
        else:
            typer.echo(value)

    @keys.command("rotate")
    def rotate(ctx: typer.Context, purpose: str = typer.Argument(..., help="pseudonym|vault")
               ) -> None:
        """Rotate a key: pseudonym re-keys every pseudonym; vault re-encrypts the vault."""
        haven: Haven = ctx.obj
        if purpose == "pseudonym":
            from linkage import person_index

            counts = rotation.rotate_pseudonym_key(
                haven.settings, haven.engine, haven.keys, haven.actor,
                [lambda mapping: person_index.rekey(haven.settings, mapping)])
            Console().print(f"re-keyed {counts['pseudonyms']:,} pseudonyms in "
                            f"{counts['files']} extracts ({counts['rows']:,} rows)")
        elif purpose == "vault":
            changed = rotation.rotate_vault_key(haven.engine, haven.keys, haven.actor)
            Console().print(f"re-encrypted {changed:,} vault entries")
        else:
            raise typer.BadParameter("expected pseudonym or vault", param_hint="PURPOSE")

    @pol.command("show")
    def show(ctx: typer.Context, name: str) -> None:
        """Print a policy table in force (an override, else the shipped default)."""
        typer.echo(policy_text(name, ctx.obj.engine))

    @pol.command("set")
    def set_policy(ctx: typer.Context, name: str, file: Path) -> None:
        """Replace a policy table with FILE (the change is audited)."""
        haven: Haven = ctx.obj
        if not (POLICIES_DIR / name).exists():
            raise typer.BadParameter(f"no policy table {name}", param_hint="NAME")
        content = file.read_text(encoding="utf-8")
        with haven.engine.begin() as connection:
            connection.execute(delete(policy_overrides).where(policy_overrides.c.name == name))
            connection.execute(insert(policy_overrides).values(
                name=name, content=content, changed_at=dt.datetime.now(dt.UTC),
                changed_by=haven.actor.user))
            audit.record(connection, haven.actor, "policy.change", f"policy/{name}",
                         detail={"bytes": len(content)})
        Console().print(f"policy {name} replaced ({len(content)} bytes); change audited")

    app.add_typer(opt, name="optouts")
    app.add_typer(ret, name="retention")
    app.add_typer(aud, name="audit")
    app.add_typer(keys, name="keys")
    app.add_typer(pol, name="policy")
