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

import numpy as np
import pandas as pd

from stratify.features import build_features
from stratify.sources import add_months

SEGMENTS = ("end_of_life", "frailty", "limited_reserve", "serious_stable", "stable_chronic",
            "maternal_infant", "acutely_ill", "healthy")
TABLE_COLUMNS = ("priority", "segment", "label", "rule", "source")
ORGAN_FAILURE = ("heart_failure", "copd", "ckd", "liver_disease")
SERIOUS = ("smi", "stroke", "parkinsons")
MATERNITY_METHODS = ("31", "32")
HFRS_INTERMEDIATE = 5.0


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


def _maternity(sources: dict[str, pd.DataFrame], at: dt.date) -> pd.Series:
    apc = sources.get("apc")
    if apc is None or not len(apc):
        return pd.Series(dtype=bool)
    day = pd.to_datetime(apc["admission_date"], errors="coerce")
    hit = (apc["admission_method"].astype(str).isin(MATERNITY_METHODS)
           & (day >= pd.Timestamp(add_months(at, -12))) & (day < pd.Timestamp(at)))
    keys = apc.loc[hit.to_numpy(), "person_key"].astype(str).unique()
    return pd.Series(True, index=pd.Index(keys))


def assign_segments(sources: dict[str, pd.DataFrame], at: dt.date,
                    order: list[str] | None = None,
                    features: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per person alive and registered at `at`: `person_key`, `segment` (the first
    of `order`, default the shipped table's, whose rule holds), plus `age` for tables.
    `features` may be passed when already built for `at` (else `build_features`)."""
    if order is None:
        from policies import POLICIES_DIR

        order = parse_segments((POLICIES_DIR / "segments.csv").read_text(encoding="utf-8"))
    if sorted(order) != sorted(SEGMENTS):
        raise ValueError("segments: the order must name every segment once")
    if features is None:
        features = build_features(sources, at)
    rules = segment_rules(features, _maternity(sources, at))
    chosen = np.full(len(features), "", dtype=object)
    for name in reversed(order):  # the first rule that holds is written last
        chosen = np.where(rules[name], name, chosen)
    return pd.DataFrame({"person_key": features.index.astype(str), "segment": chosen,
                         "age": features["age"].to_numpy()}).reset_index(drop=True)
