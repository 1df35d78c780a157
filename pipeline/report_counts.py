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
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine

from governance import optouts
from governance.settings import Settings
from linkage.person_index import read_link_map
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
    link = read_link_map(settings, columns=["extract_id", "source", "person_id", "person_key",
                                            "method"])
    link = link[link["extract_id"].isin(used) & (link["source"] != optouts.REGISTER)]
    persons = set(link["person_key"].dropna().astype(str))
    registered = set(link.loc[link["source"] == "gp_patients", "person_key"].dropna().astype(str))
    pairs = link[["person_id", "person_key"]].dropna().drop_duplicates()
    key_of = pairs.groupby("person_id")["person_key"].agg(lambda keys: set(keys.astype(str)))
    probabilistic = link[(link["method"] == "probabilistic")
                         & link["person_key"].astype(str).isin(scored_keys)]
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
        probabilistic_persons=int(probabilistic["person_key"].nunique()),
        probabilistic_records=int(len(probabilistic)),
        unlinked_records=int((link["method"] == "unlinked").sum()),
        withheld_now=withheld_now)


def scored_keys_of(path: Path) -> set[str]:
    """The person keys a run's scores file holds."""
    return set(pd.read_parquet(path, columns=["person_key"])["person_key"].astype(str))
