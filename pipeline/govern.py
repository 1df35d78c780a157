"""Governance actions that reach into what the stages made: destruction, purge, key rotation.

Governance knows nothing of the stages; here each action is handed what it must also reach:
the person index's rows, score runs, their reports and exports.
"""

from __future__ import annotations

import datetime as dt

from governance import optouts, retention, rotation
from linkage import person_index
from linkage.index_matcher import match_profiles
from pipeline.context import Context


def dependents(ctx: Context) -> list[retention.Dependent]:
    """What destroying extracts must also destroy: their person index rows (re-linking what
    rested on them), and the runs, reports and exports made from them."""

    def index(ids: list[str]) -> dict[str, int]:
        if not ctx.settings.layout.link_map.exists():
            return {"index_rows_removed": 0}  # no index yet: nothing derived, nothing to build
        return person_index.forget_extracts(ctx.settings, ctx.engine,
                                            ctx.keys.current("linkage"), ids, match_profiles)

    def derived(ids: list[str]) -> dict[str, int]:
        return retention.void_runs(ctx.settings, ctx.engine, ids)

    return [index, derived]


def destroy_expired(ctx: Context, as_of: dt.date | None = None,
                    dry_run: bool = False) -> retention.Certificate:
    """Destroy every extract past its retention date on `as_of` (default today) and all made
    from it, with a certificate chained into the audit log (or, dry run, say what would go)."""
    day = as_of or dt.datetime.now(dt.UTC).date()
    return retention.run(ctx.settings, ctx.engine, ctx.actor, day, dependents(ctx), dry_run)


def purge_optouts(ctx: Context, as_of: dt.date | None = None) -> dict[str, int]:
    """Remove landed rows no purpose may use since opt-outs registered after landing."""
    day = as_of or dt.datetime.now(dt.UTC).date()
    return optouts.purge(ctx.settings, ctx.engine, day, ctx.actor, [])


def rotate_pseudonym_key(ctx: Context) -> dict[str, int]:
    """A new pseudonymisation key: every pseudonym re-keyed through the vault, the person
    index's too (person keys kept)."""
    return rotation.rotate_pseudonym_key(
        ctx.settings, ctx.engine, ctx.keys, ctx.actor,
        [lambda mapping: person_index.rekey(ctx.settings, mapping)])


def rotate_vault_key(ctx: Context) -> int:
    """A new vault key: every vault entry re-encrypted; returns how many."""
    return rotation.rotate_vault_key(ctx.engine, ctx.keys, ctx.actor)
