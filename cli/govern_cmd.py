"""Governance commands: opt-outs, retention and destruction, the audit chain, keys, policies.

Destruction, purges and key rotation go through the pipeline (`pipeline.govern`), which hands
governance what they must also reach (the person index, score runs, exports).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import typer
from rich.console import Console

from governance import audit, optouts, retention
from governance.keys import KeyError_
from governance.policy_tables import policy_names, policy_text, reset_policy, set_policy
from pipeline import govern
from pipeline.context import Context


def _day(value: str | None, option: str) -> dt.date:
    if value is None:
        return dt.date.today()
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter("expected a date YYYY-MM-DD", param_hint=option) from exc


def register(app: typer.Typer) -> None:  # noqa: C901 - one small function per command
    opt = typer.Typer(help="Opt-outs honoured by purpose.", no_args_is_help=True)
    ret = typer.Typer(help="Retention and destruction.", no_args_is_help=True)
    aud = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
    keys = typer.Typer(help="Keys and their rotation.", no_args_is_help=True)
    pol = typer.Typer(help="Policy tables (data, not code).", no_args_is_help=True)

    @opt.command("report")
    def optouts_report(ctx: typer.Context, as_of: str = typer.Option(None, "--as-of")) -> None:
        """Opt-outs in force by type and purpose (suppressed counts; never who)."""
        context: Context = ctx.obj
        result = optouts.optouts_report(context.engine, _day(as_of, "--as-of"))
        audit.log(context.engine, context.actor, "optouts.report", "optouts",
                  detail={"as_of": result["as_of"]})
        typer.echo(json.dumps(result, indent=2))

    @opt.command("purge")
    def optouts_purge(ctx: typer.Context, as_of: str = typer.Option(None, "--as-of")) -> None:
        """Remove landed rows that no purpose may use since opt-outs registered after landing."""
        context: Context = ctx.obj
        removed = govern.purge_optouts(context, _day(as_of, "--as-of"))
        console = Console()
        for extract_id, n in sorted(removed.items()):
            console.print(f"  {extract_id}: {n:,} rows removed")
        console.print(f"removed {sum(removed.values()):,} rows from {len(removed)} extracts "
                      f"in {context.settings.layout.extracts_dir}")

    @ret.command("run")
    def retention_run(ctx: typer.Context, dry_run: bool = typer.Option(False, "--dry-run"),
                      as_of: str = typer.Option(None, "--as-of",
                                                help="Treat DATE as today.")) -> None:
        """Destroy every extract past its retention date, and all derived from it."""
        context: Context = ctx.obj
        console = Console()
        try:
            certificate = govern.destroy_expired(context, _day(as_of, "--as-of"), dry_run)
        except retention.DestructionIncomplete as exc:
            left = {k: v for k, v in exc.certificate.remaining.items() if v}
            console.print(f"[red]not certified[/]: {len(exc.certificate.extract_ids)} extracts "
                          f"destroyed in part; still present {json.dumps(left, sort_keys=True)}"
                          "; they stay due and the next run resumes (the failure is audited)")
            raise typer.Exit(code=1) from None
        verb = "would destroy" if dry_run else "destroyed"
        for extract_id in certificate.extract_ids:
            console.print(f"  {extract_id} ({certificate.sources[extract_id]})")
        console.print(f"{verb} {len(certificate.extract_ids)} extracts: "
                      f"{json.dumps(certificate.counts, sort_keys=True)}")
        if not dry_run and certificate.extract_ids:
            console.print(f"measured after destruction, remaining: "
                          f"{json.dumps(certificate.remaining, sort_keys=True)}")
            console.print(f"certificate {certificate.certificate_id}, digest "
                          f"{certificate.manifest_digest}, audit entry {certificate.audit_seq}")

    @ret.command("certificates")
    def certificates(ctx: typer.Context) -> None:
        """Every destruction certificate, newest first."""
        context: Context = ctx.obj
        listed = retention.list_certificates(context.engine)
        audit.log(context.engine, context.actor, "retention.certificates", "certificates",
                  n_records=len(listed))
        typer.echo(json.dumps(listed, indent=2, default=str))

    @ret.command("verify")
    def verify_certificate(ctx: typer.Context, certificate_id: str) -> None:
        """Recompute a certificate's digest and check the audit entry it names."""
        context: Context = ctx.obj
        try:
            good = retention.verify_certificate(context.engine, certificate_id)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="CERTIFICATE_ID") from exc
        if not good:
            Console().print(f"[red]certificate {certificate_id} does not match its digest or "
                            "audit entry[/]")
            raise typer.Exit(code=1)
        Console().print(f"certificate {certificate_id} matches its digest and audit entry")

    @aud.command("verify")
    def verify(ctx: typer.Context,
               head: Path = typer.Option(None, "--head", help="A head exported earlier.")) -> None:
        """Walk the chain; name the first entry modified, deleted, inserted or reordered."""
        context: Context = ctx.obj
        try:
            expected = audit.parse_head(head.read_text(encoding="utf-8")) if head else None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise typer.BadParameter(f"{head}: {exc}", param_hint="--head") from None
        result = audit.verify(context.engine, expected)
        if result.ok:
            Console().print(f"audit chain intact: {result.entries:,} entries, head {result.head}")
            return
        Console().print(f"[red]audit chain broken[/]: {result.finding}; "
                        f"{' '.join(result.details)}")
        raise typer.Exit(code=1)

    @aud.command("head")
    def head_command(ctx: typer.Context, out: Path = typer.Option(None, "--out")) -> None:
        """The chain head, to keep outside the database (give it to `verify --head`)."""
        context: Context = ctx.obj
        value = json.dumps(audit.head(context.engine))
        if out:
            out.write_text(value)
            Console().print(f"chain head written to {out}")
        else:
            typer.echo(value)

    @keys.command("rotate")
    def rotate(ctx: typer.Context, purpose: str = typer.Argument(..., help="pseudonym|vault")
               ) -> None:
        """Rotate a key: pseudonym re-keys every pseudonym; vault re-encrypts the vault."""
        context: Context = ctx.obj
        if purpose not in ("pseudonym", "vault"):
            raise typer.BadParameter("expected pseudonym or vault", param_hint="PURPOSE")
        try:
            if purpose == "pseudonym":
                counts = govern.rotate_pseudonym_key(context)
                Console().print(f"re-keyed {counts['pseudonyms']:,} pseudonyms in "
                                f"{counts['files']} extracts ({counts['rows']:,} rows) and "
                                f"{counts['derived_rows']:,} person index rows; key now "
                                f"{context.keys.current('pseudonym').key_id}")
            else:
                changed = govern.rotate_vault_key(context)
                Console().print(f"re-encrypted {changed:,} vault entries; key now "
                                f"{context.keys.current('vault').key_id}")
        except KeyError_ as exc:
            Console().print(f"[red]not rotated[/]: {exc}")
            raise typer.Exit(code=1) from None

    @pol.command("list")
    def list_policies(ctx: typer.Context) -> None:
        """The policy tables an IG lead may change."""
        for name in policy_names():
            typer.echo(name)

    @pol.command("show")
    def show(ctx: typer.Context, name: str) -> None:
        """Print a policy table in force (an override, else the shipped default)."""
        if name not in policy_names():
            raise typer.BadParameter(f"no policy table {name}", param_hint="NAME")
        typer.echo(policy_text(name, ctx.obj.engine))

    @pol.command("set")
    def set_command(ctx: typer.Context, name: str, file: Path) -> None:
        """Replace a policy table with FILE (checked first; the change is audited)."""
        context: Context = ctx.obj
        try:
            changed = set_policy(context.engine, name, file.read_text(encoding="utf-8"),
                                 context.actor)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(str(exc), param_hint="NAME or FILE") from exc
        Console().print(f"policy {name} replaced (sha256 {changed['after'][:12]}…, was "
                        f"{changed['before'][:12]}…); change audited")

    @pol.command("reset")
    def reset_command(ctx: typer.Context, name: str) -> None:
        """Go back to the shipped table (audited)."""
        context: Context = ctx.obj
        if name not in policy_names():
            raise typer.BadParameter(f"no policy table {name}", param_hint="NAME")
        done = reset_policy(context.engine, name, context.actor)
        Console().print(f"policy {name}: " + ("shipped table restored" if done
                                               else "already the shipped table"))

    app.add_typer(opt, name="optouts")
    app.add_typer(ret, name="retention")
    app.add_typer(aud, name="audit")
    app.add_typer(keys, name="keys")
    app.add_typer(pol, name="policy")
