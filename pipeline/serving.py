"""Which score run serves a purpose now, and whom it must hold back: one answer for every face.

The command-line export, the API's lists and aggregates, FHIR and recipient exports all ask
`serving_run(engine, purpose)`. Only a run scored by a model a clinical safety officer
approved serves (governance.model_approvals; a candidate's run waits for its approval). A
purpose is answered from the newest complete run scored for it by the model in force; a
case-finding caller may be answered from a commissioning run while the opt-out policy makes
commissioning leave out at least as much. `withheld_person_keys` names the persons the
run must not show for the purpose, by the opt-outs in force (governance.optouts).

The rule: the opt-outs in force at the moment of use decide what is used and released,
whatever date a model is scored at. A run records what it applied (`optouts_applied`: the day
whose opt-outs it honoured, the register extracts it read and the policy table); an opt-out in
force now that the run did not apply (it arrived later, came into force later, or the table
now makes it cover more) withholds its person from everything the run answers, until a run
scored after it. Where the opt-out covers only some sources for the purpose (type 1: GP
data), the person is withheld when the run used any of those sources for them: their
probability and reasons rest on that data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine, func, select

from governance import optouts
from governance.model_approvals import approved_models
from governance.schema import extracts, runs
from governance.schema import optouts as optout_register
from governance.settings import Settings
from linkage.person_index import link_rows

DEFAULT_RUN_PURPOSE = "commissioning"  # what `haven score` scores for unless told


@dataclass(frozen=True)
class ServingRun:
    """A complete score run: its id, when it was scored and its recorded summary."""

    run_id: str
    scored_at: dt.datetime
    summary: dict[str, Any]

    @property
    def purpose(self) -> str:
        return run_purpose(self.summary)


def run_purpose(summary: dict[str, Any] | None) -> str:
    return str((summary or {}).get("purpose") or DEFAULT_RUN_PURPOSE)


def _covered_types(rules: list[optouts.Coverage], purpose: str) -> dict[str, frozenset[str]]:
    """Opt-out type -> the sources it takes from `purpose` (`*` as every source)."""
    out: dict[str, set[str]] = {}
    for rule in rules:
        if rule.purpose == purpose:
            out.setdefault(rule.optout_type, set()).update(rule.sources or {"*"})
    return {kind: frozenset(found) for kind, found in out.items()}


def runs_for(purpose: str, rules: list[optouts.Coverage]) -> list[str]:
    """Run purposes that may answer `purpose`: its own, and commissioning for case finding
    while the policy table makes commissioning leave out at least as much."""
    answer = [purpose]
    if purpose == "case_finding":
        mine, theirs = _covered_types(rules, purpose), _covered_types(rules, "commissioning")
        if all("*" in theirs.get(k, ()) or sources <= theirs.get(k, frozenset())
               for k, sources in mine.items()):
            answer.append("commissioning")
    return answer


def optout_mark(engine: Engine) -> tuple:
    """Changes whenever what a run withholds may (for caches of it): the register, the
    opt-out policy table, and the day (a dated opt-out comes into force)."""
    with engine.connect() as connection:
        register = tuple(connection.execute(select(
            func.count(), func.max(optout_register.c.extract_id),
            func.min(optout_register.c.extract_id))).one())
    return (*register, tuple(optouts.coverage(engine)), _today())


def serving_rank(summary: dict[str, Any] | None, approved: list[str]) -> int | None:
    """Where a run stands in the serving order by the model that scored it (0: the model in
    force), or None when it may not serve: its model is not approved. A run recorded before
    models were approved (no `model_id`) may serve only while no model is approved, after
    every approved model's runs."""
    model = (summary or {}).get("model_id")
    if model is None:
        return None if approved else len(approved)
    return approved.index(model) if model in approved else None


def serving_run(engine: Engine, purpose: str) -> ServingRun | None:
    """The run answering `purpose` now, or None: only a run scored by an approved model
    (governance.model_approvals) serves; the model in force first (the newest approval),
    then older approved models; within a model, the newest run; the purpose's own run first,
    then what may stand in for it."""
    wanted = runs_for(purpose, optouts.coverage(engine))
    approved = approved_models(engine)
    with engine.connect() as connection:
        listed = connection.execute(
            select(runs.c.run_id, runs.c.at, runs.c.summary).where(
                runs.c.kind == "score", runs.c.status == "complete")
            .order_by(runs.c.at.desc(), runs.c.run_id.desc())).all()
    for choice in wanted:  # the purpose's own run first, then what may stand in for it
        ranked = [(rank, i, run) for i, run in enumerate(listed)
                  if run_purpose(run.summary) == choice
                  and (rank := serving_rank(run.summary, approved)) is not None]
        if ranked:
            run = min(ranked, key=lambda found: found[:2])[2]
            return ServingRun(run.run_id, run.at, dict(run.summary or {}))
    return None


def complete_run(engine: Engine, run_id: str) -> ServingRun | None:
    """A complete score run by id (None when there is none, or it was voided)."""
    with engine.connect() as connection:
        found = connection.execute(select(runs.c.run_id, runs.c.at, runs.c.summary).where(
            runs.c.run_id == run_id, runs.c.kind == "score",
            runs.c.status == "complete")).first()
    return None if found is None else ServingRun(found.run_id, found.at,
                                                 dict(found.summary or {}))


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def optouts_applied(engine: Engine, at: dt.date | None = None) -> dict[str, Any]:
    """What a run scored now applies, to record with it: the opt-outs in force on `at`
    (default today: the moment of use, whatever date the model is scored at), from the
    register extracts held now, by the policy table in force now."""
    return {"in_force_on": (at or _today()).isoformat(),
            "register": optouts.register_extracts(engine),
            "policy": optouts.coverage_rows(optouts.coverage(engine))}


def applied_by(engine: Engine, run: ServingRun) -> dict[str, Any]:
    """What `run` applied (its record; for a run scored before runs recorded it: the opt-outs
    in force on its reference date, from the register extracts received before it was scored,
    by today's policy table)."""
    recorded = run.summary.get("optouts")
    if recorded:
        return recorded
    scored_at = run.scored_at if run.scored_at.tzinfo else run.scored_at.replace(tzinfo=dt.UTC)
    with engine.connect() as connection:
        received = connection.execute(
            select(optout_register.c.extract_id, extracts.c.received_at).distinct()
            .join(extracts, extracts.c.extract_id == optout_register.c.extract_id)).all()
    return {"in_force_on": str(run.summary.get("at") or scored_at.date().isoformat()),
            "register": sorted(e for e, at in received
                               if (at if at.tzinfo else at.replace(tzinfo=dt.UTC)) < scored_at),
            "policy": optouts.coverage_rows(optouts.coverage(engine))}


def _applies(then: list[optouts.Coverage], rule: optouts.Coverage) -> bool:
    """Did a run that applied `then` (its own purpose's rules) leave out all `rule` covers?"""
    return any(t.optout_type == rule.optout_type and (
        t.sources is None or (rule.sources is not None and rule.sources <= t.sources))
        and (rule.sender_scope or not t.sender_scope) for t in then)


def withheld_person_ids(engine: Engine, purpose: str, run: ServingRun,
                        today: dt.date | None = None) -> dict[str, frozenset[str] | None]:
    """Pseudonyms with an opt-out covering `purpose` in force `today` that `run` did not
    apply, each with the sources those opt-outs take from `purpose` (None: every source)."""
    rules = optouts.coverage(engine)
    mine = [r for r in rules if r.purpose == purpose]
    live = optouts.active_optouts(engine, today or _today(), rules)
    live = live[live["optout_type"].isin({r.optout_type for r in mine})]
    if live.empty:
        return {}
    record = applied_by(engine, run)
    policy = optouts.parse_coverage(record["policy"])
    then = optouts.active_optouts(engine, dt.date.fromisoformat(record["in_force_on"]),
                                  policy, record["register"])
    scoped = {r.optout_type for r in rules if r.sender_scope}
    was_scoped = {r.optout_type for r in policy if r.sender_scope}

    def groups(frame: pd.DataFrame, by: set[str]) -> set[tuple[str, str, str]]:
        return {(p, k, s if k in by else "") for p, k, s in
                zip(frame["person_id"], frame["optout_type"], frame["sender"], strict=True)}

    applied = groups(then, was_scoped)
    run_rules = [t for t in policy if t.purpose == run.purpose]
    covered = {k: [r for r in mine if r.optout_type == k] for k in set(live["optout_type"])}
    out: dict[str, frozenset[str] | None] = {}
    for person, kind, group in groups(live, scoped):
        if (person, kind, group) in applied and all(_applies(run_rules, r)
                                                    for r in covered[kind]):
            continue
        for rule in covered[kind]:
            known = out.get(person, frozenset())
            out[person] = None if known is None or rule.sources is None \
                else known | rule.sources
    return out


def person_keys_of(settings: Settings, person_ids: set[str]) -> set[str]:
    """Person keys the person index gives these pseudonyms."""
    if not person_ids:
        return set()
    return {str(r["person_key"]) for r in link_rows(settings, "person_id", sorted(person_ids))}


def withheld_person_keys(settings: Settings, engine: Engine, purpose: str,
                         run: ServingRun, today: dt.date | None = None) -> set[str]:
    """Person keys `run` must not show for `purpose` now: those of `withheld_person_ids`,
    where an opt-out covers some sources only, when the run used one of them for the person
    (its `sources` column; withheld when the run does not say)."""
    ids = withheld_person_ids(engine, purpose, run, today)
    if not ids:
        return set()
    # Read with the pseudonyms as a filter: the map is never held whole (50M rows at 1M persons).
    link = pd.DataFrame(link_rows(settings, "person_id", sorted(ids)),
                        columns=["person_id", "person_key"]).drop_duplicates()
    covered: dict[str, frozenset[str] | None] = {}
    for person, key in zip(link["person_id"], link["person_key"].astype(str), strict=True):
        known, more = covered.get(key, frozenset()), ids[person]
        covered[key] = None if known is None or more is None else known | more
    partial = {k for k, sources in covered.items() if sources is not None}
    if partial:
        used = _sources_used(settings, run.run_id, partial)
        partial = {k for k in partial if used.get(k) is not None
                   and not (used[k] & covered[k])}  # type: ignore[operator]
    return set(covered) - partial


def _sources_used(settings: Settings, run_id: str, keys: set[str]) -> dict[str, frozenset[str]]:
    """Per person key of `keys`, the sources `run_id` read for them (its `sources` column);
    keys the run does not hold, or every key when it has no such column, are left out."""
    path = settings.layout.run(run_id).scores
    if not path.exists() or "sources" not in pq.read_schema(path).names:
        return {}
    table = pq.read_table(path, columns=["person_key", "sources"],
                          filters=pc.field("person_key").isin(pa.array(sorted(keys))))
    return {key: frozenset(s for s in (text or "").split(";") if s)
            for key, text in zip(table.column("person_key").to_pylist(),
                                 table.column("sources").to_pylist(), strict=True)}
