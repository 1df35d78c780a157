"""Cost per person across health and social care (issue #14 part 2; rules in docs/analyses.md).

Spend is activity times a unit cost from the policy table `policies/unit_costs.csv` (each row
with its source and price year), except social care packages, which carry their own
`weekly_cost` where the council sent one. `spend_in_windows(sources, windows, unit_costs)`
prices every person's activity inside arbitrary windows (one per person and year for
`person_costs`, one before and one after each discharge for the pathway comparison); the work
is set-based SQL in DuckDB over `stratify.features.connect`'s typed views, so `sources` may be
the frames or an on-disk copy (`stratify.features.OnDisk`) larger than memory.

Settings (the columns): emergency, elective and other admissions (by method; a spell's cost is
its base cost plus excess bed days beyond the trim point, counted on its admission date),
A&E attendances, outpatient attendances (seen: status 5 or 6), community contacts (by service),
GP prescription items and social care (weeks of each package inside the window).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Mapping

import numpy as np
import pandas as pd

from stratify.features import Sources, _in, connect
from stratify.sources import COLUMNS, ELECTIVE_METHODS, EMERGENCY_METHODS

SETTINGS = ("emergency_admissions", "elective_admissions", "other_admissions", "ae",
            "outpatients", "community", "prescribing", "social_care")
SOCIAL_CARE_TYPES = ("home_care", "residential", "nursing", "reablement", "direct_payment",
                     "day_care", "equipment", "other")
COMMUNITY_SERVICES = ("district_nursing", "therapy", "rapid_response", "reablement", "other")
# Every unit the table must price (cost per `per`).
UNITS = ("emergency_spell", "elective_spell", "day_case", "other_spell", "excess_bed_day",
         "trim_point", "ae_attendance", "outpatient_attendance", "prescription_item",
         *(f"community_{s}" for s in COMMUNITY_SERVICES),
         *(f"social_care_{s}" for s in SOCIAL_CARE_TYPES))
WINDOWS_PER_QUERY = 500_000  # windows priced by one query (`spend_in_windows`)
TABLE_COLUMNS = ("unit", "cost", "per", "source", "price_year", "note")
ONE_OFF = ("equipment",)   # social care items priced once, on their start date


def parse_unit_costs(text: str) -> dict[str, float]:
    """Unit -> cost from the CSV text of `unit_costs.csv` (`#` lines are comments).

    ValueError naming the row and field when a row is malformed, a unit unknown or repeated,
    a cost not a non-negative number, a source or price year missing, or a unit absent.
    """
    lines = [line for line in io.StringIO(text) if not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    if tuple(c.strip() for c in reader.fieldnames or ()) != TABLE_COLUMNS:
        raise ValueError(f"unit_costs.csv: the header must be {','.join(TABLE_COLUMNS)}")
    out: dict[str, float] = {}
    for number, row in enumerate(reader, start=1):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        unit = row["unit"]
        if unit not in UNITS:
            raise ValueError(f"unit_costs.csv row {number}: unknown unit")
        if unit in out:
            raise ValueError(f"unit_costs.csv row {number}: unit {unit} given twice")
        try:
            cost = float(row["cost"])
        except ValueError:
            raise ValueError(f"unit_costs.csv row {number}: cost is not a number") from None
        if not np.isfinite(cost) or cost < 0:
            raise ValueError(f"unit_costs.csv row {number}: cost must be 0 or more")
        for field in ("per", "source", "price_year"):
            if not row[field]:
                raise ValueError(f"unit_costs.csv row {number}: {field} is missing")
        out[unit] = cost
    missing = [u for u in UNITS if u not in out]
    if missing:
        raise ValueError(f"unit_costs.csv: no row for {', '.join(missing)}")
    return out


def validate_unit_costs(content: str, _engine: object = None) -> None:
    """Raise ValueError unless `content` is a usable unit cost table (the policy check)."""
    parse_unit_costs(content)


def financial_year(year: int) -> tuple[dt.date, dt.date]:
    """The NHS financial year starting in April of `year`: `[1 April, next 1 April)`."""
    if not 1900 <= year <= 2200:
        raise ValueError("costs: the year must be a four-digit year, e.g. 2024 for 2024/25")
    return dt.date(year, 4, 1), dt.date(year + 1, 4, 1)


def spend_in_windows(sources: Sources, windows: pd.DataFrame,
                     unit_costs: Mapping[str, float], threads: int | None = None
                     ) -> pd.DataFrame:
    """Spend by setting inside each window: `windows` has `window` (an id), `person_key`,
    `start` and `end` (dates, end exclusive); returns one row per window with the `SETTINGS`
    columns and `total` (pounds, 0 where nothing happened)."""
    missing = {"window", "person_key", "start", "end"} - set(windows.columns)
    if missing:
        raise ValueError(f"costs: windows lack {', '.join(sorted(missing))}")
    con = connect(sources, threads)
    found = []
    try:
        # A query per `WINDOWS_PER_QUERY` windows: each window is priced on its own, so the
        # parts are the whole's rows, and DuckDB's joins and pivot hold one part (a whole
        # population's year is one window per person).
        for first in range(0, len(windows), WINDOWS_PER_QUERY):
            frame = windows.iloc[first:first + WINDOWS_PER_QUERY][
                ["window", "person_key", "start", "end"]].rename(
                columns={"window": "wid", "start": "ws", "end": "we"})
            frame["ws"] = pd.to_datetime(frame["ws"])
            frame["we"] = pd.to_datetime(frame["we"])
            con.register("w_raw", frame)
            con.execute("CREATE OR REPLACE TEMP TABLE w AS SELECT wid, person_key, "
                        "CAST(ws AS DATE) AS s, CAST(we AS DATE) AS e FROM w_raw")
            con.unregister("w_raw")
            found.append(con.execute(_priced_sql(unit_costs)).df())
    finally:
        con.close()
    priced = (pd.concat(found, ignore_index=True) if found else
              pd.DataFrame({"wid": pd.Series([], dtype="int64")})).rename(
        columns={"wid": "window"})
    out = windows[["window"]].drop_duplicates().merge(priced, on="window", how="left")
    for column in SETTINGS:
        if column not in out:
            out[column] = 0.0
        out[column] = out[column].fillna(0.0).astype("float64")
    out["total"] = out[list(SETTINGS)].sum(axis=1)
    return out[["window", *SETTINGS, "total"]]


def _priced_sql(unit: Mapping[str, float]) -> str:
    """One row per (window, setting) with the spend inside it."""
    trim, bed = unit["trim_point"], unit["excess_bed_day"]
    emergency, elective = _in(EMERGENCY_METHODS), _in(ELECTIVE_METHODS)
    stay = ("greatest(date_diff('day', CAST(a.admission_date AS DATE), "
            "coalesce(CAST(a.discharge_date AS DATE), w.e)), 0)")
    community = " ".join(f"WHEN '{s}' THEN {unit[f'community_{s}']}"
                         for s in COMMUNITY_SERVICES)
    weekly = " ".join(f"WHEN '{s}' THEN {unit[f'social_care_{s}']}"
                      for s in SOCIAL_CARE_TYPES)
    one_off = _in(ONE_OFF)
    return f"""
        WITH items AS (
            SELECT w.wid,
                CASE WHEN a.admission_method IN {emergency} THEN 'emergency_admissions'
                     WHEN a.admission_method IN {elective} THEN 'elective_admissions'
                     ELSE 'other_admissions' END AS setting,
                CASE WHEN a.admission_method IN {emergency} THEN {unit['emergency_spell']}
                     WHEN a.admission_method IN {elective} AND {stay} = 0
                         THEN {unit['day_case']}
                     WHEN a.admission_method IN {elective} THEN {unit['elective_spell']}
                     ELSE {unit['other_spell']} END
                + {bed} * greatest({stay} - {trim}, 0) AS cost
            FROM w JOIN v_apc a USING (person_key)
            WHERE CAST(a.admission_date AS DATE) >= w.s AND CAST(a.admission_date AS DATE) < w.e
            UNION ALL
            SELECT w.wid, 'ae', {unit['ae_attendance']}
            FROM w JOIN v_ae x USING (person_key)
            WHERE CAST(x.arrival_datetime AS DATE) >= w.s AND CAST(x.arrival_datetime AS DATE) < w.e
            UNION ALL
            SELECT w.wid, 'outpatients', {unit['outpatient_attendance']}
            FROM w JOIN v_op o USING (person_key)
            WHERE o.attendance_status IN ('5', '6')
            AND CAST(o.appointment_date AS DATE) >= w.s AND CAST(o.appointment_date AS DATE) < w.e
            UNION ALL
            SELECT w.wid, 'community', CASE c.service {community} ELSE 0 END
            FROM w JOIN v_community c USING (person_key)
            WHERE CAST(c.contact_date AS DATE) >= w.s AND CAST(c.contact_date AS DATE) < w.e
            UNION ALL
            SELECT w.wid, 'prescribing', {unit['prescription_item']}
            FROM w JOIN v_gp_medications m USING (person_key)
            WHERE CAST(m.issue_date AS DATE) >= w.s AND CAST(m.issue_date AS DATE) < w.e
            UNION ALL
            SELECT w.wid, 'social_care',
                CASE WHEN sc.service_type IN {one_off} THEN
                    CASE WHEN CAST(sc.start_date AS DATE) >= w.s
                         AND CAST(sc.start_date AS DATE) < w.e
                         THEN coalesce(sc.weekly_cost, CASE sc.service_type {weekly} ELSE 0 END)
                         ELSE 0 END
                ELSE coalesce(sc.weekly_cost, CASE sc.service_type {weekly} ELSE 0 END)
                    * greatest(date_diff('day',
                        greatest(CAST(sc.start_date AS DATE), w.s),
                        least(coalesce(CAST(sc.end_date AS DATE) + INTERVAL 1 DAY, w.e), w.e)),
                        0) / 7.0 END
            FROM w JOIN v_social_care sc USING (person_key)
            WHERE CAST(sc.start_date AS DATE) < w.e
            AND (sc.end_date IS NULL OR CAST(sc.end_date AS DATE) >= w.s))
        PIVOT (SELECT wid, setting, cost FROM items) ON setting
            IN {_in(SETTINGS)} USING sum(cost) GROUP BY wid
    """


def person_costs(sources: Sources, year: int,
                 unit_costs: Mapping[str, float], persons: pd.Index | None = None,
                 threads: int | None = None) -> pd.DataFrame:
    """Each person's spend by setting in financial year `year` (April to March): one row per
    person of `persons` (default: everyone with a GP registration or any record), indexed by
    `person_key`, columns `SETTINGS` and `total`."""
    start, end = financial_year(year)
    if persons is None:
        persons = everyone(sources)
    windows = pd.DataFrame({"window": np.arange(len(persons)),
                            "person_key": persons.astype(str), "start": start, "end": end})
    spent = spend_in_windows(sources, windows, unit_costs, threads)
    spent.index = pd.Index(windows["person_key"].to_numpy()[spent["window"].to_numpy()],
                           name="person_key")
    return spent.drop(columns="window").sort_index()


def everyone(sources: Sources) -> pd.Index:
    """Every person key found in any source, sorted (read in SQL over
    `stratify.features.connect`: frames or an on-disk copy)."""
    union = " UNION ".join(f"SELECT CAST(person_key AS VARCHAR) AS k FROM v_{name}"
                           for name in COLUMNS)
    con = connect(sources)
    try:
        keys = con.execute(f"SELECT DISTINCT k FROM ({union}) WHERE k IS NOT NULL"
                           ).fetchnumpy()["k"]
    finally:
        con.close()
    return pd.Index(sorted(str(k) for k in keys))


def top_share(total: pd.Series, share: float) -> float:
    """The share of all spend that the top `share` (e.g. 0.01) of persons account for."""
    if not 0 < share <= 1:
        raise ValueError("costs: the top share is a fraction between 0 and 1")
    values = np.sort(total.to_numpy(dtype="float64"))[::-1]
    if not len(values) or values.sum() <= 0:
        return 0.0
    top = max(1, int(round(len(values) * share)))
    return float(values[:top].sum() / values.sum())


def around_discharges(sources: Sources, journeys: pd.DataFrame,
                      unit_costs: Mapping[str, float], days: int = 365,
                      threads: int | None = None) -> pd.DataFrame:
    """Spend in the `days` before each journey's admission and the `days` after its
    discharge: `journeys` rows (person_key, admission_date, discharge_date) with columns
    `spend_before`, `spend_after` (pounds) added."""
    rows = journeys.reset_index(drop=True)
    n = len(rows)
    before = pd.DataFrame({"window": np.arange(n), "person_key": rows["person_key"],
                           "start": pd.to_datetime(rows["admission_date"])
                           - pd.Timedelta(days=days),
                           "end": pd.to_datetime(rows["admission_date"])})
    after = pd.DataFrame({"window": np.arange(n) + n, "person_key": rows["person_key"],
                          "start": pd.to_datetime(rows["discharge_date"])
                          + pd.Timedelta(days=1),
                          "end": pd.to_datetime(rows["discharge_date"])
                          + pd.Timedelta(days=days + 1)})
    spent = spend_in_windows(sources, pd.concat([before, after], ignore_index=True),
                             unit_costs, threads).set_index("window")["total"]
    out = rows.copy()
    out["spend_before"] = spent.reindex(np.arange(n)).to_numpy()
    out["spend_after"] = spent.reindex(np.arange(n) + n).to_numpy()
    return out
