"""Governance actions that reach into what the stages made: destruction, purge, key rotation.

Governance knows nothing of the stages; here each action is handed what it must also reach:
the person index's rows, score runs, their reports and exports, and, for destruction, how to
measure what the index still holds (so the certificate states what is left, not what was
asked for).
"""

from __future__ import annotations

import datetime as dt

from governance import optouts, retention, rotation
from linkage import map_store, person_index
from pipeline.context import Context
from pipeline.engines.dispatch import profile_matching


def dependents(ctx: Context) -> list[retention.Dependent]:
    """What destroying extracts must also destroy: their person index rows (re-linking what
    rested on them), and the runs, reports and exports made from them."""

    def index(ids: list[str]) -> dict[str, int]:
        if not map_store.exists(ctx.settings):  # no index yet: nothing to build, but
            # a first build killed part way may have left a half-written map, and models
            person_index.forget_kept_models(ctx.settings, ctx.engine, ids)
            return {"index_rows_removed": 0,
                    "index_partial_files_removed": person_index.discard_partial_files(
                        ctx.settings)}
        with profile_matching(ctx.settings) as (matcher, _):
            return person_index.forget_extracts(ctx.settings, ctx.engine,
                                                ctx.keys.current("linkage"), ids, matcher)

    def derived(ids: list[str]) -> dict[str, int]:
        return retention.void_runs(ctx.settings, ctx.engine, ids)

    return [index, derived]


def checks(ctx: Context) -> list[retention.Check]:
    """What destruction measures besides its own files and tables: the person index's rows of
    the extracts, links resting on them, review pairs and the quality file."""

    def index(ids: list[str]) -> dict[str, int]:
        return person_index.leftovers(ctx.settings, ids)

    return [index]


def destroy_expired(ctx: Context, as_of: dt.date | None = None,
                    dry_run: bool = False) -> retention.Certificate:
    """Destroy every extract past its retention date on `as_of` (default today) and all made
    from it, with a certificate chained into the audit log (or, dry run, say what would go).
    Raises retention.DestructionIncomplete, certifying nothing, if anything is left."""
    day = as_of or dt.datetime.now(dt.UTC).date()
    return retention.run(ctx.settings, ctx.engine, ctx.actor, day, dependents(ctx), dry_run,
                         checks=checks(ctx))


def purge_dependents(ctx: Context) -> list[optouts.PurgeDependent]:
    """What a purge must also reach: the person index (the purged rows and their review
    pairs; other rows linked to the same person stay linked, so the objection still covers
    them) and the runs made from the extracts it changed, voided with their files, reports and
    exports (they were computed from rows no purpose may use)."""

    def index(rows: dict[str, list[int]]) -> dict[str, int]:
        with profile_matching(ctx.settings) as (matcher, _):
            return person_index.forget_rows(ctx.settings, ctx.engine,
                                            ctx.keys.current("linkage"), rows, matcher)

    def derived(rows: dict[str, list[int]]) -> dict[str, int]:
        return retention.void_runs(ctx.settings, ctx.engine, sorted(rows))

    return [index, derived]


def purge_optouts(ctx: Context, as_of: dt.date | None = None) -> dict[str, int]:
    """Remove landed rows no purpose may use since opt-outs registered after landing, with
    what was made from them (`purge_dependents`)."""
    day = as_of or dt.datetime.now(dt.UTC).date()
    return optouts.purge(ctx.settings, ctx.engine, day, ctx.actor, purge_dependents(ctx))


def rotate_pseudonym_key(ctx: Context) -> dict[str, int]:
    """A new pseudonymisation key: every pseudonym re-keyed through the vault, the person
    index's too (person keys kept)."""
    return rotation.rotate_pseudonym_key(
        ctx.settings, ctx.engine, ctx.keys, ctx.actor,
        [lambda mapping: person_index.rekey(ctx.settings, mapping)])


def rotate_vault_key(ctx: Context) -> int:
    """A new vault key: every vault entry re-encrypted; returns how many."""
    return rotation.rotate_vault_key(ctx.engine, ctx.keys, ctx.actor)
