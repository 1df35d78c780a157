"""Population segments (issue #14 part 3): every person in one segment of the Bridges to Health
model, by the rules and order of `policies/segments.csv` (docs/analyses.md).

`assign_segments(sources, at, table=None)` -> DataFrame[person_key, segment] for everyone alive
and registered at `at` (the population `stratify.features.build_features` scores), from records
before `at`. The rules are computed here from the person's features; the table fixes their
order (first rule that holds wins) and documents them, so the published rule and the code
cannot drift apart: a table naming a segment the code does not have, or leaving one out, is
refused by `parse_segments`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

import duckdb
import numpy as np
import pandas as pd

from stratify.features import Sources, _in, _ts, connect, features_from
from stratify.sources import add_months

SEGMENTS = ("end_of_life", "frailty", "limited_reserve", "serious_stable", "stable_chronic",
            "maternal_infant", "acutely_ill", "healthy")
TABLE_COLUMNS = ("priority", "segment", "label", "rule", "source")
ORGAN_FAILURE = ("heart_failure", "copd", "ckd", "liver_disease")
SERIOUS = ("smi", "stroke", "parkinsons")
MATERNITY_METHODS = ("31", "32")
HFRS_INTERMEDIATE = 5.0
# The features the rules read (`segment_rules`): only these are fetched for a population.
RULE_FEATURES = ("age", "emergency_admissions_12m", "ae_attendances_12m", "hfrs", "ltc_count",
                 "sc_care_home", "ltc_cancer", "ltc_dementia",
                 *(f"ltc_{c}" for c in ORGAN_FAILURE + SERIOUS))


def parse_segments(text: str) -> list[str]:
    """Segments in priority order from the CSV text of `segments.csv`; ValueError naming the
    row or field when the header, a priority or a segment is wrong, or a segment is missing."""
    lines = [line for line in io.StringIO(text) if not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    if tuple(c.strip() for c in reader.fieldnames or ()) != TABLE_COLUMNS:
        raise ValueError(f"segments.csv: the header must be {','.join(TABLE_COLUMNS)}")
    ranked: dict[str, int] = {}
    for number, row in enumerate(reader, start=1):
        segment = (row.get("segment") or "").strip()
        if segment not in SEGMENTS:
            raise ValueError(f"segments.csv row {number}: unknown segment")
        if segment in ranked:
            raise ValueError(f"segments.csv row {number}: segment {segment} given twice")
        try:
            ranked[segment] = int((row.get("priority") or "").strip())
        except ValueError:
            raise ValueError(f"segments.csv row {number}: priority is not a whole number"
                             ) from None
    missing = [s for s in SEGMENTS if s not in ranked]
    if missing:
        raise ValueError(f"segments.csv: no row for {', '.join(missing)}")
    if len(set(ranked.values())) != len(ranked):
        raise ValueError("segments.csv: two segments share a priority")
    return sorted(ranked, key=ranked.__getitem__)


def validate_segments(content: str, _engine: object = None) -> None:
    """Raise ValueError unless `content` is a usable segment table (the policy check)."""
    parse_segments(content)


def segment_rules(features: pd.DataFrame, maternity: pd.Series) -> dict[str, np.ndarray]:
    """Whether each segment's rule holds for each person (row of `features`; `maternity`
    True where a maternity admission fell in the last 12 months)."""
    f = features

    def flag(name: str) -> np.ndarray:
        return f[name].fillna(0).to_numpy() > 0

    age = f["age"].to_numpy()
    emergency = f["emergency_admissions_12m"].fillna(0).to_numpy() > 0
    older = np.nan_to_num(age, nan=0.0) >= 65
    return {
        "end_of_life": flag("ltc_cancer") & emergency,
        "frailty": older & (flag("ltc_dementia")
                            | (f["hfrs"].fillna(0).to_numpy() >= HFRS_INTERMEDIATE)
                            | flag("sc_care_home")),
        "limited_reserve": np.logical_or.reduce([flag(f"ltc_{c}") for c in ORGAN_FAILURE])
        & emergency,
        "serious_stable": np.logical_or.reduce([flag(f"ltc_{c}") for c in SERIOUS])
        | (f["ltc_count"].fillna(0).to_numpy() >= 4),
        "stable_chronic": f["ltc_count"].fillna(0).to_numpy() >= 1,
        "maternal_infant": (np.nan_to_num(age, nan=99.0) < 1)
        | maternity.reindex(f.index, fill_value=False).to_numpy(dtype=bool),
        "acutely_ill": emergency | (f["ae_attendances_12m"].fillna(0).to_numpy() > 0),
        "healthy": np.ones(len(f), dtype=bool),
    }


def maternity(con: duckdb.DuckDBPyConnection, at: dt.date) -> pd.Series:
    """True for each person with a maternity admission (method 31 or 32) in the 12 months
    before `at`, on a connection made by `stratify.features.connect` (read in SQL: the
    hospital rows are never held in memory)."""
    keys = con.execute(f"""
        SELECT DISTINCT CAST(person_key AS VARCHAR) AS person_key FROM v_apc
        WHERE person_key IS NOT NULL AND admission_method IN {_in(MATERNITY_METHODS)}
        AND admission_date >= {_ts(add_months(at, -12))} AND admission_date < {_ts(at)}
        ORDER BY person_key
    """).fetchnumpy()["person_key"]
    return pd.Series(True, index=pd.Index(np.asarray(keys, dtype=object)), dtype=bool)


def latest_practices(sources: Sources) -> pd.Series:
    """Each person's practice: the latest GP registration's (person_key -> code), a
    registration without a date counting as the latest, as a stable sort by date would put
    it; among registrations on one day, the greatest code. Read in SQL over
    `stratify.features.connect` (frames or an on-disk copy)."""
    con = connect(sources)
    try:
        found = con.execute("""
            SELECT CAST(person_key AS VARCHAR) AS person_key, gp_practice_code
            FROM v_gp_patients WHERE person_key IS NOT NULL AND gp_practice_code IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY person_key
                ORDER BY registration_date DESC NULLS FIRST, gp_practice_code DESC) = 1
            ORDER BY person_key
        """).fetchnumpy()
    finally:
        con.close()
    return pd.Series(np.asarray(found["gp_practice_code"], dtype=object).astype(str),
                     index=pd.Index(np.asarray(found["person_key"], dtype=object),
                                    name="person_key"), dtype=object, name="gp_practice_code")


def assign_segments(sources: Sources, at: dt.date,
                    order: list[str] | None = None,
                    features: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per person alive and registered at `at`: `person_key`, `segment` (the first
    of `order`, default the shipped table's, whose rule holds), plus `age` for tables.
    `features` may be passed when already built for `at` (else those of `RULE_FEATURES`).
    `sources`: frames or an on-disk copy (`stratify.features.OnDisk`), read on one connection."""
    if order is None:
        from policies import POLICIES_DIR

        order = parse_segments((POLICIES_DIR / "segments.csv").read_text(encoding="utf-8"))
    if sorted(order) != sorted(SEGMENTS):
        raise ValueError("segments: the order must name every segment once")
    con = connect(sources)
    try:
        if features is None:
            features = features_from(con, at, columns=RULE_FEATURES)
        rules = segment_rules(features, maternity(con, at))
    finally:
        con.close()
    chosen = np.full(len(features), "", dtype=object)
    for name in reversed(order):  # the first rule that holds is written last
        chosen = np.where(rules[name], name, chosen)
    return pd.DataFrame({"person_key": features.index.astype(str), "segment": chosen,
                         "age": features["age"].to_numpy()}).reset_index(drop=True)
