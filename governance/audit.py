"""Append-only, hash-chained audit log: who did what, when, why, to how many records.

Each entry stores the previous entry's hash and its own hash over its content and sequence
number, so `verify` can name the first entry that was modified, deleted, inserted or
reordered. Entries never hold an identifier: pseudonyms, extract ids and counts only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import nhs_number
from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from governance.schema import audit_head, audit_log

GENESIS = "0" * 64
_HEAD_HASH = re.compile(r"^[0-9a-f]{64}$")
# What may stand between the digit groups of a written NHS number: none, or up to three
# characters that are not letters or digits (spaces of any kind, hyphens and dashes, dots,
# slashes, underscores, plus as an encoded space...). URL-encoded text is decoded first.
SEPARATORS = r"[\W_]{0,3}"
# Ten digits as 3-3-4 with any of those separators: the shape of an NHS number (any digits).
NHS_SHAPE = rf"\d{{3}}{SEPARATORS}\d{{3}}{SEPARATORS}\d{{4}}"
_NHS_LIKE = re.compile(rf"(?<!\d)(\d{{3}}){SEPARATORS}(\d{{3}}){SEPARATORS}(\d{{4}})(?!\d)")
WITHHELD = "(withheld)"
# Keyed hashes and digests (pseudonyms, person keys `P...`, SHA-256 digests): 16 or more lower
# case hex characters with a letter among them, maybe after one prefix letter. Their digits
# are not NHS numbers, and by chance about one in 150 holds a run that passes modulus 11.
_HEX_TOKEN = re.compile(r"(?<![0-9A-Za-z])[A-Za-z]?(?=[0-9a-f]*[a-f])[0-9a-f]{16,}"
                        r"(?![0-9A-Za-z])")
# A keyed hash or digest (kept whole) or an NHS-shaped run, whichever starts first.
_SCAN = re.compile(rf"(?P<hex>{_HEX_TOKEN.pattern})|{_NHS_LIKE.pattern}")


@dataclass(frozen=True)
class Actor:
    """Who is acting, in which role and organisation, for which purpose."""

    user: str
    role: str
    org: str
    purpose: str = "administration"


SYSTEM = Actor(user="haven", role="system", org="HAVEN", purpose="administration")


@dataclass(frozen=True)
class Finding:
    """The first break in the chain: which entry and what kind of tampering it shows."""

    seq: int
    problem: str  # modified | deleted | inserted | reordered | truncated

    def __str__(self) -> str:
        return f"audit entry {self.seq}: {self.problem}"


@dataclass
class Verification:
    ok: bool
    entries: int
    head: str
    finding: Finding | None = None
    details: list[str] = field(default_factory=list)


def _canonical_time(at: datetime | str) -> str:
    if isinstance(at, str):  # a raw SQLite read
        at = datetime.fromisoformat(at)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(prev_hash: str, entry: Mapping[str, Any], at_text: str | None = None) -> str:
    """SHA-256 over the previous hash and the entry's canonical JSON (sequence number included).

    `at_text` is `entry["at"]` already in canonical form (a batch shares one time)."""
    content = {
        "seq": int(entry["seq"]), "at": at_text or _canonical_time(entry["at"]),
        "actor": entry["actor"], "role": entry["role"], "org": entry["org"],
        "purpose": entry["purpose"], "action": entry["action"], "resource": entry["resource"],
        "n_records": int(entry["n_records"]), "outcome": entry["outcome"],
        "detail": entry["detail"],
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


def _withhold(match: re.Match[str]) -> str:
    if match.group("hex") is not None:
        return match.group(0)
    digits = "".join(str(int(d)) for d in "".join(match.groups()[1:]))  # any script's digits
    return WITHHELD if nhs_number.is_valid(digits) else match.group(0)


def url_decoded(text: str) -> str:
    """`text` URL-decoded (up to three times: a path may be encoded twice)."""
    for _ in range(3):
        if "%" not in text:
            break
        plain = unquote(text)
        if plain == text:
            break
        text = plain
    return text


def redact(text: str) -> str:
    """`text` with anything shaped like a valid NHS number (10 digits passing modulus 11, with
    any common separators or none, URL-encoded or not) withheld; keyed hashes and digests are
    kept. Text holding no identifier is returned as it is."""
    out = _SCAN.sub(_withhold, text)
    decoded = url_decoded(out)
    if decoded != out:
        plain = _SCAN.sub(_withhold, decoded)
        if plain != decoded:  # an identifier was hidden by the encoding: keep the decoded text
            return plain
    return out


def _texts(value: Any) -> Iterator[str]:
    """Every piece of text in a detail: strings, keys, numbers and anything else as text."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _texts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, str):
        yield value
    elif value is not None and not isinstance(value, bool | float):
        yield str(value)


def redact_detail(value: Any) -> Any:
    """A detail (JSON-able) with every identifier in its keys, strings or numbers withheld."""
    if isinstance(value, Mapping):
        return {redact(str(key)): redact_detail(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_detail(item) for item in value]
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | float):
        return value
    text = str(value)
    plain = redact(text)
    return value if plain == text else plain


def redact_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry (as given to `record_many`) with every identifier in its text withheld."""
    out = dict(entry)
    for name in ("actor", "role", "org", "purpose", "action", "resource", "outcome"):
        out[name] = redact(entry[name])
    out["detail"] = redact_detail(entry["detail"])
    return out


def holds_identifier(*texts: str) -> bool:
    """Whether any text holds something shaped like a valid NHS number (see `redact`)."""
    return any(redact(text) != text for text in texts)


def _refuse_identifiers(entry: Mapping[str, Any]) -> None:
    """Refuse an entry holding anything shaped like a valid NHS number (10 digits, modulus 11),
    outside keyed hashes and digests, in any of its text or its detail."""
    texts = [str(entry[name]) for name in ("actor", "role", "org", "purpose", "action", "resource",
                                      "outcome")]
    if holds_identifier(*texts, *_texts(entry["detail"])):
        raise ValueError("audit entries may not contain an NHS number")


def record(
    connection: Connection,
    actor: Actor,
    action: str,
    resource: str,
    *,
    n_records: int = 0,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
    purpose: str | None = None,
    at: datetime | None = None,
) -> int:
    """Append one entry inside the caller's transaction; returns its sequence number."""
    entry = {"actor": actor.user, "role": actor.role, "org": actor.org,
             "purpose": purpose or actor.purpose, "action": action, "resource": resource,
             "n_records": n_records, "outcome": outcome, "detail": detail or {}}
    return record_many(connection, [entry], at=at)[0]


# Fields of an entry given to `record_many` (the rest, seq, at and hashes, are the chain's).
ENTRY_FIELDS = ("actor", "role", "org", "purpose", "action", "resource", "n_records", "outcome",
                "detail")
# Built once: a statement SQLAlchemy has seen is compiled from its cache, not again.
# Locks the head row and reads it in one statement (appends serialise on both backends).
_LOCK_HEAD = update(audit_head).where(audit_head.c.id == 1).values(
    seq=audit_head.c.seq).returning(audit_head.c.seq, audit_head.c.hash)
_NEW_HEAD = insert(audit_head).values(id=1, seq=0, hash=GENESIS)
_INSERT_ENTRIES = insert(audit_log)
_MOVE_HEAD = update(audit_head).where(audit_head.c.id == 1).values(
    seq=bindparam("head_seq"), hash=bindparam("head_hash"))


def record_many(target: Connection | Engine, entries: Sequence[Mapping[str, Any]],
                *, at: datetime | None = None) -> list[int]:
    """Append entries, in order, with the hashes `record` would give them one by one; returns
    their sequence numbers.

    Many requests' entries committed together (group commit) move the chain's one head row
    once and go in with one statement, instead of a transaction each. Given a Connection the
    entries join its transaction; given an Engine they are committed in one of their own.
    Each entry has the `ENTRY_FIELDS` (detail a JSON-able dict).

    Raises ValueError, writing nothing, when any entry holds an identifier (`redact_entry`
    gives an entry with them withheld).
    """
    if isinstance(target, Engine):
        with target.begin() as connection:
            return record_many(connection, entries, at=at)
    if not entries:
        return []
    for entry in entries:
        _refuse_identifiers(entry)
    head = target.execute(_LOCK_HEAD).first()
    if head is None:  # the first entry ever
        target.execute(_NEW_HEAD)
        head = (0, GENESIS)
    seq, previous = head
    when = at or datetime.now(UTC)
    when_text = _canonical_time(when)
    rows = []
    for entry in entries:
        seq += 1
        row = {name: entry[name] for name in ENTRY_FIELDS}
        row.update(seq=seq, at=when, prev_hash=previous)
        row["hash"] = previous = entry_hash(previous, row, when_text)
        rows.append(row)
    target.execute(_INSERT_ENTRIES, rows)
    target.execute(_MOVE_HEAD, {"head_seq": seq, "head_hash": previous})
    return [row["seq"] for row in rows]


def log(engine: Engine, actor: Actor, action: str, resource: str, **kwargs: Any) -> int:
    """Append one entry in its own transaction (for reads and refusals)."""
    with engine.begin() as connection:
        return record(connection, actor, action, resource, **kwargs)


def head(engine: Engine) -> dict[str, Any]:
    """The chain head (sequence and hash) to keep outside the database."""
    with engine.connect() as connection:
        row = connection.execute(select(audit_head).where(audit_head.c.id == 1)).first()
    if row is None:
        return {"seq": 0, "hash": GENESIS}
    return {"seq": int(row.seq), "hash": row.hash}


def parse_head(text: str) -> dict[str, Any]:
    """A head exported by `haven audit head`, read back; ValueError when it is not one (a
    tampered or wrong file must be named, never crash verification)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or set(data) != {"seq", "hash"} \
            or type(data["seq"]) is not int or data["seq"] < 0 \
            or not isinstance(data["hash"], str) or not _HEAD_HASH.match(data["hash"]):
        raise ValueError("not a chain head written by `haven audit head` "
                         "(a JSON object with seq and a 64-character hex hash)")
    return data


def verify(engine: Engine, expected_head: dict[str, Any] | None = None) -> Verification:
    """Walk the chain and name the first entry that was modified, deleted, inserted or reordered.

    Args:
        expected_head: a head exported earlier (`haven audit head`); when given, a chain cut
            short or rewritten from the end is caught too.
    """
    prev_hash, expected_seq, count = GENESIS, 1, 0
    rows_by_hash: dict[str, int] = {}
    rows, stored_head = _read_chain(engine)
    for row in rows:
        rows_by_hash[row["hash"]] = row["seq"]
    for row in rows:
        seq = int(row["seq"])
        recomputed = _rehash(row)
        if recomputed is None:  # not even readable as an entry: it was edited
            return _broken(count, prev_hash, Finding(seq, "modified"))
        if recomputed != row["hash"]:
            return _broken(count, prev_hash, _altered(row, prev_hash, rows, rows_by_hash))
        if row["prev_hash"] != prev_hash:
            earlier = rows_by_hash.get(row["prev_hash"])
            if seq > expected_seq:
                finding = Finding(seq, "deleted")
            elif earlier is not None and earlier > seq:
                finding = Finding(seq, "reordered")
            elif earlier is None and count:
                # Its own hash holds and its place is right, but its predecessor is gone: the
                # entry before it was replaced (rewritten with a hash of its own).
                finding = Finding(seq - 1, "modified")
            else:  # another entry claims its predecessor: that one was put in between
                finding = Finding(_claimant(row, rows), "inserted")
            return _broken(count, prev_hash, finding)
        if seq != expected_seq:
            return _broken(count, prev_hash, Finding(seq, "reordered"))
        prev_hash, expected_seq, count = row["hash"], seq + 1, count + 1
    stored = _head_of(stored_head)
    if stored is not None and stored["seq"] is None:
        return _broken(count, prev_hash, Finding(expected_seq, "truncated"),
                       "the stored head is not readable")
    for label, wanted in (("stored", stored), ("exported", expected_head)):
        if wanted and wanted["seq"] > 0 and (
                int(wanted["seq"]) >= expected_seq or
                (int(wanted["seq"]) == expected_seq - 1 and wanted["hash"] != prev_hash)):
            return _broken(count, prev_hash,
                           Finding(min(int(wanted["seq"]), expected_seq), "truncated"),
                           f"the {label} head does not match the last entry")
        if wanted and int(wanted["seq"]) < expected_seq - 1:
            matched = any(int(r["seq"]) == int(wanted["seq"]) and r["hash"] == wanted["hash"]
                          for r in rows)
            if not matched:
                return _broken(count, prev_hash, Finding(int(wanted["seq"]), "modified"),
                               f"the {label} head is not in the chain")
    return Verification(ok=True, entries=count, head=prev_hash)


_CHAIN_COLUMNS = ("seq", "at", "actor", "role", "org", "purpose", "action", "resource",
                  "n_records", "outcome", "detail", "prev_hash", "hash")
# The entries as stored, through the driver alone: a value edited into another type, or a
# detail that is no longer JSON, is read as it is rather than failing the read.
_READ_CHAIN = ("SELECT seq, at, actor, role, org, purpose, action, resource, n_records, "
               "outcome, CAST(detail AS TEXT), prev_hash, hash FROM audit_log ORDER BY seq")
_READ_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"


def _lenient_text(data: bytes) -> str:
    """SQLite text as str even when it was edited into bytes that are not UTF-8."""
    return data.decode("utf-8", "surrogateescape")


def _read_chain(engine: Engine) -> tuple[list[dict[str, Any]], Any]:
    """Every entry (column name -> stored value) in sequence order, and the head row."""
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            driver.text_factory = _lenient_text  # type: ignore[union-attr]
        try:
            rows = [_entry_of(row) for row in connection.exec_driver_sql(_READ_CHAIN)]
            head_row = connection.exec_driver_sql(_READ_HEAD).first()
        finally:
            if sqlite:
                driver.text_factory = str  # type: ignore[union-attr]
    return rows, head_row


_UNREADABLE = object()  # a detail that is not JSON


def _entry_of(row: Sequence[Any]) -> dict[str, Any]:
    entry = dict(zip(_CHAIN_COLUMNS, row, strict=True))
    try:
        entry["detail"] = json.loads(entry["detail"])
    except (ValueError, TypeError):  # not JSON text, or no text at all
        entry["detail"] = _UNREADABLE
    return entry


def _rehash(row: Mapping[str, Any]) -> str | None:
    """The hash an entry's stored values give, or None when they cannot be an entry at all
    (a detail that is not JSON, a count or time that is not one, a missing link...)."""
    if row["detail"] is _UNREADABLE:
        return None
    try:
        return entry_hash(row["prev_hash"], row)
    except (ValueError, TypeError, AttributeError, OverflowError):
        return None


def _head_of(row: Any) -> dict[str, Any] | None:
    """The stored head as {seq, hash}; seq None when it was edited into something unreadable."""
    if row is None:
        return None
    try:
        return {"seq": int(row[0]), "hash": str(row[1])}
    except (ValueError, TypeError):
        return {"seq": None, "hash": None}


# How far from its place `verify` looks for the number an entry was hashed with.
RENUMBER_WINDOW = 10_000


def _altered(row: Any, prev_hash: str, rows: Sequence[Any],
             rows_by_hash: dict[str, int]) -> Finding:
    """An entry whose hash does not hold: modified, or intact but renumbered (moved by an
    insertion before it, a deletion before it, or a reordering)."""
    seq = int(row["seq"])
    entry = dict(row)
    original = next((t for d in range(1, RENUMBER_WINDOW + 1) for t in (seq - d, seq + d)
                     if t > 0 and entry_hash(row["prev_hash"], {**entry, "seq": t}) ==
                     row["hash"]), None)
    if original is None:
        return Finding(seq, "modified")
    later = rows_by_hash.get(row["prev_hash"])
    if row["prev_hash"] == prev_hash or (later is not None and later > seq):
        return Finding(seq, "reordered")
    if original < seq:  # pushed down: the entry now holding its predecessor's link was added
        return Finding(_claimant(row, rows), "inserted")
    return Finding(seq, "deleted")  # pulled up: entries before it were removed


def _claimant(row: Any, rows: Sequence[Any]) -> int:
    """The first other entry chained to the same predecessor as `row` (else `row` itself)."""
    return min((int(r["seq"]) for r in rows
                if r["prev_hash"] == row["prev_hash"] and r["hash"] != row["hash"]),
               default=int(row["seq"]))


def _broken(count: int, head_hash: str, finding: Finding, *details: str) -> Verification:
    return Verification(ok=False, entries=count, head=head_hash, finding=finding,
                        details=list(details))
