"""Governance commands: opt-outs, retention and destruction, the audit chain, keys, policies.

Governance does not import the stages; where destruction, a purge or a key rotation must reach
what the stages derived (the person index, score runs, exports), the callbacks are made here,
importing the stages lazily, and handed down.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from cli.context import Haven
from governance import audit, optouts, retention, rotation
from governance.keys import KeyError_
from governance.policy_tables import policy_names, policy_text, reset_policy, set_policy


def _day(value: str | None, option: str) -> dt.date:
    if value is None:
        return dt.date.today()
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter("expected a date YYYY-MM-DD", param_hint=option) from exc


def _stage_function(module: str, name: str) -> Callable[..., Any] | None:
    """A stage's function when that stage provides it (imported only when asked for)."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:  # a slim deployment without that stage
        return None


def dependents(haven: Haven) -> list[retention.Dependent]:
    """What destruction must also destroy: the person index's rows, runs and their exports."""
    from linkage import person_index

    def index(ids: list[str]) -> dict[str, int]:
        if not (haven.settings.index_dir / person_index.LINK_MAP).exists():
            return {"index_rows_removed": 0}  # no index yet: nothing derived, nothing to build
        from linkage.index_matcher import match_profiles

        return person_index.forget_extracts(haven.settings, haven.engine,
                                            haven.keys.current("linkage"), ids, match_profiles)

    void = _stage_function("stratify.scoring", "void_runs")

    def derived(ids: list[str]) -> dict[str, int]:
        if void is not None:  # stratify's own, once it provides one
            return void(haven.settings, haven.engine, ids)
        return retention.void_runs(haven.settings, haven.engine, ids)

    return [index, derived]


def purge_dependents() -> list[optouts.PurgeDependent]:
    """What a purge must also reach: the person index's rows for purged rows, when linkage
    offers a way to drop single rows (`forget_rows`)."""
    forget_rows = _stage_function("linkage.person_index", "forget_rows")
    return [] if forget_rows is None else [forget_rows]


def rekeyers(haven: Haven) -> list[rotation.Rekeyer]:
    """What a pseudonym key rotation must also re-key: the person index."""
    from linkage import person_index

    return [lambda mapping: person_index.rekey(haven.settings, mapping)]


def register(app: typer.Typer) -> None:  # noqa: C901 - one small function per command
    opt = typer.Typer(help="Opt-outs honoured by purpose.", no_args_is_help=True)
    ret = typer.Typer(help="Retention and destruction.", no_args_is_help=True)
    aud = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
    keys = typer.Typer(help="Keys and their rotation.", no_args_is_help=True)
    pol = typer.Typer(help="Policy tables (data, not code).", no_args_is_help=True)

    @opt.command("report")
    def optouts_report(ctx: typer.Context, as_of: str = typer.Option(None, "--as-of")) -> None:
        """Opt-outs in force by type and purpose (suppressed counts; never who)."""
        haven: Haven = ctx.obj
        result = optouts.optouts_report(haven.engine, _day(as_of, "--as-of"))
        audit.log(haven.engine, haven.actor, "optouts.report", "optouts",
                  detail={"as_of": result["as_of"]})
        typer.echo(json.dumps(result, indent=2))

    @opt.command("purge")
    def optouts_purge(ctx: typer.Context, as_of: str = typer.Option(None, "--as-of")) -> None:
        """Remove landed rows that no purpose may use since opt-outs registered after landing."""
        haven: Haven = ctx.obj
        removed = optouts.purge(haven.settings, haven.engine, _day(as_of, "--as-of"),
                                haven.actor, purge_dependents())
        console = Console()
        for extract_id, n in sorted(removed.items()):
            console.print(f"  {extract_id}: {n:,} rows removed")
        console.print(f"removed {sum(removed.values()):,} rows from {len(removed)} extracts "
                      f"in {haven.settings.extracts_dir}")

    @ret.command("run")
    def retention_run(ctx: typer.Context, dry_run: bool = typer.Option(False, "--dry-run"),
                      as_of: str = typer.Option(None, "--as-of",
                                                help="Treat DATE as today.")) -> None:
        """Destroy every extract past its retention date, and all derived from it."""
        haven: Haven = ctx.obj
        certificate = retention.run(haven.settings, haven.engine, haven.actor,
                                    _day(as_of, "--as-of"), dependents(haven), dry_run)
        console = Console()
        verb = "would destroy" if dry_run else "destroyed"
        for extract_id in certificate.extract_ids:
            console.print(f"  {extract_id} ({certificate.sources[extract_id]})")
        console.print(f"{verb} {len(certificate.extract_ids)} extracts: "
                      f"{json.dumps(certificate.counts, sort_keys=True)}")
        if not dry_run and certificate.extract_ids:
            console.print(f"certificate {certificate.certificate_id}, digest "
                          f"{certificate.manifest_digest}, audit entry {certificate.audit_seq}")

    @ret.command("certificates")
    def certificates(ctx: typer.Context) -> None:
        """Every destruction certificate, newest first."""
        haven: Haven = ctx.obj
        listed = retention.list_certificates(haven.engine)
        audit.log(haven.engine, haven.actor, "retention.certificates", "certificates",
                  n_records=len(listed))
        typer.echo(json.dumps(listed, indent=2, default=str))

    @ret.command("verify")
    def verify_certificate(ctx: typer.Context, certificate_id: str) -> None:
        """Recompute a certificate's digest and check the audit entry it names."""
        haven: Haven = ctx.obj
        try:
            good = retention.verify_certificate(haven.engine, certificate_id)
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
        """The chain head, to keep outside the database (give it to `verify --head`)."""
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
        if purpose not in ("pseudonym", "vault"):
            raise typer.BadParameter("expected pseudonym or vault", param_hint="PURPOSE")
        try:
            if purpose == "pseudonym":
                counts = rotation.rotate_pseudonym_key(haven.settings, haven.engine,
                                                       haven.keys, haven.actor, rekeyers(haven))
                Console().print(f"re-keyed {counts['pseudonyms']:,} pseudonyms in "
                                f"{counts['files']} extracts ({counts['rows']:,} rows) and "
                                f"{counts['derived_rows']:,} person index rows; key now "
                                f"{haven.keys.current('pseudonym').key_id}")
            else:
                changed = rotation.rotate_vault_key(haven.engine, haven.keys, haven.actor)
                Console().print(f"re-encrypted {changed:,} vault entries; key now "
                                f"{haven.keys.current('vault').key_id}")
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
        haven: Haven = ctx.obj
        try:
            changed = set_policy(haven.engine, name, file.read_text(encoding="utf-8"),
                                 haven.actor)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(str(exc), param_hint="NAME or FILE") from exc
        Console().print(f"policy {name} replaced (sha256 {changed['after'][:12]}…, was "
                        f"{changed['before'][:12]}…); change audited")

    @pol.command("reset")
    def reset_command(ctx: typer.Context, name: str) -> None:
        """Go back to the shipped table (audited)."""
        haven: Haven = ctx.obj
        if name not in policy_names():
            raise typer.BadParameter(f"no policy table {name}", param_hint="NAME")
        done = reset_policy(haven.engine, name, haven.actor)
        Console().print(f"policy {name}: " + ("shipped table restored" if done
                                               else "already the shipped table"))

    app.add_typer(opt, name="optouts")
    app.add_typer(ret, name="retention")
    app.add_typer(aud, name="audit")
    app.add_typer(keys, name="keys")
    app.add_typer(pol, name="policy")
