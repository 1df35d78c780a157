"""The landed frames that stratification reads, checked and brought to one set of dtypes.

Input is `sources: dict[str, DataFrame]` keyed by source name (any may be absent), each with the
landed columns of docs/landed-schema.md plus `person_key`. Dates may arrive as `datetime.date`
objects (Parquet date32), strings or datetime64; they leave as datetime64 so DuckDB and pandas
compare them quickly. Columns a source lacks are added as nulls so feature SQL never breaks.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

SOURCES = ("apc", "ae", "op", "gp_patients", "gp_events", "gp_medications", "community",
           "social_care", "deaths", "optouts")

# Columns each source must offer the feature code, and which of them are dates/timestamps.
COLUMNS: dict[str, tuple[str, ...]] = {
    "apc": ("admission_date", "discharge_date", "admission_method", "discharge_destination",
            "primary_diagnosis", "secondary_diagnoses"),
    "ae": ("arrival_datetime", "arrival_mode", "acuity", "discharge_status"),
    "op": ("appointment_date", "attendance_status", "treatment_function_code"),
    "gp_patients": ("registration_date", "gp_practice_code"),
    "gp_events": ("event_date", "code_system", "code", "event_type", "value"),
    "gp_medications": ("issue_date", "bnf_code"),
    "community": ("contact_date", "service"),
    "social_care": ("service_type", "start_date", "end_date", "weekly_cost"),
    "deaths": ("date_of_death",),
    "optouts": ("optout_type", "effective_date", "withdrawn"),
}
PERSON_FIELDS = ("birth_ym", "sex")
DATES = frozenset({"admission_date", "discharge_date", "arrival_datetime", "appointment_date",
                   "registration_date", "event_date", "issue_date", "contact_date", "start_date",
                   "end_date", "date_of_death", "effective_date"})
NUMBERS = frozenset({"value", "weekly_cost", "acuity"})

# Admission methods (HES/SUS): emergency 21-28 and 2A-2D; elective 11-13.
EMERGENCY_METHODS = ("21", "22", "23", "24", "25", "26", "27", "28", "2A", "2B", "2C", "2D")
ELECTIVE_METHODS = ("11", "12", "13")
DIED_DESTINATION = "79"


def prepare(sources: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Frames with the columns features need, typed; sources absent or empty are left out.

    Only the needed columns are kept (plus `person_key`, `extract_id`, `birth_ym`, `sex`),
    so a partition of a large dataset costs no more memory than it must.
    """
    out: dict[str, pd.DataFrame] = {}
    for name, frame in sources.items():
        if name not in COLUMNS or frame is None or len(frame) == 0:
            continue
        if "person_key" not in frame.columns:
            raise ValueError(f"source {name} has no person_key column")
        keep = ["person_key", *COLUMNS[name],
                *[c for c in (*PERSON_FIELDS, "extract_id") if c in frame.columns]]
        data = {}
        for column in keep:
            if column in frame.columns:
                series = frame[column]
            else:
                series = pd.Series(None, index=frame.index, dtype=object)
            if column in DATES:
                series = _as_datetime(series)
            elif column in NUMBERS:
                series = pd.to_numeric(series, errors="coerce").astype("float64")
            elif column == "withdrawn":
                series = series.map(lambda v: v is True or v == "Y" or v == "True") \
                    if series.dtype == object else series.fillna(False).astype(bool)
            elif isinstance(series.dtype, pd.CategoricalDtype):
                series = series.astype(object).where(series.notna(), None)
            data[column] = series
        out[name] = pd.DataFrame(data, index=frame.index, copy=False)
    return out


def _as_datetime(series: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(series):
        if getattr(series.dtype, "tz", None) is not None:
            series = series.dt.tz_localize(None)
        return series.astype("datetime64[us]")
    return pd.to_datetime(series, errors="coerce").astype("datetime64[us]")


def extract_ids(sources: Any) -> dict[str, list[str]]:
    """The landed extract ids each source's rows came from (recorded with every run); an
    on-disk copy (`features.OnDisk`) says them itself."""
    if not isinstance(sources, dict):
        return {name: list(found) for name, found in sources.ids.items()}
    ids: dict[str, list[str]] = {}
    for name, frame in sources.items():
        if frame is not None and "extract_id" in frame.columns:
            ids[name] = sorted(str(v) for v in frame["extract_id"].dropna().unique())
    return ids


def add_months(day: dt.date, months: int) -> dt.date:
    """`day` moved by whole calendar months (clamped to the month's last day)."""
    total = day.year * 12 + day.month - 1 + months
    year, month = divmod(total, 12)
    month += 1
    for last in (31, 30, 29, 28):
        try:
            return dt.date(year, month, min(day.day, last))
        except ValueError:
            continue
    raise ValueError(day)  # pragma: no cover - unreachable
