"""Opt-outs honoured by purpose: which person's data each purpose of use may not use, and when.

The register is the `optouts` table (landed from `optouts` extracts, pseudonymised). For each
person, opt-out type and sender, the row with the latest effective date on or before a day is
in force unless it says `withdrawn` (the person opted back in from that date). The policy table
`policies/optout_purposes.csv` says which type covers which purpose and data.

Applied three ways: at landing (rows no purpose may use are not kept), after landing (`purge`
removes such rows from landed extracts when an opt-out arrives later), and at use
(`purpose_filter` drops what a given purpose may not use, for scoring and release).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, select

from governance import audit, store
from governance.audit import Actor
from governance.policy_tables import read_table
from governance.schema import extracts, optouts
from governance.settings import Settings
from governance.suppression import Rule, suppress_table

POLICY = "optout_purposes.csv"
PURPOSES = ("commissioning", "case_finding", "research", "direct_care")


@dataclass(frozen=True)
class Coverage:
    """One line of the policy table: an opt-out type covers a purpose for some data."""

    optout_type: str
    purpose: str
    sources: frozenset[str] | None  # None: every source
    sender_scope: bool

    def covers(self, source: str) -> bool:
        return self.sources is None or source in self.sources


def coverage(engine: Engine | None = None) -> list[Coverage]:
    """The policy table in force (an IG lead's override, else the shipped default)."""
    rows = read_table(POLICY, engine)
    out = []
    for row in rows:
        sources = None if row["sources"].strip() == "*" else frozenset(
            s.strip() for s in row["sources"].split(";") if s.strip())
        out.append(Coverage(row["optout_type"], row["purpose"], sources,
                            row["scope"].strip() == "sender"))
    return out


def active_optouts(engine: Engine, at: dt.date) -> pd.DataFrame:
    """Opt-outs in force on `at`: person_id, optout_type, sender (latest row wins)."""
    with engine.connect() as connection:
        rows = connection.execute(select(
            optouts.c.person_id, optouts.c.optout_type, optouts.c.sender,
            optouts.c.effective_date, optouts.c.withdrawn, optouts.c.row)
            .where(optouts.c.effective_date <= at)).all()
    frame = pd.DataFrame(rows, columns=["person_id", "optout_type", "sender", "effective_date",
                                        "withdrawn", "row"])
    if frame.empty:
        return frame[["person_id", "optout_type", "sender"]]
    latest = frame.sort_values(["effective_date", "row"]).drop_duplicates(
        ["person_id", "optout_type", "sender"], keep="last")
    live = latest[~latest["withdrawn"].astype(bool)]
    return live[["person_id", "optout_type", "sender"]].reset_index(drop=True)


LOCAL_AUTHORITY = re.compile(r"^[EWSN]\d{8}$")  # ONS codes councils send under


def _social_care_senders(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.scalars(
            select(extracts.c.sender).where(extracts.c.source == "social_care")))


def _is_council(sender: str, care_senders: set[str]) -> bool:
    return sender in care_senders or bool(LOCAL_AUTHORITY.match(sender or ""))


def excluded(frame: pd.DataFrame, source: str, purpose: str, live: pd.DataFrame,
             rules: list[Coverage], care_senders: set[str]) -> np.ndarray:
    """Mask of rows of `frame` (with person_id, and sender where scoped) `purpose` may not use."""
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
            # An opt-out from a council covers that council's data; one from elsewhere
            # (e.g. a national feed) covers the source from every sender.
            council = objections["sender"].map(lambda s: _is_council(s, care_senders))
            everywhere = set(objections.loc[~council.astype(bool), "person_id"])
            pairs = set(zip(objections["person_id"], objections["sender"], strict=True))
            mask |= person.isin(everywhere).to_numpy()
            mask |= np.fromiter(((p, s) in pairs for p, s in
                                 zip(person, frame["sender"].astype(object), strict=True)),
                                dtype=bool, count=len(frame))
        else:
            mask |= person.isin(set(objections["person_id"])).to_numpy()
    return mask


def unusable(frame: pd.DataFrame, source: str, live: pd.DataFrame, rules: list[Coverage],
             care_senders: set[str]) -> np.ndarray:
    """Rows that no purpose may use: every purpose excludes them."""
    mask = np.ones(len(frame), dtype=bool)
    for purpose in PURPOSES:
        mask &= excluded(frame, source, purpose, live, rules, care_senders)
        if not mask.any():
            break
    return mask


def landing_exclusion(engine: Engine, today: dt.date | None = None
                      ) -> Callable[..., np.ndarray]:
    """For landing: given a pseudonymised batch, its source and sender, the rows not to keep."""
    day = today or dt.date.today()
    live = active_optouts(engine, day)
    rules = coverage(engine)
    care_senders = _social_care_senders(engine)

    def exclude(table: pa.Table, source: str, sender: str | None = None) -> np.ndarray:
        if live.empty or "person_id" not in table.column_names:
            return np.zeros(table.num_rows, dtype=bool)
        frame = pd.DataFrame({"person_id": table.column("person_id").to_pandas()})
        senders = set(care_senders)
        if sender is not None:
            frame["sender"] = sender
            if source == "social_care":
                senders.add(sender)
        return unusable(frame, source, live, rules, senders)

    return exclude


def purpose_filter(engine: Engine, purpose: str, at: dt.date
                   ) -> Callable[[pd.DataFrame, str], pd.Series]:
    """For a stage: given a source's rows (person_id, sender), the rows `purpose` may use."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r} (expected one of {', '.join(PURPOSES)})")
    live = active_optouts(engine, at)
    rules = coverage(engine)
    care_senders = _social_care_senders(engine)

    def keep(frame: pd.DataFrame, source: str) -> pd.Series:
        return pd.Series(~excluded(frame, source, purpose, live, rules, care_senders),
                         index=frame.index)

    return keep


def purge(settings: Settings, engine: Engine, actor: Actor, at: dt.date) -> dict[str, int]:
    """Remove from landed extracts the rows no purpose may use any more (later opt-outs)."""
    live = active_optouts(engine, at)
    rules = coverage(engine)
    care_senders = _social_care_senders(engine)
    removed: dict[str, int] = {}
    with engine.connect() as connection:
        landed = connection.execute(select(extracts.c.extract_id, extracts.c.source,
                                           extracts.c.sender)
                                    .where(extracts.c.status == "landed")).all()
    with store.data_lock(settings):
        for item in landed:
            if item.source == "optouts":
                continue
            path = store.rows_path(settings, item.extract_id)
            if not path.exists() or "person_id" not in pq.read_schema(path).names:
                continue
            ids = pq.read_table(path, columns=["person_id"]).column("person_id").to_pandas()
            frame = pd.DataFrame({"person_id": ids, "sender": item.sender})
            drop = unusable(frame, item.source, live, rules, care_senders)
            if not drop.any():
                continue
            table = pq.read_table(path).filter(pa.array(~drop))
            tmp = path.with_suffix(".purge")
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)
            removed[item.extract_id] = int(drop.sum())
    with engine.begin() as connection:
        audit.record(connection, actor, "optouts.purge", "extracts",
                     n_records=sum(removed.values()),
                     detail={"extracts": len(removed), "as_of": at.isoformat()})
    return removed


def report(engine: Engine, at: dt.date, rule: Rule | None = None) -> dict[str, Any]:
    """Persons with an opt-out in force, by type and by purpose it restricts; suppressed."""
    live = active_optouts(engine, at)
    rules = coverage(engine)
    types = sorted({r.optout_type for r in rules})
    table = pd.DataFrame(0, index=types, columns=list(PURPOSES), dtype="int64")
    persons = live.drop_duplicates(["person_id", "optout_type"])
    counts = persons["optout_type"].value_counts()
    for r in rules:
        table.loc[r.optout_type, r.purpose] = int(counts.get(r.optout_type, 0))
    by_type = pd.DataFrame({"persons": [int(counts.get(t, 0)) for t in types]}, index=types)
    return {"as_of": at.isoformat(),
            "by_type": suppress_table(by_type, rule)["persons"].to_dict(),
            "by_type_and_purpose": suppress_table(table, rule).to_dict(orient="index")}
