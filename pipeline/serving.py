"""Which score run serves a purpose now, and whom it must hold back: one answer for every face.

The command-line export, the API's lists and aggregates, FHIR and recipient exports all ask
`serving_run(engine, purpose)`. A purpose is answered from the newest complete run scored for
it; a case-finding caller may be answered from a commissioning run while the opt-out policy
makes commissioning leave out at least as much. `withheld_person_keys` names the persons the
run must not show for the purpose, by the opt-outs in force (governance.optouts).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select

from governance import optouts
from governance.schema import extracts, runs
from governance.schema import optouts as optout_register
from governance.settings import Settings
from linkage.person_index import read_link_map

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
    """Changes whenever the opt-out register does (for caches of what a run withholds)."""
    with engine.connect() as connection:
        return tuple(connection.execute(select(
            func.count(), func.max(optout_register.c.extract_id),
            func.min(optout_register.c.extract_id))).one())


def serving_run(engine: Engine, purpose: str) -> ServingRun | None:
    """The run answering `purpose` now (its own newest, then what may stand in), or None."""
    wanted = runs_for(purpose, optouts.coverage(engine))
    with engine.connect() as connection:
        listed = connection.execute(
            select(runs.c.run_id, runs.c.at, runs.c.summary).where(
                runs.c.kind == "score", runs.c.status == "complete")
            .order_by(runs.c.at.desc(), runs.c.run_id.desc())).all()
    for choice in wanted:  # the purpose's own run first, then what may stand in for it
        for run in listed:
            if run_purpose(run.summary) == choice:
                return ServingRun(run.run_id, run.at, dict(run.summary or {}))
    return None


def withheld_person_ids(engine: Engine, purpose: str, scored_at: dt.datetime,
                        today: dt.date | None = None) -> set[str]:
    """Pseudonyms with an opt-out covering `purpose` in force that arrived after the run was
    scored (those known before were applied when it was scored)."""
    rules = optouts.coverage(engine)
    types = set(_covered_types(rules, purpose))
    live = optouts.active_optouts(engine, today or dt.datetime.now(dt.UTC).date())
    live = live[live["optout_type"].isin(types)]
    if live.empty:
        return set()
    if scored_at.tzinfo is None:
        scored_at = scored_at.replace(tzinfo=dt.UTC)
    with engine.connect() as connection:
        arrived = connection.execute(
            select(optout_register.c.person_id, optout_register.c.optout_type,
                   extracts.c.received_at)
            .join(extracts, extracts.c.extract_id == optout_register.c.extract_id)
            .where(optout_register.c.optout_type.in_(sorted(types)))).all()
    late = {(p, k) for p, k, at in arrived
            if (at if at.tzinfo else at.replace(tzinfo=dt.UTC)) >= scored_at}
    return {p for p, k in zip(live["person_id"], live["optout_type"], strict=True)
            if (p, k) in late}


def person_keys_of(settings: Settings, person_ids: set[str]) -> set[str]:
    """Person keys the person index gives these pseudonyms."""
    if not person_ids:
        return set()
    link = read_link_map(settings, columns=["person_id", "person_key"])
    hit = link["person_id"].isin(person_ids)
    return set(link.loc[hit, "person_key"].astype(str))


def withheld_person_keys(settings: Settings, engine: Engine, purpose: str,
                         run: ServingRun) -> set[str]:
    """Person keys `run` must not show for `purpose` now."""
    return person_keys_of(settings, withheld_person_ids(engine, purpose, run.scored_at))
