"""Retention and destruction: every extract is destroyed after its date, with all made from it.

`destroy` removes an extract's rows (its folder), rejected-row reasons and opt-out register
rows, asks each dependent (the person index, score runs, exports: callbacks from the caller,
since governance does not import the stages) to destroy what was derived from it, deletes
vault entries no remaining landed row references, marks the extract destroyed and writes a
destruction certificate chained into the audit log. `run` destroys every extract past its
retention date (`as_of` treats a date as today, for tests and what-if questions).

Destruction is resumable. It first marks the extracts `destroying` (so no stage reads them
and the person index sees them gone), then removes files and calls dependents, and only in its
last transaction deletes their database rows, marks them `destroyed` and issues the
certificate. If anything fails in between, the extracts stay `destroying`, `due` lists them
again and the next run finishes the work and certifies it.

The certificate's digest is SHA-256 over the canonical JSON of its manifest: the certificate
id, time, actor, schedule, counts, and for each extract its id, source, sender, SHA-256 of the
file as sent, period, retention date and rows. Everything in it stays in the database (the
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

from governance import audit, store, vault
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
LIVE = ("landed", "destroying")  # statuses whose rows may still exist somewhere


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
    wanted = set(extract_ids)
    with engine.connect() as connection:
        listed = connection.execute(select(runs.c.run_id, runs.c.extract_ids)
                                    .where(runs.c.status == "complete")).all()
    hit = sorted(r.run_id for r in listed if wanted & set(r.extract_ids or []))
    files = 0
    for run_id in hit:
        for folder in (settings.layout.run(run_id).folder, settings.layout.report(run_id)):
            if folder.exists():
                files += sum(1 for p in folder.rglob("*") if p.is_file())
                shutil.rmtree(folder)
    exports = 0
    if hit:
        for described in settings.layout.export_descriptions():
            try:
                run_id = json.loads(described.read_text(encoding="utf-8")).get("run_id")
            except ValueError:
                run_id = None  # unreadable: kept, and named by nothing we destroy
            if run_id in hit:
                files += sum(1 for p in described.parent.rglob("*") if p.is_file())
                shutil.rmtree(described.parent)
                exports += 1
    if hit:
        with engine.begin() as connection:
            connection.execute(update(runs).where(runs.c.run_id.in_(hit)).values(status="void"))
    return {"runs_voided": len(hit), "run_files_removed": files, "exports_removed": exports}


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
    """What the digest is taken over: the certificate and each extract it destroyed."""
    return {"certificate_id": certificate.certificate_id, "at": certificate.at,
            "actor": certificate.actor, "schedule": certificate.schedule,
            "counts": dict(sorted(certificate.counts.items())), "extracts": described}


def digest(content: dict[str, Any]) -> str:
    """SHA-256 of canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def destroy(settings: Settings, engine: Engine, extract_ids: Sequence[str], actor: Actor,
            schedule: str, dependents: Sequence[Dependent] = (),
            dry_run: bool = False) -> Certificate:
    """Destroy extracts and everything derived from them; returns the certificate.

    Only extracts still landed (or left `destroying` by an interrupted run) may be named.
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
        _destroy_locked(settings, engine, ids, actor, dependents, certificate, described, now)
    return certificate


def _destroy_locked(settings: Settings, engine: Engine, ids: list[str], actor: Actor,
                    dependents: Sequence[Dependent], certificate: Certificate,
                    described: list[dict[str, Any]], now: dt.datetime) -> None:
    with engine.begin() as connection:  # from here on no stage reads them
        connection.execute(update(extracts).where(extracts.c.extract_id.in_(ids))
                           .values(status="destroying", landed_sha256=None))
    for extract_id in ids:
        store.remove_tree(settings.layout.extract(extract_id))
        store.remove_tree(settings.layout.staged(extract_id))
    derived: dict[str, int] = {}
    for dependent in dependents:
        for name, value in dependent(ids).items():
            derived[name] = derived.get(name, 0) + int(value)
    orphans = unreferenced_vault_entries(settings, engine, ids)
    certificate.counts.update(derived)
    with engine.begin() as connection:
        connection.execute(delete(rejected_rows).where(rejected_rows.c.extract_id.in_(ids)))
        connection.execute(delete(optouts).where(optouts.c.extract_id.in_(ids)))
        certificate.counts["vault_entries"] = vault.forget(connection, orphans)
        certificate.manifest_digest = digest(manifest(certificate, described))
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
            schedule=certificate.schedule, extract_ids=ids, counts=certificate.counts,
            manifest_digest=certificate.manifest_digest, audit_seq=seq))


def run(settings: Settings, engine: Engine, actor: Actor, as_of: dt.date,
        dependents: Sequence[Dependent] = (), dry_run: bool = False,
        schedule: str = "retention schedule") -> Certificate:
    """Destroy every extract past its retention date on `as_of` (or say what would go)."""
    return destroy(settings, engine, due(engine, as_of), actor, schedule, dependents, dry_run)


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
    certificate = Certificate(
        certificate_id=row["certificate_id"], at=_iso(row["at"]), actor=row["actor"],
        schedule=row["schedule"], extract_ids=list(row["extract_ids"]), sources={},
        counts=dict(row["counts"]), manifest_digest=row["manifest_digest"])
    recomputed = digest(manifest(certificate, described))
    audited = detail.get("digest") if isinstance(detail, dict) else None
    return recomputed == row["manifest_digest"] == audited
