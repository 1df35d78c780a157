"""Opt-outs honoured by purpose: which person's data each purpose of use may not use, and when.

The register is the `optouts` table (landed from `optouts` extracts, pseudonymised). Which row
is in force for a person (the rule, also in governance/README.md):

- Rows are grouped by person and opt-out type; for a type the policy table scopes to its sender
  (`consent_withdrawn`: a council's consent covers only that council's data), by sender too.
- In each group the row with the latest `effective_date` on or before the day asked about
  wins. Rows dated later are not in force yet.
- If that row says `withdrawn`, the person opted back in from that date and nothing of the
  group is in force; otherwise the opt-out is. Two rows of one group on the same date that
  disagree resolve to the objection: a withdrawal must be dated after the objection it ends.

The policy table `policies/optout_purposes.csv` (or an IG lead's override, see
`set_purposes`) says which type covers which purpose and which data; `policies/optout_senders.csv`
says which senders may assert each type (`sender_check`, applied as `optouts` extracts land: a
council cannot create or cancel a national or GP opt-out). Opt-outs are applied
three ways: at landing (`landing_exclusion`: rows no purpose may use are never kept), after
landing (`purge` removes such rows from landed extracts when the opt-out arrives later), and at
use (`purpose_filter` drops what one purpose may not use, for scoring and release). The
register's own rows are never excluded by any of them: they are how objections are honoured.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine, func, select, update

from governance import audit, store
from governance.audit import SYSTEM, Actor
from governance.policy_tables import read_table, set_policy
from governance.schema import extracts, optouts
from governance.settings import Settings
from governance.suppression import Rule, suppress

POLICY = "optout_purposes.csv"
SENDERS_POLICY = "optout_senders.csv"
PURPOSES = ("commissioning", "case_finding", "research", "direct_care",
            "emergency_planning")
TYPES = ("ndoo", "type1", "consent_withdrawn")
SCOPES = ("all", "sender")
REGISTER = "optouts"  # the source that carries the register itself: never excluded
LOCAL_AUTHORITY = re.compile(r"^[EWSN]\d{8}$")  # ONS codes councils send under
ODS_CODE = re.compile(r"^[A-Z0-9]{3,10}$")  # as a manifest's sender
PRACTICE_CODE = re.compile(r"^[A-Z]\d{5}$")  # a GP practice, as the contracts' gp_practice_code
# Senders named by what they are rather than by code (policies/optout_senders.csv).
REGISTERED_PRACTICE = "registered_practice"  # the person's own practice, by landed gp_patients
COUNCIL = "council"  # a council, for its own clients (its opt-outs cover its own data)
# Why a register row is rejected: the field and the rule, never the value.
NOT_THIS_SENDER = f"optout_type: not an opt-out this sender may assert ({SENDERS_POLICY})"
NOT_OWN_PRACTICE = ("nhs_number: not registered with the sending practice in landed GP data "
                    f"({SENDERS_POLICY})")

# Given a source's rows (person_id, and sender where known), a mask of the rows to keep.
RowFilter = Callable[[pd.DataFrame, str], pd.Series]
# After a purge: {extract_id: rows removed} -> counts of what the dependent removed.
PurgeDependent = Callable[[dict[str, list[int]]], dict[str, int]]
# For landing the register: (each row's optout_type, a thunk giving each row's pseudonym,
# the sender) -> per row, why the sender may not assert it (None where it may).
SenderCheck = Callable[[Sequence[str], Callable[[], Sequence[str | None]], str],
                       list[str | None]]


@dataclass(frozen=True)
class Coverage:
    """One line of the policy table: an opt-out type covers a purpose for some data."""

    optout_type: str
    purpose: str
    sources: frozenset[str] | None  # None: every data source (never the register itself)
    sender_scope: bool

    def covers(self, source: str) -> bool:
        if source == REGISTER:
            return False
        return self.sources is None or source in self.sources


def parse_coverage(text_rows: Iterable[dict[str, str]]) -> list[Coverage]:
    """Policy-table rows as `Coverage`, refusing unknown types, purposes and scopes."""
    out = []
    for number, row in enumerate(text_rows, start=1):
        kind, purpose = row.get("optout_type", ""), row.get("purpose", "")
        scope = (row.get("scope") or "").strip()
        if kind not in TYPES:
            raise ValueError(f"{POLICY} line {number}: unknown opt-out type {kind!r}")
        if purpose not in PURPOSES:
            raise ValueError(f"{POLICY} line {number}: unknown purpose {purpose!r}")
        if scope not in SCOPES:
            raise ValueError(f"{POLICY} line {number}: scope must be all or sender")
        listed = (row.get("sources") or "").strip()
        sources = None if listed == "*" else frozenset(
            s.strip() for s in listed.split(";") if s.strip())
        if sources is not None and not sources:
            raise ValueError(f"{POLICY} line {number}: name the sources, or * for all")
        out.append(Coverage(kind, purpose, sources, scope == "sender"))
    return out


def coverage_rows(rules: Sequence[Coverage]) -> list[dict[str, str]]:
    """`rules` as policy-table rows (what `parse_coverage` reads back), e.g. to record the
    table a run applied."""
    return [{"optout_type": r.optout_type, "purpose": r.purpose,
             "sources": "*" if r.sources is None else ";".join(sorted(r.sources)),
             "scope": "sender" if r.sender_scope else "all"} for r in rules]


def coverage(engine: Engine | None = None) -> list[Coverage]:
    """The policy table in force (an IG lead's override, else the shipped default)."""
    return parse_coverage(read_table(POLICY, engine))


def _table_rows(content: str) -> list[dict[str, str]]:
    lines = [line for line in io.StringIO(content) if not line.lstrip().startswith("#")]
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k}
            for row in csv.DictReader(lines)]


GP_SOURCES = frozenset({"gp_patients", "gp_events", "gp_medications"})
# The least the table must keep, whoever edits it: the national data opt-out over all data for
# planning and research (National Data Opt-out operational policy), a type 1 objection over GP
# data for the same, and a council's withdrawn consent over its own social care data for every
# purpose (the data were shared on consent). An IG lead may widen what an opt-out covers, never
# narrow it below this (red team R7: one IG lead's table without the national rows brought
# opted-out persons back into the commissioning list).
FLOOR = (
    ("ndoo", "commissioning", None, False), ("ndoo", "research", None, False),
    ("type1", "commissioning", GP_SOURCES, False), ("type1", "research", GP_SOURCES, False),
    *(("consent_withdrawn", purpose, frozenset({"social_care"}), True)
      for purpose in ("commissioning", "case_finding", "research", "direct_care",
                      "emergency_planning")),
)


def _holds(rules: list[Coverage], kind: str, purpose: str, sources: frozenset[str] | None,
           sender_scope: bool) -> bool:
    """Whether some rule covers at least `sources` (None: all) for `kind` and `purpose`, for
    at least the sender scope asked (a rule for data of any sender covers a sender's too)."""
    return any(rule.optout_type == kind and rule.purpose == purpose
               and (rule.sources is None or (sources is not None and sources <= rule.sources))
               and (sender_scope or not rule.sender_scope) for rule in rules)


def validate_purposes(content: str, engine: Engine | None = None) -> None:
    """Raise ValueError unless `content` is a usable opt-out purposes table that keeps at
    least `FLOOR` (naming the first row missing)."""
    rows = _table_rows(content)
    known = {row["source"] for row in read_table("retention.csv", engine)} - {"derived",
                                                                             "audit"}
    rules = parse_coverage(rows)
    for rule in rules:
        unknown = sorted((rule.sources or frozenset()) - known)
        if unknown:
            raise ValueError(f"{POLICY}: unknown source {unknown[0]!r}")
    for kind, purpose, sources, sender_scope in FLOOR:
        if not _holds(rules, kind, purpose, sources, sender_scope):
            data = "*" if sources is None else ";".join(sorted(sources))
            raise ValueError(f"{POLICY}: it must keep {kind} over {data} for {purpose} "
                             f"(the national minimum; an opt-out may be widened, never "
                             f"narrowed below it)")


def parse_senders(text_rows: Iterable[dict[str, str]]) -> dict[str, frozenset[str]]:
    """Senders table rows as {opt-out type: senders that may assert it}, refusing unknown
    types and senders that are neither an ODS code nor `registered_practice` / `council`."""
    out: dict[str, set[str]] = {}
    for number, row in enumerate(text_rows, start=1):
        kind, sender = row.get("optout_type", ""), (row.get("sender") or "").strip()
        if kind not in TYPES:
            raise ValueError(f"{SENDERS_POLICY} line {number}: unknown opt-out type {kind!r}")
        if sender not in (REGISTERED_PRACTICE, COUNCIL) and not ODS_CODE.match(sender):
            raise ValueError(f"{SENDERS_POLICY} line {number}: sender must be an ODS code, "
                             f"{REGISTERED_PRACTICE} or {COUNCIL}")
        out.setdefault(kind, set()).add(sender)
    return {kind: frozenset(found) for kind, found in out.items()}


def allowed_senders(engine: Engine | None = None) -> dict[str, frozenset[str]]:
    """The senders table in force (an IG lead's override, else the shipped default). A type
    with no row may be asserted by nobody."""
    return parse_senders(read_table(SENDERS_POLICY, engine))


def validate_senders(content: str, engine: Engine | None = None) -> None:
    """Raise ValueError unless `content` is a usable opt-out senders table."""
    parse_senders(_table_rows(content))


def set_purposes(engine: Engine, content: str, actor: Actor) -> dict[str, Any]:
    """An IG lead's new opt-out purposes table, checked, stored and audited."""
    return set_policy(engine, POLICY, content, actor)


def register_extracts(engine: Engine) -> list[str]:
    """The extracts the register holds rows of now (a run records them: what it applied)."""
    with engine.connect() as connection:
        return sorted(connection.scalars(select(optouts.c.extract_id).distinct()))


def active_optouts(engine: Engine, at: dt.date, rules: Sequence[Coverage] | None = None,
                   register: Sequence[str] | None = None) -> pd.DataFrame:
    """Opt-outs in force on `at`: person_id, optout_type, sender, effective_date.

    One row per person and type (and sender, for sender-scoped types); see the module
    docstring for which register row wins. `register`: only rows of these extracts (the
    register as it was when a run read it), else every row.
    """
    rules = coverage(engine) if rules is None else rules
    scoped = sorted({r.optout_type for r in rules if r.sender_scope})
    query = select(optouts.c.person_id, optouts.c.optout_type, optouts.c.sender,
                   optouts.c.effective_date, optouts.c.withdrawn).where(
        optouts.c.effective_date <= at)
    if register is not None:
        query = query.where(optouts.c.extract_id.in_(list(register)))
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    columns = ["person_id", "optout_type", "sender", "effective_date"]
    frame = pd.DataFrame(rows, columns=[*columns, "withdrawn"])
    if frame.empty:
        return frame[columns]
    frame["objection"] = ~frame["withdrawn"].astype(bool)
    frame["group"] = frame["sender"].where(frame["optout_type"].isin(scoped), "")
    latest = frame.sort_values(["effective_date", "objection"], kind="stable").drop_duplicates(
        ["person_id", "optout_type", "group"], keep="last")
    return latest.loc[latest["objection"], columns].reset_index(drop=True)


def _social_care_senders(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.scalars(
            select(extracts.c.sender).where(extracts.c.source == "social_care")))


def _is_council(sender: str, care_senders: set[str]) -> bool:
    return sender in care_senders or bool(LOCAL_AUTHORITY.match(sender or ""))


def registered_practices(settings: Settings, engine: Engine,
                         person_ids: Iterable[str]) -> dict[str, frozenset[str]]:
    """Per pseudonym, the practices of its latest registration in landed gp_patients data
    (several when registrations of that date disagree); pseudonyms never registered are
    left out."""
    wanted = pa.array(sorted(set(person_ids)), pa.string())
    with engine.connect() as connection:
        landed = connection.scalars(select(extracts.c.extract_id).where(
            extracts.c.source == "gp_patients", extracts.c.status == "landed")).all()
    parts = []
    for extract_id in landed:
        path = settings.layout.rows(extract_id)
        if path.exists() and "person_id" in pq.read_schema(path).names:  # else no row landed
            parts.append(pq.read_table(
                path, columns=["person_id", "gp_practice_code", "registration_date"],
                filters=pc.field("person_id").isin(wanted)).to_pandas())
    frame = pd.concat(parts) if parts else pd.DataFrame(
        columns=["person_id", "gp_practice_code", "registration_date"])
    latest = frame[frame["registration_date"] == frame.groupby("person_id")[
        "registration_date"].transform("max")]
    return {person: frozenset(codes.dropna()) for person, codes in
            latest.groupby("person_id")["gp_practice_code"]}


def sender_check(settings: Settings, engine: Engine) -> SenderCheck:
    """For landing an `optouts` extract: per row, why its sender may not assert it.

    `policies/optout_senders.csv` (read per batch, so an IG lead's change applies at once)
    lists who may assert each type, objection or withdrawal alike: an ODS code; `council`, a
    council (it sends social care, or sends under an ONS local authority code); or
    `registered_practice`, a GP practice that is the practice of the person's latest
    registration in landed gp_patients data. Fail closed: a person with no landed
    registration naming the sender is rejected, with the same reason as one registered
    elsewhere (the receipt does not tell a sender whether Haven holds someone's registration).
    """

    def check(types: Sequence[str], person_ids: Callable[[], Sequence[str | None]],
              sender: str) -> list[str | None]:
        allowed = allowed_senders(engine)
        council = _is_council(sender, _social_care_senders(engine))
        reasons: list[str | None] = [None] * len(types)
        practice_rows = []
        for i, kind in enumerate(types):
            permitted = allowed.get(kind, frozenset())
            if sender in permitted or (council and COUNCIL in permitted):
                continue
            if REGISTERED_PRACTICE in permitted and PRACTICE_CODE.match(sender):
                practice_rows.append(i)
            else:
                reasons[i] = NOT_THIS_SENDER
        if practice_rows:
            ids = person_ids()
            practices = registered_practices(settings, engine,
                                             [ids[i] for i in practice_rows if ids[i]])
            for i in practice_rows:
                if practices.get(ids[i] or "") != frozenset({sender}):
                    reasons[i] = NOT_OWN_PRACTICE
        return reasons

    return check


def excluded_rows(frame: pd.DataFrame, source: str, purpose: str, live: pd.DataFrame,
                  rules: Sequence[Coverage], care_senders: set[str]) -> np.ndarray:
    """Mask of rows of `frame` (person_id, and sender where known) `purpose` may not use.

    A sender-scoped opt-out sent by a council covers that council's data only; one sent by
    anyone else (a national feed) covers the source from every sender. When the rows' sender
    is not known, a sender-scoped opt-out covers them whoever sent it (the objection wins).
    """
    mask = np.zeros(len(frame), dtype=bool)
    if live.empty or len(frame) == 0 or "person_id" not in frame:
        return mask
    person = frame["person_id"].astype(object)
    for rule in rules:
        if rule.purpose != purpose or not rule.covers(source):
            continue
        objections = live[live["optout_type"] == rule.optout_type]
        if objections.empty:
            continue
        if rule.sender_scope and "sender" in frame:
            council = objections["sender"].map(lambda s: _is_council(s, care_senders))
            everywhere = set(objections.loc[~council.astype(bool), "person_id"])
            scoped = objections.loc[council.astype(bool), ["person_id", "sender"]]
            mask |= person.isin(everywhere).to_numpy()
            # (person, sender) pairs are looked up only for rows of a person with a council's
            # objection: a batch of a million rows is not paired up whole for a few hundred.
            near = np.flatnonzero(person.isin(set(scoped["person_id"])).to_numpy())
            pairs = set(zip(scoped["person_id"], scoped["sender"], strict=True))
            senders = frame["sender"].astype(object).to_numpy()[near]
            mask[near] |= np.fromiter(
                ((p, s) in pairs for p, s in zip(person.to_numpy()[near], senders,
                                                 strict=True)), dtype=bool, count=len(near))
        else:
            mask |= person.isin(set(objections["person_id"])).to_numpy()
    return mask


def unusable(frame: pd.DataFrame, source: str, live: pd.DataFrame,
             rules: Sequence[Coverage], care_senders: set[str]) -> np.ndarray:
    """Rows that no purpose may use: every purpose excludes them."""
    mask = np.ones(len(frame), dtype=bool)
    for purpose in PURPOSES:
        mask &= excluded_rows(frame, source, purpose, live, rules, care_senders)
    return mask


def _check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r} (expected one of {', '.join(PURPOSES)})")


def excluded(engine: Engine, person_ids: Sequence[str | None], purpose: str, source: str,
             sender: str | None, at: dt.date) -> np.ndarray:
    """Per pseudonym: may `purpose` not use its `source` data sent by `sender`, on `at`?

    `sender` None means not known: a sender-scoped opt-out then applies whoever sent it.
    """
    _check_purpose(purpose)
    rules = coverage(engine)
    frame = pd.DataFrame({"person_id": pd.Series(list(person_ids), dtype=object)})
    if sender is not None:
        frame["sender"] = sender
    return excluded_rows(frame, source, purpose, active_optouts(engine, at, rules), rules,
                         _social_care_senders(engine))


def opted_out(engine: Engine, person_ids: Sequence[str], purpose: str,
              at: dt.date) -> np.ndarray:
    """Per pseudonym: is an opt-out in force that covers `purpose` for any data at all?"""
    _check_purpose(purpose)
    rules = coverage(engine)
    types = {r.optout_type for r in rules if r.purpose == purpose}
    live = active_optouts(engine, at, rules)
    objecting = set(live.loc[live["optout_type"].isin(types), "person_id"])
    return np.fromiter((p in objecting for p in person_ids), dtype=bool,
                       count=len(person_ids))


def _register_mark(engine: Engine) -> tuple:
    """Changes whenever the register or the policy table does (cheap to ask per batch)."""
    with engine.connect() as connection:
        marks = connection.execute(select(func.count(), func.max(optouts.c.extract_id),
                                          func.min(optouts.c.extract_id))).one()
    return (*marks, tuple(coverage(engine)))


def landing_exclusion(engine: Engine, today: dt.date | None = None
                      ) -> Callable[..., np.ndarray]:
    """For landing: given a pseudonymised batch, its source and sender, the rows not to keep.

    Rows no purpose may use (with the shipped table: social care data of a person who withdrew
    consent from that council) are dropped before anything is written. The register is
    re-read when it changes, so an opt-out landed earlier in the same run applies at once.
    """
    state: dict[str, Any] = {}

    def current() -> dict[str, Any]:
        mark = _register_mark(engine)
        if state.get("mark") != mark:
            rules = coverage(engine)
            state.update(mark=mark, rules=rules, care=_social_care_senders(engine),
                         live=active_optouts(engine, today or dt.date.today(), rules))
        return state

    def exclude(table: pa.Table, source: str, sender: str | None = None) -> np.ndarray:
        if source == REGISTER or "person_id" not in table.column_names:
            return np.zeros(table.num_rows, dtype=bool)
        now = current()
        if now["live"].empty:
            return np.zeros(table.num_rows, dtype=bool)
        frame = pd.DataFrame({"person_id": table.column("person_id").to_pandas()})
        senders = set(now["care"])
        if sender is not None:
            frame["sender"] = sender
            if source == "social_care":
                senders.add(sender)
        return unusable(frame, source, now["live"], now["rules"], senders)

    return exclude


def purpose_filter(engine: Engine, purpose: str, at: dt.date,
                   rules: Sequence[Coverage] | None = None,
                   register: Sequence[str] | None = None) -> RowFilter:
    """For a stage: given a source's rows (person_id, sender), the rows `purpose` may use,
    by the opt-outs in force on `at` (the day of use: an opt-out in force then covers the
    person's history before it too). `rules` and `register` fix the policy table and the
    register extracts to apply (what a run records it applied); default: as they are now."""
    _check_purpose(purpose)
    rules = coverage(engine) if rules is None else rules
    return PurposeFilter(purpose, active_optouts(engine, at, rules, register), tuple(rules),
                         frozenset(_social_care_senders(engine)))


@dataclass(frozen=True, eq=False)
class PurposeFilter:
    """`purpose_filter`'s verdicts, from what it read of governance: a value, not a closure,
    so a process that cannot reach the database (a Spark executor) is sent it whole."""

    purpose: str
    live: pd.DataFrame
    rules: tuple[Coverage, ...]
    care_senders: frozenset[str]

    def __call__(self, frame: pd.DataFrame, source: str) -> pd.Series:
        return pd.Series(~excluded_rows(frame, source, self.purpose, self.live,
                                        list(self.rules), set(self.care_senders)),
                         index=frame.index)


def filter_digest(engine: Engine, purpose: str, at: dt.date,
                  rules: Sequence[Coverage] | None = None,
                  register: Sequence[str] | None = None) -> str:
    """A digest of everything `purpose_filter(engine, purpose, at, rules, register)` decides
    by: the purpose, the day, the policy rows, every opt-out in force (person, type, sender,
    date) and the councils' senders. Two filters with the same digest keep the same rows of
    the same data; an opt-out registered since changes it (a stage's cached copy of linked
    rows is keyed on it: pipeline/linked_cache.py)."""
    _check_purpose(purpose)
    rules = coverage(engine) if rules is None else rules
    live = active_optouts(engine, at, rules, register)
    digest = hashlib.sha256()
    for part in (purpose, at.isoformat(), json.dumps(coverage_rows(rules), sort_keys=True),
                 json.dumps(sorted(_social_care_senders(engine)))):
        digest.update(part.encode() + b"\x00")
    if len(live):
        ordered = live.astype(str).sort_values(list(live.columns)).reset_index(drop=True)
        digest.update(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes())
    digest.update(str(len(live)).encode())
    return digest.hexdigest()


def purge(settings: Settings, engine: Engine, at: dt.date, actor: Actor = SYSTEM,
          dependents: Sequence[PurgeDependent] = ()) -> dict[str, int]:
    """Remove from landed extracts the rows no purpose may use any more (later opt-outs).

    Each changed `rows.parquet` is rewritten beside itself and moved into place in one rename;
    the extract's row count is updated, dependents (e.g. the person index) are told which rows
    went, and the purge is audited with counts. Returns rows removed per extract.
    """
    rules = coverage(engine)
    live = active_optouts(engine, at, rules)
    care_senders = _social_care_senders(engine)
    removed: dict[str, list[int]] = {}
    with engine.connect() as connection:
        landed = connection.execute(select(extracts.c.extract_id, extracts.c.source,
                                           extracts.c.sender)
                                    .where(extracts.c.status == "landed")).all()
    with store.data_lock(settings):
        for item in landed:
            path = settings.layout.rows(item.extract_id)
            if (live.empty or item.source == REGISTER or not path.exists()
                    or "person_id" not in pq.read_schema(path).names):
                continue
            ids = pq.read_table(path, columns=["person_id"]).column("person_id").to_pandas()
            frame = pd.DataFrame({"person_id": ids, "sender": item.sender})
            drop = unusable(frame, item.source, live, rules, care_senders)
            if not drop.any():
                continue
            table = pq.read_table(path)
            removed[item.extract_id] = table.column("row").filter(
                pa.array(drop)).to_pylist()
            kept = table.filter(pa.array(~drop))
            tmp = path.with_name(path.name + ".purge")
            pq.write_table(kept, tmp, compression="zstd")
            os.replace(tmp, path)
            with engine.begin() as connection:
                counts = dict(connection.scalar(select(extracts.c.counts).where(
                    extracts.c.extract_id == item.extract_id)) or {})
                counts["purged_by_optout"] = int(counts.get("purged_by_optout", 0)) + int(
                    drop.sum())
                connection.execute(update(extracts).where(
                    extracts.c.extract_id == item.extract_id).values(
                    rows_landed=kept.num_rows, counts=counts))
        derived: dict[str, int] = {}
        if removed:
            for dependent in dependents:
                for name, value in dependent(removed).items():
                    derived[name] = derived.get(name, 0) + int(value)
            # a cached working copy of linked rows may hold the purged rows
            derived["linked_cache_entries_removed"] = store.clear_linked_cache(settings)
    result = {extract_id: len(rows) for extract_id, rows in removed.items()}
    audit.log(engine, actor, "optouts.purge", "extracts", n_records=sum(result.values()),
              detail={"extracts": len(result), "as_of": at.isoformat(), **derived})
    return result


def optouts_report(engine: Engine, at: dt.date, rule: Rule | None = None) -> dict[str, Any]:
    """Counts of opt-outs in force by type and by purpose, suppressed; never who.

    - `by_type`: persons with an opt-out of each type in force (1-7 shown as `*`, others
      rounded; secondary suppression as if the total were published).
    - `by_type_and_purpose`: the same figures placed under each purpose the policy table says
      the type restricts (0 where it does not). They are copied from `by_type`, never counted
      apart, so no cell can be shown in one place and hidden in another.
    - `by_purpose`: distinct persons a purpose must leave out, in part or whole. Where one
      type alone restricts a purpose, the figure is that type's, as published in `by_type`;
      where a type it depends on is suppressed, so is it.
    """
    rules = coverage(engine)
    rule = rule or Rule.load(engine=engine)
    live = active_optouts(engine, at, rules)
    types = sorted({r.optout_type for r in rules} | set(live["optout_type"]))
    persons = live.drop_duplicates(["person_id", "optout_type"])
    counts = persons["optout_type"].value_counts()
    by_type = suppress({t: int(counts.get(t, 0)) for t in types}, rule)
    by_type.pop("total")
    restricting = {p: sorted({r.optout_type for r in rules if r.purpose == p})
                   for p in PURPOSES}
    grid = {t: {p: (by_type[t] if t in restricting[p] else 0) for p in PURPOSES}
            for t in types}
    by_purpose: dict[str, int | str] = {}
    for purpose, kinds in restricting.items():
        if len(kinds) == 1:
            by_purpose[purpose] = by_type[kinds[0]]
        elif any(by_type[k] == rule.symbol for k in kinds):
            by_purpose[purpose] = rule.symbol  # else a union could give a hidden part away
        else:
            n = live.loc[live["optout_type"].isin(kinds), "person_id"].nunique()
            by_purpose[purpose] = rule.show(int(n))
    return {"as_of": at.isoformat(), "by_type": by_type, "by_type_and_purpose": grid,
            "by_purpose": by_purpose, "types_by_purpose": restricting,
            "rule": rule.describe()}


report = optouts_report  # the name the API and CLI first used
