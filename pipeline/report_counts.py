"""The measured counts a model report states about whom a run covers (stratify.model_card).

Everything is counted from records, never assumed: persons in the run's linked extracts and
their GP registration from the link map (read in DuckDB over its Parquet, restricted to the
extracts the run used, the opt-out register itself aside); opt-outs from what the run recorded
it applied (pipeline.serving.applied_by: the day, the register extracts and the policy table),
re-counted per type with governance.optouts.active_optouts; scored persons from the run's own
scores file; records linked only probabilistically by their link method.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
from sqlalchemy import Engine

from governance import optouts, store
from governance.settings import Settings
from linkage import map_store
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
               scored_keys: set[str] | Path, extract_ids: dict[str, list[str]],
               withheld_now: int = 0) -> RunCounts:
    """The counts of `serving` (whose scores hold `scored_keys`, read from `extract_ids`).
    `scored_keys`: the person keys, or the run's scores file holding them (read by DuckDB:
    a whole population's keys are never Python text)."""
    record = applied_by(engine, serving)
    rules = optouts.parse_coverage(record["policy"])
    live = optouts.active_optouts(engine, dt.date.fromisoformat(record["in_force_on"]), rules,
                                  record["register"])
    used = {e for source, ids in extract_ids.items() if source != optouts.REGISTER for e in ids}
    opted = set(live["person_id"].dropna().astype(str))
    found = _link_counts(settings, used, scored_keys, opted)
    persons, registered, key_of = found.persons, found.registered, found.key_of
    scored_of = found.scored_of
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
                                scored=len(keys & scored_of), takes=_takes(rules, kind)))
    return RunCounts(
        purpose=serving.purpose, in_force_on=str(record["in_force_on"]),
        linked_persons=persons, registered=registered, scored=found.scored,
        optouts=rows, optout_persons_in_data=len(covered_keys),
        probabilistic_persons=found.probabilistic_persons,
        probabilistic_records=found.probabilistic_records,
        unlinked_records=found.unlinked_records,
        withheld_now=withheld_now)


@dataclass
class _LinkCounts:
    persons: int = 0
    registered: int = 0
    key_of: dict[str, set[str]] = field(default_factory=dict)
    scored_of: set[str] = field(default_factory=set)  # the keys of `key_of` that were scored
    scored: int = 0
    probabilistic_persons: int = 0
    probabilistic_records: int = 0
    unlinked_records: int = 0


def _link_counts(settings: Settings, used: set[str], scored_keys: set[str] | Path,
                 opted: set[str]) -> _LinkCounts:
    """What the counts need of the link map rows of the `used` extracts (the opt-out register
    aside), counted by DuckDB over the map's Parquet within `HAVEN_DUCKDB_MEMORY`, spilling to
    a scratch workspace: persons, registered persons, the keys of the `opted` pseudonyms (and
    which of them were scored), probabilistic links among the `scored_keys`, unlinked rows;
    and how many distinct keys were scored. (Sets of every person key in Python cost
    gigabytes at three million persons, and matching a batch against the scored keys rebuilt
    their hash table once a batch.) `scored_keys` given as a scores file is read there."""
    out = _LinkCounts()
    paths = map_store.files(settings)
    with store.scratch_workspace(settings) as folder:
        con = duckdb.connect()
        try:
            con.execute(f"SET memory_limit = '{settings.duckdb_memory}'")
            con.execute(f"SET temp_directory = '{folder}'")
            con.execute("SET preserve_insertion_order = false")
            for name, values in (("used_ids", used), ("opted_ids", opted)):
                con.register(name, pa.table({"v": pa.array(sorted(values), pa.string())}))
            if isinstance(scored_keys, Path):
                scores = str(scored_keys).replace("'", "''")
                con.execute(f"""CREATE TEMP VIEW scored_keys AS
                    SELECT person_key AS v FROM read_parquet('{scores}')""")
            else:
                con.register("scored_keys", pa.table({"v": pa.array(sorted(scored_keys),
                                                                    pa.string())}))
            out.scored = con.execute("SELECT count(DISTINCT v) FROM scored_keys").fetchone()[0]
            if paths and used:
                _count_map(con, ", ".join("'" + str(p).replace("'", "''") + "'"
                                          for p in paths), out)
        finally:
            con.close()
    return out


def _count_map(con: duckdb.DuckDBPyConnection, quoted: str, out: _LinkCounts) -> None:
    """`_link_counts`' counts over the link map's files `quoted` (their paths, SQL-quoted and
    joined by commas) on `con`, which holds the views `used_ids`, `opted_ids` and
    `scored_keys`; into `out`."""
    con.execute(f"""CREATE TEMP VIEW m AS SELECT source, person_id, person_key, method
        FROM read_parquet([{quoted}]) WHERE extract_id IN (SELECT v FROM used_ids)
        AND source <> '{optouts.REGISTER}'""")
    out.persons, out.registered, out.unlinked_records = con.execute("""SELECT
        count(DISTINCT person_key), count(DISTINCT person_key) FILTER (WHERE source =
        'gp_patients'), count(*) FILTER (WHERE method = 'unlinked') FROM m""").fetchone()
    out.probabilistic_records, out.probabilistic_persons = con.execute("""SELECT count(*),
        count(DISTINCT person_key) FROM m WHERE method = 'probabilistic'
        AND person_key IN (SELECT v FROM scored_keys)""").fetchone()
    for person_id, key, scored in con.execute("""SELECT DISTINCT person_id, person_key,
            person_key IN (SELECT v FROM scored_keys) FROM m
            WHERE person_key IS NOT NULL AND person_id IN (SELECT v FROM opted_ids)
            """).fetchall():
        out.key_of.setdefault(person_id, set()).add(key)
        if scored:
            out.scored_of.add(key)

