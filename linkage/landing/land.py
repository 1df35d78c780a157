"""Land an extract: check it against its manifest and contract, pseudonymise it, keep nothing raw.

An extract lands whole or not at all. Rows are checked and pseudonymised batch by batch into a
staging folder; the folder is moved into place and the receipt, vault entries and audit event
are committed in one transaction. After a crash the next landing clears what was left, so a
re-run lands the file exactly once; a file already landed (same SHA-256) is a `duplicate`.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import SQLAlchemyError

from governance import audit, store, vault
from governance.audit import Actor
from governance.keys import KeyProvider
from governance.layout import ROWS_FILE
from governance.policy_tables import retention_date
from governance.schema import extracts, optouts, rejected_rows
from governance.settings import Settings
from linkage.landing.ahead import ahead
from linkage.landing.batches import Job, Prepared, pool_size, prepared_batches
from linkage.landing.contracts import CONTRACTS, Contract
from linkage.landing.manifest import Manifest, ManifestError, read_manifest
from linkage.landing.pseudonymise import MEMO_LIMIT, Pseudonymised
from linkage.landing.reader import (
    Batch,
    Checksum,
    FileRefused,
    NotText,
    ReadStats,
    csv_batches,
    is_parquet,
    parquet_batches,
    parquet_columns,
    read_header,
)
from linkage.landing.seen_ids import SeenIds
from linkage.sorted_search import search_sorted

# More rejected rows than this share means the file itself is wrong (e.g. columns shifted).
MAX_REJECTED_FRACTION = 0.5
MAX_REASONS_SHOWN = 10_000
# Why an upload was not landed when the same file (SHA-256) was landed from elsewhere: says
# nothing about that other extract, nor that it exists.
NOT_ACCEPTED = ("this file cannot be accepted from your organisation; the IG team can say "
                "why (quote this receipt's extract id)")

# Given a landed batch, its source and sender, a mask of rows no purpose may use (opt-outs).
Exclusion = Callable[[pa.Table, str, str], np.ndarray]
# Given an optouts batch's types, a thunk for its pseudonyms and the sender: per row, why the
# sender may not assert it, or None (governance.optouts.sender_check).
SenderCheck = Callable[[list[str], Callable[[], list[str | None]], str], list[str | None]]


@dataclass
class Receipt:
    """What became of one file: returned to the sender and stored with the extract."""

    extract_id: str
    source: str | None
    sender: str | None
    status: str  # landed | refused | duplicate
    file: str
    reason: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    retention_date: str | None = None
    ignored_columns: list[str] = field(default_factory=list)
    rejected_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.reason is None:
            data.pop("reason")
        return data


@dataclass
class LandingContext:
    """What landing needs, passed in explicitly."""

    settings: Settings
    engine: Engine
    keys: KeyProvider
    actor: Actor = audit.SYSTEM
    exclusion: Exclusion | None = None
    uploaded_by_org: str | None = None
    sender_check: SenderCheck | None = None  # who may assert which opt-out (the register)
    # How the file is read and its batches checked and pseudonymised: read here and
    # `prepared_batches` (here, or two forked processes) unless an engine passes its own
    # (Spark's `pipeline.engines.spark_land.spark_file_preparer`), given (path, columns,
    # parquet, batch_rows, stats, job): it yields what `prepared_batches` would for the
    # file's batches (possibly more, smaller ones) and leaves the reader's counts in
    # `stats`. The decisions that span the file stay here.
    file_preparer: Callable[[Path, list[str], bool, int, ReadStats, Job],
                            Iterator[Prepared]] | None = None


def new_extract_id(source: str | None) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return f"{stamp}-{source or 'unknown'}-{secrets.token_hex(4)}"


def recover(ctx: LandingContext) -> int:
    """Clear what an interrupted landing left: staging folders and unreceipted extract folders."""
    removed = store.clear_staging(ctx.settings)
    with ctx.engine.connect() as connection:
        landed = set(connection.scalars(
            select(extracts.c.extract_id).where(extracts.c.status == "landed")))
    for folder in store.landed_folders(ctx.settings):
        if folder not in landed:
            store.remove_tree(ctx.settings.layout.extract(folder))
            removed += 1
    return removed


def inbound_files(path: Path) -> list[Path]:
    """The extracts at `path`: the file itself, or every data file in a folder (manifests aside)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir()
                      if p.is_file() and not p.name.endswith(".manifest.json")
                      and p.suffix.lower() in (".csv", ".parquet"))
    return [path]


def land_path(ctx: LandingContext, path: Path, remove: bool = False) -> list[Receipt]:
    """Land a file (with its manifest beside it) or every extract in a folder."""
    receipts = []
    for file in inbound_files(path):
        receipts.append(land_file(ctx, file, remove=remove))
    return receipts


def land_file(ctx: LandingContext, path: Path, manifest: Manifest | None = None,
              remove: bool = False, display_name: str | None = None) -> Receipt:
    """Land one extract file; returns its receipt (landed, refused or duplicate)."""
    name = display_name or path.name
    with store.data_lock(ctx.settings):
        recover(ctx)
        try:
            if manifest is None:
                manifest = read_manifest(path)
            receipt = _land_locked(ctx, path, manifest, name)
        except (ManifestError, FileRefused) as exc:
            receipt = _refuse(ctx, name, manifest, str(exc))
        finally:
            if remove:
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".manifest.json").unlink(missing_ok=True)
    return receipt


def _land_locked(ctx: LandingContext, path: Path, manifest: Manifest, name: str) -> Receipt:
    if not path.exists():
        raise FileRefused("the file does not exist")
    # The file is hashed while it lands; nothing is committed before the digest is checked,
    # and a file that differs from the manifest is refused for that before any other reason.
    # Opt-outs are checked against the register as they land: those stay in this process.
    workers = 1 if manifest.source == "optouts" else pool_size(
        -(-manifest.rows // max(ctx.settings.batch_rows, 1)))
    checksum = Checksum(path, lines=not is_parquet(path))
    if workers > 1:
        checksum.hexdigest()  # the pool forks: no other thread may be running then
    try:
        return _land_checksummed(ctx, path, manifest, name, checksum, workers)
    except FileRefused as refused:
        _verify(checksum, manifest)
        if not isinstance(refused, NotText):  # bytes that are not text: say so, not their "lines"
            _whole(checksum)
        raise
    except Exception:
        _verify(checksum, manifest)
        raise
    finally:
        with suppress(Exception):
            checksum.hexdigest()  # the hashing thread does not outlive the landing


def _verify(checksum: Checksum, manifest: Manifest) -> None:
    """Refuse the file unless its SHA-256 is the manifest's."""
    if checksum.hexdigest() != manifest.sha256:
        raise FileRefused("sha256 does not match the manifest: the file differs from what was sent")


def _whole(checksum: Checksum) -> None:
    """Refuse the file if it changed while it landed (what was read, here or by Spark's
    tasks, may not be what was hashed), or if a CSV's lines are not whole
    (`reader.LineCheck`: else its rows would depend on how the file is cut). Checked after
    the digest and before any other reason but a file that is not UTF-8, so either engine
    refuses a file for the same one."""
    if checksum.changed():
        raise FileRefused("the file changed while it was landing")
    why = checksum.line_refusal()
    if why is not None:
        raise FileRefused(why)


def _land_checksummed(ctx: LandingContext, path: Path, manifest: Manifest, name: str,
                      checksum: Checksum, workers: int) -> Receipt:
    digest = manifest.sha256  # what the file is, once `_verify` has passed
    with ctx.engine.connect() as connection:
        existing = connection.execute(
            select(extracts.c.extract_id, extracts.c.counts, extracts.c.uploaded_by_org)
            .where(extracts.c.landed_sha256 == digest)).first()
    if existing is not None:
        _verify(checksum, manifest)
    if existing is not None and ctx.uploaded_by_org not in (None, existing.uploaded_by_org):
        # Another organisation's upload (or one landed by Haven's operators): a receipt only
        # ever describes the sender's own uploads, so this sender learns neither that extract
        # nor that the file exists. They get a refusal of their own; the audit entry names
        # the landed extract for the IG team.
        return _refuse(ctx, name, manifest, NOT_ACCEPTED, duplicate_of=existing.extract_id)
    if existing is not None:
        with ctx.engine.begin() as connection:
            audit.record(connection, ctx.actor, "extract.duplicate",
                         f"extract/{existing.extract_id}", outcome="duplicate",
                         detail={"source": manifest.source, "sender": manifest.sender})
        return Receipt(existing.extract_id, manifest.source, manifest.sender, "duplicate", name,
                       reason="this file (same sha256) has already landed",
                       counts=existing.counts)
    contract = CONTRACTS[manifest.source]
    extract_id = new_extract_id(manifest.source)
    staging = ctx.settings.layout.staged(extract_id)
    staging.mkdir(parents=True)
    try:
        return _stage_and_commit(ctx, path, manifest, contract, extract_id, name, checksum,
                                 workers)
    finally:
        store.remove_tree(staging)


def _columns_of(path: Path, parquet: bool) -> list[str]:
    return parquet_columns(path) if parquet else read_header(path)


def _stage_and_commit(ctx: LandingContext, path: Path, manifest: Manifest, contract: Contract,
                      extract_id: str, name: str, checksum: Checksum,
                      workers: int) -> Receipt:
    parquet = is_parquet(path)
    columns = _columns_of(path, parquet)
    missing = [c for c in contract.names if c not in columns]
    if missing:
        raise FileRefused(f"missing columns for source {contract.source}: {', '.join(missing)}")
    ignored = [c for c in columns if c not in contract.names]
    keys = {p: ctx.keys.current(p) for p in ("pseudonym", "linkage", "vault")}
    with ctx.engine.connect() as connection:
        vault.stage_open(connection)
        connection.commit()
        try:
            return _land_batches(ctx, connection, path, parquet, columns, manifest, contract,
                                 extract_id, name, keys, ignored, checksum, workers)
        finally:
            with suppress(SQLAlchemyError):
                vault.stage_close(connection)
                connection.commit()


class _Worker:
    """One thread running jobs in order (Parquet and SQLite release the GIL while they work).

    The queue is short, so memory stays bounded by a batch or two. After a failed job the rest
    are skipped and `finish` raises the failure.
    """

    def __init__(self, name: str, depth: int = 1) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # noqa: BLE001 - handed to the landing thread
                    self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        if self._error is not None:
            raise self._error
        self._jobs.put(job)

    def finish(self) -> None:
        """Wait for every job; raise the first failure."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def finish_quietly(self) -> None:
        """Wait for every job, leaving any failure to the caller's own exception."""
        with suppress(BaseException):
            self.finish()


def _land_batches(ctx: LandingContext, connection: Connection, path: Path, parquet: bool,
                  columns: list[str], manifest: Manifest, contract: Contract, extract_id: str,
                  name: str, keys: dict[str, Any], ignored: list[str],
                  checksum: Checksum, workers: int) -> Receipt:
    stats = ReadStats()
    staging = ctx.settings.layout.staged(extract_id)
    counts: Counter[str] = Counter()
    reasons: list[tuple[int, str]] = []
    seen_ids = SeenIds()
    sealed = 0
    persons_sealed = SealedPersons()  # each person is sealed once, when first seen
    writer: list[pq.ParquetWriter] = []
    optout_rows: list[dict[str, Any]] = []
    job = Job(contract.source, extract_id, manifest.sender, keys)
    read: Iterator[Batch] | None = None
    if ctx.file_preparer is not None:
        prepared = ctx.file_preparer(path, columns, parquet, ctx.settings.batch_rows, stats,
                                     job)
    else:
        batches = (parquet_batches(path, ctx.settings.batch_rows, stats) if parquet
                   else csv_batches(path, columns, ctx.settings.batch_rows, stats))
        # The pool forks on entry, before the reading and writing threads start.
        read = ahead(batches, "landing-read")
        prepared = prepared_batches(read, job, workers)

    def write(table: pa.Table) -> None:
        if not writer:
            writer.append(pq.ParquetWriter(staging / ROWS_FILE, table.schema,
                                           compression="zstd", **_parquet_options(table)))
        writer[0].write_table(table.cast(writer[0].schema))

    def seal(pseudonyms: pa.Array, numbers: pa.Array) -> None:
        person_ids = pseudonyms.to_pylist()  # made into Python text here, off the landing thread
        nonces, ciphertexts = vault.seal_columns(person_ids, numbers.to_pylist(), keys["vault"])
        vault.stage(connection, person_ids, keys["pseudonym"].key_id, keys["vault"].key_id,
                    nonces, ciphertexts)
        connection.commit()

    # Parquet is written on one thread, vault entries sealed and staged on another.
    output: _Worker | None = None
    sealing: _Worker | None = None
    try:
        for batch in prepared:
            if output is None or sealing is None:
                output, sealing = _Worker("landing-write"), _Worker("landing-vault")
            counts["nhs_invalid"] += batch.nhs_invalid
            counts["nhs_missing"] += batch.nhs_missing
            counts["dropped_no_consent"] += batch.dropped_no_consent
            reasons.extend(batch.reasons)
            result = batch.result
            if result is None:
                continue
            good = np.zeros(len(batch.rows), dtype=bool)
            good[batch.candidates] = True
            if batch.fingerprints is not None:
                good &= ~_duplicate_ids(batch.fingerprints, good, seen_ids, batch.rows,
                                        contract.unique, reasons)
            if contract.source == "optouts" and ctx.sender_check is not None and good.any():
                good &= ~_not_senders_to_assert(ctx.sender_check, result.table, good,
                                                batch.candidates, batch.rows, manifest.sender,
                                                reasons)
            keep = good[batch.candidates]
            if not keep.any():
                continue
            table = result.table if keep.all() else result.table.filter(pa.array(keep))
            if result.encoded is not None:
                counts["encoded"] += int(result.encoded[keep].sum())
            entries = _new_persons(result, keep, persons_sealed)
            if ctx.exclusion is not None:
                excluded = ctx.exclusion(table, contract.source, manifest.sender)
                if excluded.any():
                    counts["excluded_by_optout"] += int(excluded.sum())
                    table = table.filter(pa.array(~excluded))
            output.submit(partial(write, table))
            counts["landed"] += table.num_rows
            if len(entries[0]):
                sealed += len(entries[0])
                sealing.submit(partial(seal, *entries))
            if contract.source == "optouts":
                optout_rows.extend(_optout_register_rows(table, manifest.sender))
            # Let go of this batch before the next is prepared (the writer holds what it needs).
            del batch, result, table
        for worker in (output, sealing):
            if worker is not None:
                worker.finish()
    finally:
        try:
            prepared.close()  # an engine's clean-up may raise: the rest is still done
        finally:
            if read is not None:
                read.close()  # its thread stops now, not when a failure's traceback is let go
            for worker in (output, sealing):
                if worker is not None:
                    worker.finish_quietly()
            if writer:
                writer[0].close()
    for row in stats.unsplittable:
        reasons.append((row, "row could not be split into the header's columns"))
    received = stats.rows_seen
    if received != manifest.rows:
        raise FileRefused(f"row count {received} does not match the manifest's {manifest.rows}")
    if received and len(reasons) > MAX_REJECTED_FRACTION * received:
        raise FileRefused(f"{len(reasons)} of {received} rows failed the contract for "
                          f"{contract.source}: the file is refused whole (first: row "
                          f"{min(reasons)[0]}, {min(reasons)[1]})")
    if not writer:  # no row landed: still an extract, with an empty table
        empty = pa.table({"extract_id": pa.array([], pa.string()),
                          "row": pa.array([], pa.int64())})
        pq.write_table(empty, staging / ROWS_FILE)
    reasons.sort()
    by_reason = Counter(reason for _, reason in reasons)
    counts_out: dict[str, Any] = {
        "received": received, "landed": counts["landed"], "rejected": len(reasons),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "dropped_no_consent": counts["dropped_no_consent"],
        "excluded_by_optout": counts["excluded_by_optout"],
        "nhs_missing": counts["nhs_missing"], "nhs_invalid": counts["nhs_invalid"],
        "encoded_for_linkage": counts["encoded"],
    }
    if ignored:
        counts_out["ignored_columns"] = len(ignored)
    retain = retention_date(contract.source, manifest.period_end, ctx.engine)
    _verify(checksum, manifest)
    _whole(checksum)
    digest = manifest.sha256
    store.publish(ctx.settings, extract_id)
    try:
        with connection.begin():
            connection.execute(insert(extracts).values(
                extract_id=extract_id, source=contract.source, sender=manifest.sender,
                period_start=manifest.period_start, period_end=manifest.period_end,
                sha256=digest, landed_sha256=digest, status="landed", reason=None,
                received_at=datetime.now(UTC), retention_date=retain,
                uploaded_by_org=ctx.uploaded_by_org, uploaded_by_user=ctx.actor.user,
                key_id=keys["pseudonym"].key_id, counts=counts_out,
                rows_landed=counts["landed"]))
            for start in range(0, len(reasons), 10_000):
                connection.execute(insert(rejected_rows), [
                    {"extract_id": extract_id, "row": r, "reason": why}
                    for r, why in reasons[start:start + 10_000]])
            new_vault = vault.store_staged(connection) if sealed else 0
            if optout_rows:
                connection.execute(insert(optouts), optout_rows)
            audit.record(connection, ctx.actor, "extract.land", f"extract/{extract_id}",
                         n_records=counts["landed"],
                         detail={"source": contract.source, "sender": manifest.sender,
                                 "rejected": len(reasons), "vault_new": new_vault})
    except Exception:
        store.remove_tree(ctx.settings.layout.extract(extract_id))
        raise
    return Receipt(extract_id, contract.source, manifest.sender, "landed", name,
                   counts=counts_out, retention_date=retain.isoformat(),
                   ignored_columns=ignored,
                   rejected_rows=[{"row": r, "reason": why}
                                  for r, why in reasons[:MAX_REASONS_SHOWN]])


def _dictionary_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary-encoding in Parquet: not the keyed, near-unique ones."""
    return [f.name for f in table.schema
            if not (f.name in ("person_id", "record_key") or f.name.startswith("lk_"))]


# Encodings of the landed rows' near-unique columns, cheaper to write than plain values and
# smaller: row numbers rise by one (deltas), pseudonyms are text of one length (the lengths
# stored as deltas, the text end to end). Read by Arrow, DuckDB and Spark alike.
_ENCODINGS = {"row": "DELTA_BINARY_PACKED", "person_id": "DELTA_LENGTH_BYTE_ARRAY",
              "record_key": "DELTA_LENGTH_BYTE_ARRAY"}


def _parquet_options(table: pa.Table) -> dict[str, Any]:
    """How the landed rows are written (the values are the same whatever the options).

    Keyed columns get neither dictionaries nor min/max statistics: their values are near-unique
    and uniformly spread, so neither would ever spare a read (the statistics alone were a fifth
    of the writing time). Row numbers keep their statistics (a reader may look rows up).
    """
    plain = _dictionary_columns(table)
    encoded = {name: how for name, how in _ENCODINGS.items() if name in table.column_names}
    return {"use_dictionary": [n for n in plain if n not in encoded],
            "write_statistics": plain, "column_encoding": encoded}


def _duplicate_ids(fingerprints: np.ndarray, good: np.ndarray, seen: SeenIds,
                   rows: np.ndarray, id_name: str, reasons: list[tuple[int, str]]) -> np.ndarray:
    """Rows whose record id appeared earlier in the file (the first is kept), as a mask.

    Ids are compared by their 64-bit keyed fingerprint (see `record_keys`), those kept so far
    held in `seen` (`linkage.landing.seen_ids`): 8 bytes a row, never the id.
    """
    candidates = np.flatnonzero(good)
    order = np.argsort(fingerprints[candidates], kind="stable")  # first occurrence first
    ordered = fingerprints[candidates][order]
    repeated = np.zeros(len(ordered), dtype=bool)
    repeated[1:] = ordered[1:] == ordered[:-1]
    repeated |= seen.seen(ordered)
    duplicate = np.zeros(len(fingerprints), dtype=bool)
    duplicate[candidates[order[repeated]]] = True
    for row in rows[duplicate].tolist():
        reasons.append((row, f"{id_name}: duplicate of an earlier row"))
    seen.add(ordered[~repeated])
    return duplicate


def _not_senders_to_assert(check: SenderCheck, table: pa.Table, good: np.ndarray,
                           candidates: np.ndarray, rows: np.ndarray, sender: str,
                           reasons: list[tuple[int, str]]) -> np.ndarray:
    """Rows of an optouts batch the sender may not assert (policies/optout_senders.csv), as a
    mask over the batch; each gets its reason. `table` holds the batch's `candidates` rows
    pseudonymised; pseudonyms are read from it only if the check asks for them."""
    at = np.flatnonzero(good)
    taken = pa.array(np.searchsorted(candidates, at), pa.int64())
    types = pc.take(table.column("optout_type"), taken).to_pylist()
    why = check(types, lambda: pc.take(table.column("person_id"), taken).to_pylist(), sender)
    rejected = np.zeros(len(good), dtype=bool)
    for i, reason in zip(at.tolist(), why, strict=True):
        if reason is not None:
            rejected[i] = True
            reasons.append((int(rows[i]), reason))
    return rejected


class SealedPersons:
    """The NHS numbers (as integers) a landing has sealed into the vault so far, sorted.

    8 bytes a person, looked up a batch at a time; cleared past `limit` numbers to keep memory
    bounded (a person met again after that is sealed again, and the vault keeps one entry).
    """

    def __init__(self, limit: int = MEMO_LIMIT) -> None:
        self.limit = limit
        self._numbers = np.zeros(0, dtype=np.int64)

    def unknown(self, numbers: np.ndarray) -> np.ndarray:
        """Per number: not sealed yet."""
        if not len(self._numbers):
            return np.ones(len(numbers), dtype=bool)
        at = np.minimum(search_sorted(self._numbers, numbers), len(self._numbers) - 1)
        return self._numbers[at] != numbers

    def add(self, numbers: np.ndarray) -> None:
        """Remember distinct `numbers` not remembered yet."""
        if len(self._numbers) + len(numbers) > self.limit:
            self._numbers = self._numbers[:0]
        ordered = np.sort(numbers)
        self._numbers = np.insert(self._numbers, np.searchsorted(self._numbers, ordered),
                                  ordered)


def _new_persons(result: Pseudonymised, keep: np.ndarray,
                 sealed: SealedPersons) -> tuple[pa.Array, pa.Array]:
    """The pseudonyms and NHS numbers of kept rows' persons not sealed before in this file."""
    none = pa.array([], pa.string())
    persons = result.persons
    if persons is None:
        return none, none
    codes = persons.codes[keep]
    codes = codes[codes >= 0]
    if not len(codes):
        return none, none
    present = np.flatnonzero(np.bincount(codes, minlength=len(persons.numbers)))
    at = pa.array(present)
    numbers = pc.take(persons.numbers, at)
    values = pc.cast(numbers, pa.int64()).to_numpy(zero_copy_only=False)
    unknown = sealed.unknown(values)
    if not unknown.any():
        return none, none
    sealed.add(values[unknown])
    fresh = pa.array(unknown)
    return pc.filter(pc.take(persons.digests, at), fresh), pc.filter(numbers, fresh)


def _optout_register_rows(table: pa.Table, sender: str) -> Iterable[dict[str, Any]]:
    for row in table.select(["person_id", "optout_type", "effective_date", "withdrawn",
                             "extract_id", "row"]).to_pylist():
        yield dict(row, sender=sender)


def _refuse(ctx: LandingContext, name: str, manifest: Manifest | None, reason: str,
            duplicate_of: str | None = None) -> Receipt:
    source = manifest.source if manifest else None
    sender = manifest.sender if manifest else None
    extract_id = new_extract_id(source)
    with ctx.engine.begin() as connection:
        connection.execute(insert(extracts).values(
            extract_id=extract_id, source=source or "unknown", sender=sender or "unknown",
            period_start=manifest.period_start if manifest else None,
            period_end=manifest.period_end if manifest else None,
            sha256=manifest.sha256 if manifest else "", landed_sha256=None, status="refused",
            reason=reason, received_at=datetime.now(UTC), uploaded_by_org=ctx.uploaded_by_org,
            uploaded_by_user=ctx.actor.user, counts={}, rows_landed=0))
        detail = {"source": source, "reason": reason}
        if duplicate_of is not None:
            detail["duplicate_of"] = duplicate_of
        audit.record(connection, ctx.actor, "extract.refuse", f"extract/{extract_id}",
                     outcome="refused", detail=detail)
    return Receipt(extract_id, source, sender, "refused", name, reason=reason)


def today() -> date:
    return datetime.now(UTC).date()
