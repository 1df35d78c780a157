"""The measured counts a model report states about whom a run covers (stratify.model_card).

Everything is counted from records, never assumed: persons in the run's linked extracts and
their GP registration from the link map (linkage.person_index.read_link_map, restricted to the
extracts the run used, the opt-out register itself aside); opt-outs from what the run recorded
it applied (pipeline.serving.applied_by: the day, the register extracts and the policy table),
re-counted per type with governance.optouts.active_optouts; scored persons from the run's own
scores file; records linked only probabilistically by their link method.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine

from governance import optouts
from governance.settings import Settings
from pipeline.serving import ServingRun, applied_by
from stratify.model_card import OptoutCount, RunCounts


def _takes(rules: list[optouts.Coverage], kind: str) -> dict[str, str]:
    """Purpose -> what an opt-out type takes from it, in words."""
    out: dict[str, set[str] | None] = {}
    for rule in rules:
        if rule.optout_type != kind:
            continue
        known = out.get(rule.purpose, set())
        out[rule.purpose] = None if known is None or rule.sources is None \
            else known | rule.sources
    return {p: "every source" if s is None else "; ".join(sorted(s)) + (
        " (its sender's data)" if any(r.sender_scope for r in rules
                                      if r.optout_type == kind and r.purpose == p) else "")
            for p, s in sorted(out.items())}


def run_counts(settings: Settings, engine: Engine, serving: ServingRun,
               scored_keys: set[str], extract_ids: dict[str, list[str]],
               withheld_now: int = 0) -> RunCounts:
    """The counts of `serving` (whose scores hold `scored_keys`, read from `extract_ids`)."""
    record = applied_by(engine, serving)
    rules = optouts.parse_coverage(record["policy"])
    live = optouts.active_optouts(engine, dt.date.fromisoformat(record["in_force_on"]), rules,
                                  record["register"])
    used = {e for source, ids in extract_ids.items() if source != optouts.REGISTER for e in ids}
    opted = set(live["person_id"].dropna().astype(str))
    found = _link_counts(settings, used, scored_keys, opted)
    persons, registered, key_of = found.persons, found.registered, found.key_of
    covering = {r.optout_type for r in rules if r.purpose == serving.purpose}
    rows, covered_keys = [], set()
    for kind in sorted(set(live["optout_type"]) | {r.optout_type for r in rules}):
        ids = set(live.loc[live["optout_type"] == kind, "person_id"])
        if not ids:
            continue
        keys = set().union(*(key_of.get(i, set()) for i in ids))
        if kind in covering:
            covered_keys |= keys
        rows.append(OptoutCount(optout_type=kind, in_force=len(ids), in_data=len(keys),
                                scored=len(keys & scored_keys), takes=_takes(rules, kind)))
    return RunCounts(
        purpose=serving.purpose, in_force_on=str(record["in_force_on"]),
        linked_persons=len(persons), registered=len(registered), scored=len(scored_keys),
        optouts=rows, optout_persons_in_data=len(covered_keys),
        probabilistic_persons=len(found.probabilistic_keys),
        probabilistic_records=found.probabilistic_records,
        unlinked_records=found.unlinked_records,
        withheld_now=withheld_now)


@dataclass
class _LinkCounts:
    persons: set[str] = field(default_factory=set)
    registered: set[str] = field(default_factory=set)
    key_of: dict[str, set[str]] = field(default_factory=dict)
    probabilistic_keys: set[str] = field(default_factory=set)
    probabilistic_records: int = 0
    unlinked_records: int = 0


def _link_counts(settings: Settings, used: set[str], scored_keys: set[str], opted: set[str],
                 batch_rows: int = 1_000_000) -> _LinkCounts:
    """What the counts need of the link map rows of the `used` extracts (the opt-out register
    aside), read a batch at a time (the whole map in pandas was 13 GB at a million persons):
    persons, registered persons, the keys of the `opted` pseudonyms, probabilistic links among
    the `scored_keys`, unlinked rows."""
    out = _LinkCounts()
    path = settings.layout.link_map
    if not path.exists() or not used:
        return out
    wanted = pa.array(sorted(used), pa.string())
    scored = pa.array(sorted(scored_keys), pa.string())
    opted_ids = pa.array(sorted(opted), pa.string())
    columns = ["extract_id", "source", "person_id", "person_key", "method"]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        table = pa.Table.from_batches([batch])
        table = table.filter(pc.and_(pc.is_in(table.column("extract_id"), value_set=wanted),
                                     pc.not_equal(table.column("source"), optouts.REGISTER)))
        keys = table.column("person_key")
        out.persons.update(pc.unique(keys.drop_null()).to_pylist())
        gp = pc.equal(table.column("source"), "gp_patients")
        out.registered.update(pc.unique(pc.filter(keys, gp).drop_null()).to_pylist())
        mine = table.filter(pc.and_(pc.is_in(table.column("person_id"), value_set=opted_ids),
                                    pc.is_valid(keys)))
        for person_id, key in zip(mine.column("person_id").to_pylist(),
                                  mine.column("person_key").to_pylist(), strict=True):
            out.key_of.setdefault(person_id, set()).add(key)
        method = table.column("method")
        linked = table.filter(pc.and_(pc.equal(method, "probabilistic"),
                                      pc.is_in(keys, value_set=scored)))
        out.probabilistic_records += linked.num_rows
        out.probabilistic_keys.update(pc.unique(linked.column("person_key")).to_pylist())
        out.unlinked_records += int(pc.sum(pc.equal(method, "unlinked")).as_py() or 0)
    out.persons.discard(None)  # type: ignore[arg-type]
    return out


def scored_keys_of(path: Path) -> set[str]:
    """The person keys a run's scores file holds."""
    return set(pd.read_parquet(path, columns=["person_key"])["person_key"].astype(str))
