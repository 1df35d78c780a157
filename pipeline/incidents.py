"""Emergency planning: counts of vulnerable adults by postcode sector for planners, and during
a declared incident the list a responder may re-identify for its sectors.

`vulnerable` reads what the `emergency_planning` purpose may use (opt-outs in force now),
flags adults (stratify/vulnerable.py; frailty from the segments analysis, else HFRS 5+), and
writes under `impact/vulnerable/<id>/`: `persons` (pseudonymised, person-level: the list an
incident draws on) and `counts` (published: each flag's counts by sector suppressed and
rounded with governance.suppression, its total beside it). `published_counts` answers
planners from the latest. `incident_list` re-identifies, through governance/incidents.py (the
rules and the audit), the listed persons of an incident's sectors. Opt-outs reach the list by
source and sender scope: the rows they cover are filtered out before the flags are computed
(so a council's withdrawn consent removes only that council's social care rows), and a
whole-person objection holds that person back at re-identification, counted, never refusing
the others. A person with any opt-out received since the counts read the register
(`register_read_at`) is held back too, counted, until the counts are recomputed (red-team R4:
the list cannot have honoured it).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pandas as pd

from governance import incidents as governance_incidents
from governance.audit import Actor
from governance.layout import ImpactFiles
from governance.suppression import Rule, suppress
from pipeline.context import Context, Progress, quiet
from pipeline.impact import output_id, purpose_sources, read_result, save_output
from pipeline.person_keys import person_ids_of
from stratify import vulnerable as flags
from stratify.segments import assign_segments

PURPOSE = "emergency_planning"
VULNERABLE = "vulnerable"
COLUMNS = [*flags.FLAGS, "any"]


class NoCounts(LookupError):
    """No vulnerable-adults count has been made yet (`haven emergency vulnerable`)."""


def _frail(sources: dict[str, pd.DataFrame], at: dt.date) -> set[str]:
    """The frailty segment's persons at `at` (stratify.segments, docs/analyses.md)."""
    segments = assign_segments(sources, at)
    return set(segments.loc[segments["segment"] == "frailty", "person_key"])


def publish(counts: pd.DataFrame, rule: Rule) -> tuple[pd.DataFrame, dict[str, int | str]]:
    """Each column's counts by sector as published (1-7 hidden, others rounded, and more
    hidden until the total beside them gives none away), as text; and each column's total.
    Columns are published as separate lists: a person counts in several flags, so no sum
    across them is an equation a reader could solve."""
    shown: dict[str, list[str]] = {}
    totals: dict[str, int | str] = {}
    for column in COLUMNS:
        published = suppress({str(k): int(v) for k, v in counts[column].items()}, rule)
        totals[column] = published.pop("total")
        shown[column] = [str(published[str(k)]) for k in counts.index]
    table = pd.DataFrame(shown, index=counts.index.astype(str)).rename_axis(
        "postcode_sector").reset_index()
    return table, totals


def vulnerable(ctx: Context, at: dt.date | None = None,
               progress: Progress = quiet) -> tuple[str, dict[str, Any]]:
    """Flag vulnerable adults at `at` (default today) and publish their counts by sector;
    returns (output id, result)."""
    clock = time.perf_counter()
    at = at or dt.datetime.now(dt.UTC).date()
    read_at = dt.datetime.now(dt.UTC)  # before the register is read: later opt-outs hold back
    sources = purpose_sources(ctx, PURPOSE)
    frail = _frail(sources, at)
    persons = flags.vulnerable_persons(sources, at, frail)
    registered = sources.get("gp_patients")
    sectors = [] if registered is None or "postcode_sector" not in registered else sorted(
        set(registered["postcode_sector"].dropna()))
    counts = flags.counts_by_sector(persons, sectors)  # every sector, none singled out
    rule = Rule.load(engine=ctx.engine)
    table, totals = publish(counts, rule)
    identifier = output_id(VULNERABLE, at.isoformat())
    summary = {"id": identifier, "created": dt.datetime.now(dt.UTC).isoformat(),
               "register_read_at": read_at.isoformat(),
               "purpose": PURPOSE, "at": at.isoformat(), "sectors": int(len(counts)),
               "totals": totals, "frailty": "frailty segment (stratify.segments)",
               "rule": rule.describe(),
               "seconds": round(time.perf_counter() - clock, 1)}
    listed = persons.reset_index().rename(columns={"index": "person_key"})
    files = save_output(ctx, VULNERABLE, identifier, summary,
                        {"persons": listed, "counts": table}, sources, int(len(persons)),
                        {"sectors": int(len(counts))})
    progress(f"vulnerable adults at {at.isoformat()}: {len(counts):,} postcode sectors, "
             f"published totals {totals}; written to {files.folder}")
    return identifier, summary


def _latest(ctx: Context) -> ImpactFiles:
    found = ctx.settings.layout.impact_outputs(VULNERABLE)
    if not found:
        raise NoCounts("no count of vulnerable adults yet: run `haven emergency vulnerable`")
    return found[-1]


def published_counts(ctx: Context) -> dict[str, Any]:
    """The latest published counts (suppressed) with their totals, never the persons."""
    files = _latest(ctx)
    summary = read_result(files)
    table = pd.read_parquet(files.table("counts"))
    rows = [{"postcode_sector": r["postcode_sector"],
             **{c: (int(r[c]) if r[c].isdigit() else r[c]) for c in COLUMNS}}
            for r in table.to_dict("records")]
    return {"id": summary["id"], "at": summary["at"], "totals": summary["totals"],
            "rule": summary["rule"], "frailty": summary["frailty"], "sectors": rows}


def incident_list(ctx: Context, requester: Actor, incident_id: str, reason: str,
                  person_keys: list[str] | None = None,
                  now: dt.datetime | None = None) -> dict[str, Any]:
    """NHS numbers and flags of the vulnerable adults of an incident's sectors (or of the
    `person_keys` named, each of whom must be on that list), re-identified through
    governance.incidents (refused and audited there). Persons a whole-person opt-out holds
    back are counted (`held_back_by_opt_out`, one figure for the whole incident: no sector
    breakdown; of them `held_back_since_counts` by an opt-out received since the counts were
    made, with a `note` to recompute), the others listed; persons without an NHS number in
    the vault cannot be named and are counted apart. The list itself was computed through the
    purpose's row filter (`vulnerable`), so a flag that rested only on rows an opt-out removes
    is not on it."""
    files = _latest(ctx)
    persons = pd.read_parquet(files.table("persons")).set_index("person_key")
    incident = governance_incidents.get(ctx.engine, incident_id)
    sectors = set(incident.sectors) if incident is not None else set()
    if person_keys is None:
        wanted = list(persons.index[persons["postcode_sector"].isin(sectors)])
    else:
        wanted = list(dict.fromkeys(person_keys))
    ids = person_ids_of(ctx.settings, wanted)
    key_of = {pid: key for key, found in ids.items() for pid in found}
    sector = persons["postcode_sector"].to_dict()
    summary = read_result(files)
    revealed = governance_incidents.reidentify(
        ctx.engine, ctx.keys, requester, incident_id, sorted(key_of), reason,
        lambda pid: sector.get(key_of.get(pid, "")), now, person_of=key_of.__getitem__,
        since=_read_at(summary))
    items = []
    for key in wanted:
        number = next((revealed.numbers[p] for p in ids.get(key, [])
                       if p in revealed.numbers), None)
        if number is None:
            continue
        row = persons.loc[key]
        items.append({"person_key": key, "nhs_number": number,
                      "postcode_sector": row["postcode_sector"],
                      "flags": [f for f in flags.FLAGS if bool(row[f])]})
    answer = {"incident_id": incident_id, "counts_id": summary["id"],
              "items": items, "held_back_by_opt_out": revealed.held_back,
              "held_back_since_counts": revealed.held_back_since,
              "without_nhs_number": len(wanted) - len(items) - revealed.held_back}
    if revealed.held_back_since:
        answer["note"] = (f"{revealed.held_back_since} "
                          f"{governance_incidents.RECOMPUTE}")
    return answer


def _read_at(summary: dict[str, Any]) -> dt.datetime:
    """When the counts read the opt-out register; for counts made before that was recorded,
    the earliest moment (failing closed: anyone with an opt-out at all is held back until
    the counts are recomputed)."""
    stamp = summary.get("register_read_at")
    return dt.datetime.fromisoformat(stamp) if stamp else dt.datetime.min.replace(
        tzinfo=dt.UTC)
