"""Retention and destruction: every extract is destroyed after its date, with all made from it.

`destroy` removes an extract's rows (its folder), rejected-row reasons and opt-out register
rows, asks each dependent (the person index, score runs, exports) to destroy what was derived
from it, deletes vault entries no remaining row references, marks the extract destroyed and
writes a destruction certificate chained into the audit log. `run` destroys every extract
past its retention date (`as_of` treats a date as today, for tests and what-if questions).

Audit entries are not destroyed with the data: deleting them would break the hash chain that
proves nothing else was edited. Their own retention (policies/retention.csv, `audit`) is met by
archiving the chain up to a verified head, outside Haven, and starting a new chain from it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import Engine, delete, func, insert, select, update

from governance import audit, store, vault
from governance.audit import Actor
from governance.schema import (
    destruction_certificates,
    extracts,
    optouts,
    rejected_rows,
    runs,
)
from governance.settings import Settings

# A dependent destroys what it derived from the given extracts and says what, as counts.
Dependent = Callable[[list[str]], dict[str, int]]


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


def due(engine: Engine, as_of: dt.date) -> list[str]:
    """Landed extracts whose retention date has passed on `as_of`."""
    with engine.connect() as connection:
        return list(connection.scalars(
            select(extracts.c.extract_id).where(extracts.c.status == "landed",
                                                extracts.c.retention_date < as_of)
            .order_by(extracts.c.extract_id)))


def void_runs(settings: Settings, engine: Engine, extract_ids: Sequence[str]) -> dict[str, int]:
    """Score and link runs that used any of the extracts: marked void, their files removed
    (scores, models, reports and exports made from them)."""
    wanted = set(extract_ids)
    with engine.connect() as connection:
        listed = connection.execute(select(runs.c.run_id, runs.c.extract_ids)
                                    .where(runs.c.status == "complete")).all()
    hit = [r.run_id for r in listed if wanted & set(r.extract_ids or [])]
    files = 0
    for run_id in hit:
        for folder in (settings.runs_dir / run_id, settings.home / "reports" / run_id,
                       settings.exports_dir / run_id):
            if folder.exists():
                files += sum(1 for p in folder.rglob("*") if p.is_file())
                shutil.rmtree(folder)
    if hit:
        with engine.begin() as connection:
            connection.execute(update(runs).where(runs.c.run_id.in_(hit)).values(status="void"))
    return {"runs_voided": len(hit), "run_files_removed": files}


def _referenced_person_ids(settings: Settings, engine: Engine) -> set[str]:
    with engine.connect() as connection:
        landed = list(connection.scalars(
            select(extracts.c.extract_id).where(extracts.c.status == "landed")))
        registered = set(connection.scalars(select(optouts.c.person_id)))
    found = set(registered)
    for extract_id in landed:
        path = store.rows_path(settings, extract_id)
        if path.exists() and "person_id" in pq.read_schema(path).names:
            column = pq.read_table(path, columns=["person_id"]).column("person_id")
            found.update(v for v in column.unique().to_pylist() if v is not None)
    return found


def destroy(settings: Settings, engine: Engine, extract_ids: Sequence[str], actor: Actor,
            schedule: str, dependents: Sequence[Dependent] = (),
            dry_run: bool = False) -> Certificate:
    """Destroy extracts and everything derived from them; returns the certificate."""
    ids = sorted(set(extract_ids))
    with engine.connect() as connection:
        found = connection.execute(select(extracts.c.extract_id, extracts.c.source,
                                          extracts.c.rows_landed)
                                   .where(extracts.c.extract_id.in_(ids),
                                          extracts.c.status == "landed")).all()
        rejected = connection.scalar(select(func.count()).select_from(rejected_rows)
                                     .where(rejected_rows.c.extract_id.in_(ids))) or 0
        register = connection.scalar(select(func.count()).select_from(optouts)
                                     .where(optouts.c.extract_id.in_(ids))) or 0
    missing = sorted(set(ids) - {r.extract_id for r in found})
    if missing:
        raise ValueError(f"not landed (unknown or already destroyed): {', '.join(missing)}")
    counts = {"extracts": len(found), "rows": int(sum(r.rows_landed for r in found)),
              "rejected_row_reasons": int(rejected), "optout_register_rows": int(register)}
    sources = {r.extract_id: r.source for r in found}
    now = dt.datetime.now(dt.UTC)
    certificate = Certificate(
        certificate_id=f"dc-{now:%Y%m%d}-{secrets.token_hex(4)}", at=now.isoformat(),
        actor=actor.user, schedule=schedule, extract_ids=ids, sources=sources, counts=counts,
        manifest_digest="", dry_run=dry_run)
    if dry_run or not ids:
        certificate.manifest_digest = _digest(certificate)
        return certificate
    with store.data_lock(settings):
        with engine.begin() as connection:
            connection.execute(update(extracts).where(extracts.c.extract_id.in_(ids))
                               .values(status="destroyed", destroyed_at=now))
            connection.execute(delete(rejected_rows).where(rejected_rows.c.extract_id.in_(ids)))
            connection.execute(delete(optouts).where(optouts.c.extract_id.in_(ids)))
        for extract_id in ids:
            store.remove_tree(store.extract_dir(settings, extract_id))
    derived: dict[str, int] = {}
    for dependent in dependents:
        for name, value in dependent(ids).items():
            derived[name] = derived.get(name, 0) + int(value)
    referenced = _referenced_person_ids(settings, engine)
    with engine.begin() as connection:
        held = set(connection.scalars(select(vault.vault.c.person_id)))
        derived["vault_entries"] = vault.forget(connection, sorted(held - referenced))
    certificate.counts.update(derived)
    certificate.manifest_digest = _digest(certificate)
    with engine.begin() as connection:
        seq = audit.record(connection, actor, "retention.destroy",
                           f"certificate/{certificate.certificate_id}",
                           n_records=counts["rows"],
                           detail={"schedule": schedule, "extracts": len(ids),
                                   "digest": certificate.manifest_digest})
        certificate.audit_seq = seq
        connection.execute(insert(destruction_certificates).values(
            certificate_id=certificate.certificate_id, at=now, actor=actor.user,
            schedule=schedule, extract_ids=ids, counts=certificate.counts,
            manifest_digest=certificate.manifest_digest, audit_seq=seq))
    return certificate


def _digest(certificate: Certificate) -> str:
    manifest = {"extract_ids": certificate.extract_ids, "sources": certificate.sources,
                "counts": certificate.counts, "at": certificate.at,
                "schedule": certificate.schedule}
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


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
