"""Retention and destruction: every extract is destroyed after its date, with all made from it.

`destroy` removes an extract's rows (its folder), rejected-row reasons and opt-out register
rows, asks each dependent (the person index, score runs, exports: callbacks from the caller,
since governance does not import the stages) to destroy what was derived from it, deletes
vault entries no remaining landed row references, marks the extract destroyed and writes a
destruction certificate chained into the audit log. `run` destroys every extract past its
retention date (`as_of` treats a date as today, for tests and what-if questions).

A certificate states what was measured, not what was asked for. Before anything is removed
and again once everything is, `measure` counts what the data directory and database hold of
the extracts (rows in their folders, staging, rejected-row reasons, register rows, runs still
in use and their files, reports and exports, vault entries nothing else references), and each
check the caller passes adds its own (the person index: map rows, links resting on them,
review pairs, the quality file). The certificate's `remaining` is the second measurement and
every count removed is the first less the second. If anything remains, nothing is certified:
the failure is audited with the counts, the extracts stay `destroying` and
`DestructionIncomplete` is raised.

Destruction is resumable. It first marks the extracts `destroying` (so no stage reads them
and the person index sees them gone), then removes files and calls dependents, and only in its
last transaction deletes their database rows, marks them `destroyed` and issues the
certificate. If anything fails in between, the extracts stay `destroying`, `due` lists them
again and the next run finishes the work and certifies it.

The certificate's digest is SHA-256 over the canonical JSON of its manifest: the certificate
id, time, actor, schedule, counts, what remained (certificates issued before that was measured
have none), and for each extract its id, source, sender, SHA-256 of the file as sent, period,
retention date and rows. The database keeps `remaining` inside the stored counts, under that
key. Everything in it stays in the database (the
extract receipts are kept, marked destroyed), so `verify_certificate` can recompute it.

Audit entries are not destroyed with the data: deleting them would break the hash chain that
proves nothing else was edited. Their retention (`audit` in policies/retention.csv) is met by
archiving the chain up to a verified, exported head outside Haven (see governance/README.md).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine, delete, func, insert, select, update

from governance import audit, incidents, store, vault
from governance.audit import Actor
from governance.policy_tables import read_table
from governance.schema import (
    audit_log,
    destruction_certificates,
    extracts,
    optouts,
    rejected_rows,
    runs,
)
from governance.settings import Settings

# A dependent destroys what it derived from the given extracts and says what, as counts.
Dependent = Callable[[list[str]], dict[str, int]]
# A check measures what is left of the given extracts somewhere, as counts (0: nothing).
Check = Callable[[list[str]], dict[str, int]]
LIVE = ("landed", "destroying")  # statuses whose rows may still exist somewhere
# Counts removed are named after what was measured; these keep the names certificates had.
REMOVED_AS = {"extract_rows": "rows_removed", "rejected_row_reasons": "rejected_row_reasons",
              "optout_register_rows": "optout_register_rows", "runs_in_use": "runs_voided",
              "run_files": "run_files_removed", "exports": "exports_removed",
              "vault_entries": "vault_entries", "index_rows": "index_rows_removed",
              "index_links_via": "index_links_relinked",
              "quality_files": "quality_files_rewritten"}


class DestructionIncomplete(RuntimeError):
    """Something of the extracts was measured still present after destruction: nothing was
    certified. `certificate` is what would have been, its `remaining` non-zero."""

    def __init__(self, certificate: Certificate) -> None:
        left = {k: v for k, v in sorted(certificate.remaining.items()) if v}
        super().__init__(f"destruction of {len(certificate.extract_ids)} extracts not "
                         f"certified: still present {json.dumps(left)}; the extracts stay "
                         "destroying and the next run resumes")
        self.certificate = certificate


@dataclass
class Certificate:
    """What was destroyed, when, by whom or which schedule, with a digest of the manifest."""

    certificate_id: str
    at: str
    actor: str
    schedule: str
    extract_ids: list[str]
    sources: dict[str, str]
    counts: dict[str, int]
    manifest_digest: str
    dry_run: bool = False
    audit_seq: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    remaining: dict[str, int] = field(default_factory=dict)  # measured after destruction

    @property
    def complete(self) -> bool:
        """Nothing of the extracts was measured left."""
        return not any(self.remaining.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def validate_retention(content: str, engine: Engine | None = None) -> None:
    """Raise ValueError unless `content` is a usable retention table: a whole number of months
    (0 or more) for every source the shipped table names."""
    lines = [line for line in io.StringIO(content) if not line.lstrip().startswith("#")]
    months: dict[str, str] = {}
    for row in csv.DictReader(lines):
        months[(row.get("source") or "").strip()] = (row.get("retain_months") or "").strip()
    for source, value in months.items():
        if not value.isdigit():
            raise ValueError(f"retention.csv: retain_months for {source!r} must be a whole "
                             "number of months")
    shipped = {row["source"] for row in read_table("retention.csv")}
    missing = sorted(shipped - set(months))
    if missing:
        raise ValueError(f"retention.csv: no row for {', '.join(missing)}")


def due(engine: Engine, as_of: dt.date) -> list[str]:
    """Landed extracts whose retention date has passed on `as_of`, and any destruction left
    unfinished (status `destroying`), which is due whatever its date."""
    with engine.connect() as connection:
        return list(connection.scalars(
            select(extracts.c.extract_id).where(
                ((extracts.c.status == "landed") & (extracts.c.retention_date < as_of))
                | (extracts.c.status == "destroying"))
            .order_by(extracts.c.extract_id)))


def void_runs(settings: Settings, engine: Engine, extract_ids: Sequence[str]) -> dict[str, int]:
    """Runs that used any of the extracts: marked void, their files removed (scores, reports)
    and every export made from them (`exports/<export_id>/export.json` names its run)."""
    used = _runs_using(engine, extract_ids)
    hit = sorted(r.run_id for r in used if r.status != "void")
    everything = {r.run_id for r in used}  # a void run's files go too, should any be left
    files = 0
    for run_id in sorted(everything):
        for folder in (settings.layout.run(run_id).folder, settings.layout.report(run_id)):
            if folder.exists():
                files += _files(folder)
                shutil.rmtree(folder)
    exports = 0
    for described in settings.layout.export_descriptions() if everything else []:
        if _names_run(described, everything):  # unreadable: kept, named by nothing we destroy
            files += _files(described.parent)
            shutil.rmtree(described.parent)
            exports += 1
    if hit:
        with engine.begin() as connection:
            connection.execute(update(runs).where(runs.c.run_id.in_(hit)).values(status="void"))
    return {"runs_voided": len(hit), "run_files_removed": files, "exports_removed": exports}


def _runs_using(engine: Engine, extract_ids: Sequence[str]) -> list[Any]:
    """(run_id, status) of every run, whatever its status, that used any of the extracts."""
    wanted = set(extract_ids)
    with engine.connect() as connection:
        listed = connection.execute(select(runs.c.run_id, runs.c.status, runs.c.extract_ids))
        return [r for r in listed if wanted & set(r.extract_ids or [])]


def _files(folder: Any) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def measure(settings: Settings, engine: Engine, extract_ids: Sequence[str]) -> dict[str, int]:
    """What the data directory and database hold of the extracts, counted where it lives:

    - `extract_folders`, `extract_rows`: their folders, and the rows in their Parquet files;
    - `staging_folders`: their folders in staging;
    - `rejected_row_reasons`, `optout_register_rows`: their rows in those tables;
    - `runs_in_use`: runs that used them and are not void;
    - `run_files`, `exports`: files of those runs and their reports (any status), and exports
      made from them;
    - `vault_entries`: vault entries no landed row or register row references once they go;
    - `scratch_workspaces`: stage workspaces (working copies of linked rows of every landed
      extract, these among them) still in the data directory: a stage running now holds one;
    - `linked_cache_entries`: cached working copies of linked rows (of every landed extract,
      these among them), which destruction removes whatever their key.
    """
    ids = sorted(set(extract_ids))
    folders = [settings.layout.extract(e) for e in ids]
    rows = sum(pq.ParquetFile(path).metadata.num_rows for folder in folders
               for path in sorted(folder.rglob("*.parquet")) if folder.exists())
    with engine.connect() as connection:
        rejected = connection.scalar(select(func.count()).select_from(rejected_rows)
                                     .where(rejected_rows.c.extract_id.in_(ids))) or 0
        register = connection.scalar(select(func.count()).select_from(optouts)
                                     .where(optouts.c.extract_id.in_(ids))) or 0
    used = _runs_using(engine, ids)
    run_ids = {r.run_id for r in used}
    files = sum(_files(settings.layout.run(r).folder) + _files(settings.layout.report(r))
                for r in sorted(run_ids))
    exports = [d for d in settings.layout.export_descriptions() if _names_run(d, run_ids)]
    files += sum(_files(d.parent) for d in exports)
    return {"extract_folders": sum(f.exists() for f in folders), "extract_rows": int(rows),
            "staging_folders": sum(settings.layout.staged(e).exists() for e in ids),
            "rejected_row_reasons": int(rejected), "optout_register_rows": int(register),
            "runs_in_use": sum(r.status != "void" for r in used), "run_files": files,
            "exports": len(exports),
            "vault_entries": len(unreferenced_vault_entries(settings, engine, ids)),
            "scratch_workspaces": store.scratch_workspaces(settings),
            "linked_cache_entries": store.linked_cache_entries(settings)}


def _names_run(described: Any, run_ids: set[str]) -> bool:
    """Does an export's description name one of the runs? (Unreadable: named by nothing.)"""
    try:
        return json.loads(described.read_text(encoding="utf-8")).get("run_id") in run_ids
    except ValueError:
        return False


def unreferenced_vault_entries(settings: Settings, engine: Engine,
                               leaving: Sequence[str] = ()) -> list[str]:
    """Vault pseudonyms no landed row references once the extracts `leaving` are gone.

    Scans the `person_id` column of every other landed extract's Parquet (and the opt-out
    register) with Arrow set lookups, so memory holds the vault's pseudonyms and one column.
    """
    gone = set(leaving)
    with engine.connect() as connection:
        held = pa.array(list(connection.scalars(select(vault.vault.c.person_id))), pa.string())
        remaining = [e for e in connection.scalars(
            select(extracts.c.extract_id).where(extracts.c.status.in_(LIVE)))
            if e not in gone]
        registered = [p for p, e in connection.execute(
            select(optouts.c.person_id, optouts.c.extract_id)) if e not in gone]
    keep = np.zeros(len(held), dtype=bool)
    if registered:
        keep |= pc.is_in(held, value_set=pa.array(registered, pa.string())).to_numpy(
            zero_copy_only=False)
    for extract_id in remaining:
        path = settings.layout.rows(extract_id)
        if path.exists() and "person_id" in pq.read_schema(path).names:
            column = pq.read_table(path, columns=["person_id"]).column("person_id")
            found = pc.unique(column.combine_chunks())
            keep |= pc.is_in(held, value_set=found).to_numpy(zero_copy_only=False)
    return held.filter(pa.array(~keep)).to_pylist()


def _iso(at: dt.datetime) -> str:
    """A time as the certificate states it (UTC, microseconds), whatever the backend gave
    (SQLite returns it without a zone)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _described(connection: Any, ids: Sequence[str]) -> list[dict[str, Any]]:
    rows = connection.execute(select(
        extracts.c.extract_id, extracts.c.source, extracts.c.sender, extracts.c.sha256,
        extracts.c.period_start, extracts.c.period_end, extracts.c.retention_date,
        extracts.c.rows_landed).where(extracts.c.extract_id.in_(list(ids)))
        .order_by(extracts.c.extract_id)).mappings().all()
    return [{"extract_id": r["extract_id"], "source": r["source"], "sender": r["sender"],
             "sha256": r["sha256"], "rows": int(r["rows_landed"] or 0),
             **{k: r[k].isoformat() if r[k] else None
                for k in ("period_start", "period_end", "retention_date")}} for r in rows]


def manifest(certificate: Certificate, described: list[dict[str, Any]]) -> dict[str, Any]:
    """What the digest is taken over: the certificate, what remained (when measured) and
    each extract it destroyed."""
    content = {"certificate_id": certificate.certificate_id, "at": certificate.at,
               "actor": certificate.actor, "schedule": certificate.schedule,
               "counts": dict(sorted(certificate.counts.items())), "extracts": described}
    if certificate.remaining:
        content["remaining"] = dict(sorted(certificate.remaining.items()))
    return content


def digest(content: dict[str, Any]) -> str:
    """SHA-256 of canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def destroy(settings: Settings, engine: Engine, extract_ids: Sequence[str], actor: Actor,
            schedule: str, dependents: Sequence[Dependent] = (),
            dry_run: bool = False, checks: Sequence[Check] = ()) -> Certificate:
    """Destroy extracts and everything derived from them; returns the certificate.

    Only extracts still landed (or left `destroying` by an interrupted run) may be named.
    `checks` measure what the dependents hold of the extracts (see `measure`); the
    certificate's counts removed and `remaining` come from measuring, before and after, and
    DestructionIncomplete is raised, with nothing certified, when anything remains.
    With `dry_run`, nothing changes: the certificate says what would go (rows and register
    rows; what dependents and the vault would lose is known only when it is done).
    """
    ids = sorted(set(extract_ids))
    now = dt.datetime.now(dt.UTC)
    with store.data_lock(settings):
        with engine.connect() as connection:
            found = connection.execute(select(extracts.c.extract_id, extracts.c.source,
                                              extracts.c.rows_landed)
                                       .where(extracts.c.extract_id.in_(ids),
                                              extracts.c.status.in_(LIVE))).all()
            rejected = connection.scalar(select(func.count()).select_from(rejected_rows)
                                         .where(rejected_rows.c.extract_id.in_(ids))) or 0
            register = connection.scalar(select(func.count()).select_from(optouts)
                                         .where(optouts.c.extract_id.in_(ids))) or 0
            described = _described(connection, ids)
        missing = sorted(set(ids) - {r.extract_id for r in found})
        if missing:
            raise ValueError(f"not landed (unknown or already destroyed): {', '.join(missing)}")
        counts = {"extracts": len(found), "rows": int(sum(r.rows_landed for r in found)),
                  "rejected_row_reasons": int(rejected), "optout_register_rows": int(register)}
        certificate = Certificate(
            certificate_id=f"dc-{now:%Y%m%d}-{secrets.token_hex(4)}", at=_iso(now),
            actor=actor.user, schedule=schedule, extract_ids=ids,
            sources={r.extract_id: r.source for r in found}, counts=counts,
            manifest_digest="", dry_run=dry_run)
        if dry_run or not ids:
            certificate.manifest_digest = digest(manifest(certificate, described))
            return certificate
        _destroy_locked(settings, engine, ids, actor, dependents, checks, certificate,
                        described, now)
    return certificate


def _measured(settings: Settings, engine: Engine, ids: list[str],
              checks: Sequence[Check]) -> dict[str, int]:
    found = measure(settings, engine, ids)
    for check in checks:
        for name, value in check(ids).items():
            found[name] = found.get(name, 0) + int(value)
    return found


def _destroy_locked(settings: Settings, engine: Engine, ids: list[str], actor: Actor,
                    dependents: Sequence[Dependent], checks: Sequence[Check],
                    certificate: Certificate, described: list[dict[str, Any]],
                    now: dt.datetime) -> None:
    before = _measured(settings, engine, ids, checks)
    with engine.begin() as connection:  # from here on no stage reads them
        connection.execute(update(extracts).where(extracts.c.extract_id.in_(ids))
                           .values(status="destroying", landed_sha256=None))
    for extract_id in ids:
        store.remove_tree(settings.layout.extract(extract_id))
        store.remove_tree(settings.layout.staged(extract_id))
    store.clear_dead_scratch(settings)  # a killed stage's copy; a live stage's is measured
    store.clear_linked_cache(settings)  # copies of linked rows kept for the next stage
    derived: dict[str, int] = {}
    for dependent in dependents:
        for name, value in dependent(ids).items():
            derived[name] = derived.get(name, 0) + int(value)
    orphans = unreferenced_vault_entries(settings, engine, ids)
    with engine.begin() as connection:
        connection.execute(delete(rejected_rows).where(rejected_rows.c.extract_id.in_(ids)))
        connection.execute(delete(optouts).where(optouts.c.extract_id.in_(ids)))
        vault.forget(connection, orphans)
    # What the certificate states is measured: what is left now, and before less after.
    after = _measured(settings, engine, ids, checks)
    certificate.counts.update(derived)  # what dependents say; measured figures win below
    for name, value in before.items():
        certificate.counts[REMOVED_AS.get(name, f"{name}_removed")] = value - after[name]
    certificate.remaining = dict(sorted(after.items()))
    certificate.manifest_digest = digest(manifest(certificate, described))
    if not certificate.complete:
        audit.log(engine, actor, "retention.destroy", f"certificate/{certificate.certificate_id}",
                  n_records=certificate.counts["rows"], outcome="incomplete",
                  detail={"schedule": certificate.schedule, "extracts": len(ids),
                          "remaining": {k: v for k, v in certificate.remaining.items() if v}},
                  at=now)
        raise DestructionIncomplete(certificate)
    with engine.begin() as connection:
        connection.execute(update(extracts).where(extracts.c.extract_id.in_(ids))
                           .values(status="destroyed", destroyed_at=now))
        seq = audit.record(connection, actor, "retention.destroy",
                           f"certificate/{certificate.certificate_id}",
                           n_records=certificate.counts["rows"],
                           detail={"schedule": certificate.schedule, "extracts": len(ids),
                                   "digest": certificate.manifest_digest}, at=now)
        certificate.audit_seq = seq
        connection.execute(insert(destruction_certificates).values(
            certificate_id=certificate.certificate_id, at=now, actor=actor.user,
            schedule=certificate.schedule, extract_ids=ids,
            counts={**certificate.counts, "remaining": certificate.remaining},
            manifest_digest=certificate.manifest_digest, audit_seq=seq))


def run(settings: Settings, engine: Engine, actor: Actor, as_of: dt.date,
        dependents: Sequence[Dependent] = (), dry_run: bool = False,
        schedule: str = "retention schedule", checks: Sequence[Check] = ()) -> Certificate:
    """Destroy every extract past its retention date on `as_of` (or say what would go), and
    the reasons of incidents past theirs (free text a declarer wrote: governance/incidents.py):
    with the extracts' destruction, measured in its certificate (`incident_reasons`), or on
    their own, audited there, when no extract is due."""
    ids = due(engine, as_of)
    if not ids and not dry_run:
        incidents.destroy_reasons(engine, actor, as_of)
    reasons: Dependent = lambda _ids: {  # noqa: E731 - the dependent's one line
        "incident_reasons_removed": incidents.destroy_reasons(engine, actor, as_of)}
    left: Check = lambda _ids: {  # noqa: E731 - the check's one line
        "incident_reasons": len(incidents.reasons_due(engine, as_of))}
    return destroy(settings, engine, ids, actor, schedule, [*dependents, reasons], dry_run,
                   [*checks, left])


def list_certificates(engine: Engine) -> list[dict[str, Any]]:
    """Every destruction certificate, newest first, for the IG lead."""
    with engine.connect() as connection:
        rows = connection.execute(select(destruction_certificates)
                                  .order_by(destruction_certificates.c.at.desc())).mappings()
        return [dict(row) for row in rows]


def verify_certificate(engine: Engine, certificate_id: str) -> bool:
    """Does the stored certificate still match its digest, and the audit entry it names?"""
    with engine.connect() as connection:
        row = connection.execute(select(destruction_certificates).where(
            destruction_certificates.c.certificate_id == certificate_id)).mappings().first()
        if row is None:
            raise ValueError(f"no certificate {certificate_id!r}")
        described = _described(connection, row["extract_ids"])
        detail = connection.scalar(select(audit_log.c.detail).where(
            audit_log.c.seq == row["audit_seq"]))
    counts = dict(row["counts"])
    certificate = Certificate(
        certificate_id=row["certificate_id"], at=_iso(row["at"]), actor=row["actor"],
        schedule=row["schedule"], extract_ids=list(row["extract_ids"]), sources={},
        remaining=dict(counts.pop("remaining", None) or {}),  # none before it was measured
        counts=counts, manifest_digest=row["manifest_digest"])
    recomputed = digest(manifest(certificate, described))
    audited = detail.get("digest") if isinstance(detail, dict) else None
    return recomputed == row["manifest_digest"] == audited
