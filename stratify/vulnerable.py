"""Vulnerable adults for emergency planning: who, by postcode sector, and why.

`vulnerable_persons(sources, at, frail)` flags each adult (18+) alive and registered at `at`:
`frailty` (the persons handed in: the frailty segment, or a stand-in the caller names),
`home_care` (a home care package running at `at`), `oxygen` and `dialysis` (dependency coded
in the last 12 months, by CODES), `lives_alone` (the latest coded living arrangement says
alone, where one is coded). Sector: the postcode sector of the person's latest GP
registration (`unknown` where none). `counts_by_sector` counts them per sector; suppression is
the caller's (governance.suppression, pipeline/incidents.py). Where a flag's codes are not
sent by any source the count is 0, not missing: docs/impact.md says which are coded in the
demo data.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from stratify.sources import DIED_DESTINATION, add_months, prepare

ADULT = 18
LOOKBACK_MONTHS = 12
UNKNOWN = "unknown"
FLAGS = ("frailty", "home_care", "oxygen", "dialysis", "lives_alone")
# (flag, code system, code, what it is). Code systems: `bnf` (prefix of a BNF code issued in
# gp_medications), `icd10` (prefix, upper case without dot, in hospital diagnoses or GP
# events), `snomed` (a concept id in GP events). Sources: BNF 3.6 Oxygen (BNF, NICE/BNF
# publications); ICD-10 5th edition (WHO/NHS Digital): Z99.2 dependence on renal dialysis,
# Z49 care involving dialysis; SNOMED CT UK edition: 426990007 home oxygen therapy,
# 265764009 renal dialysis, 105529008 lives alone, 160734000 lives with family,
# 224131004 lives with partner (the last two: a later record that the person does not live
# alone).
CODES = (
    ("oxygen", "bnf", "0306", "BNF 3.6 oxygen"),
    ("oxygen", "snomed", "426990007", "home oxygen therapy"),
    ("dialysis", "icd10", "Z992", "dependence on renal dialysis"),
    ("dialysis", "icd10", "Z49", "care involving dialysis"),
    ("dialysis", "snomed", "265764009", "renal dialysis"),
    ("lives_alone", "snomed", "105529008", "lives alone"),
    ("not_alone", "snomed", "160734000", "lives with family"),
    ("not_alone", "snomed", "224131004", "lives with partner"),
)


def _codes(flag: str, system: str) -> tuple[str, ...]:
    return tuple(code for f, s, code, _ in CODES if f == flag and s == system)


def _adults(frames: dict[str, pd.DataFrame], raw_gp: pd.DataFrame | None,
            at: pd.Timestamp) -> pd.DataFrame:
    """Adults registered on or before `at` and not dead before it, with their latest
    registration's postcode sector."""
    gp = frames.get("gp_patients")
    if gp is None or raw_gp is None:
        return pd.DataFrame(columns=["postcode_sector"], index=pd.Index([], name="person_key"))
    registered = gp[gp["registration_date"] <= at].copy()
    sector = raw_gp.get("postcode_sector")
    registered["postcode_sector"] = (sector.reindex(registered.index) if sector is not None
                                     else None)
    latest = registered.sort_values("registration_date").groupby("person_key").last()
    born = pd.to_datetime(latest["birth_ym"] + "-01", errors="coerce") \
        if "birth_ym" in latest else pd.Series(pd.NaT, index=latest.index)
    adult = ((at - born) / np.timedelta64(1, "D") / 365.25) >= ADULT
    dead: set[str] = set()
    deaths = frames.get("deaths")
    if deaths is not None:
        dead |= set(deaths.loc[deaths["date_of_death"] < at, "person_key"])
    apc = frames.get("apc")
    if apc is not None:
        dead |= set(apc.loc[(apc["discharge_destination"] == DIED_DESTINATION)
                            & (apc["discharge_date"] < at), "person_key"])
    keep = adult.to_numpy() & ~latest.index.isin(dead)
    out = latest.loc[keep, ["postcode_sector"]].copy()
    out["postcode_sector"] = out["postcode_sector"].fillna(UNKNOWN)
    return out


def _coded(frames: dict[str, pd.DataFrame], flag: str, since: pd.Timestamp,
           at: pd.Timestamp) -> set[str]:
    """Persons with a code of `flag` dated in [since, at)."""
    found: set[str] = set()
    meds = frames.get("gp_medications")
    bnf = _codes(flag, "bnf")
    if meds is not None and bnf:
        recent = meds[(meds["issue_date"] >= since) & (meds["issue_date"] < at)]
        found |= set(recent.loc[recent["bnf_code"].fillna("").str.startswith(bnf),
                                "person_key"])
    events = frames.get("gp_events")
    if events is not None:
        recent = events[(events["event_date"] >= since) & (events["event_date"] < at)]
        snomed = _codes(flag, "snomed")
        found |= set(recent.loc[(recent["code_system"] == "snomed")
                                & recent["code"].isin(snomed), "person_key"])
        icd = _codes(flag, "icd10")
        if icd:
            found |= set(recent.loc[(recent["code_system"] == "icd10")
                                    & recent["code"].fillna("").str.startswith(icd),
                                    "person_key"])
    apc = frames.get("apc")
    icd = _codes(flag, "icd10")
    if apc is not None and icd:
        recent = apc[(apc["admission_date"] >= since) & (apc["admission_date"] < at)]
        text = recent["primary_diagnosis"].fillna("") + ";" + recent[
            "secondary_diagnoses"].fillna("")
        hit = text.str.split(";").map(lambda codes: any(c.startswith(icd) for c in codes))
        found |= set(recent.loc[hit.astype(bool), "person_key"])
    return found


def _lives_alone(frames: dict[str, pd.DataFrame], at: pd.Timestamp) -> set[str]:
    """Persons whose latest coded living arrangement before `at` is `lives alone`."""
    events = frames.get("gp_events")
    if events is None:
        return set()
    alone, other = _codes("lives_alone", "snomed"), _codes("not_alone", "snomed")
    coded = events[(events["event_date"] < at) & (events["code_system"] == "snomed")
                   & events["code"].isin(alone + other)]
    latest = coded.sort_values("event_date").groupby("person_key")["code"].last()
    return set(latest[latest.isin(alone)].index)


def vulnerable_persons(sources: dict[str, pd.DataFrame], at: dt.date,
                       frail: set[str] | frozenset[str]) -> pd.DataFrame:
    """Adults with at least one flag: person_key (index), postcode_sector, one boolean
    column per FLAGS, and `flags` (how many)."""
    frames = prepare(sources)
    when = pd.Timestamp(at)
    since = pd.Timestamp(add_months(at, -LOOKBACK_MONTHS))
    adults = _adults(frames, sources.get("gp_patients"), when)
    care = frames.get("social_care")
    home_care: set[str] = set()
    if care is not None:
        running = (care["service_type"] == "home_care") & (care["start_date"] <= when) & (
            care["end_date"].isna() | (care["end_date"] >= when))
        home_care = set(care.loc[running, "person_key"])
    found = {"frailty": set(frail), "home_care": home_care,
             "oxygen": _coded(frames, "oxygen", since, when),
             "dialysis": _coded(frames, "dialysis", since, when),
             "lives_alone": _lives_alone(frames, when)}
    out = adults.copy()
    for flag in FLAGS:
        out[flag] = out.index.isin(found[flag])
    out["flags"] = out[list(FLAGS)].sum(axis=1).astype(int)
    return out[out["flags"] > 0].sort_index()


def counts_by_sector(persons: pd.DataFrame, sectors: list[str] | None = None) -> pd.DataFrame:
    """Persons per postcode sector (rows, every one of `sectors` too, with zeros) for each
    flag and for `any` (columns): true counts, to be suppressed before anyone sees them."""
    columns = [*FLAGS, "any"]
    if len(persons):
        data = persons[list(FLAGS)].astype(int).assign(any=1)
        table = data.groupby(persons["postcode_sector"]).sum()[columns]
    else:
        table = pd.DataFrame(columns=columns, dtype=int)
    index = sorted(set(table.index) | set(sectors or ()))
    return table.reindex(index, fill_value=0).rename_axis("postcode_sector").astype(int)
