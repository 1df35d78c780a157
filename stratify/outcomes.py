"""Outcomes: what happens to a person in the 12 months from a reference date.

The main outcome is one or more emergency admissions (method 21-28, 2A-2D) admitted in
`[at, at + 12 months)`; SPARRA also reports emergency admission or death, given here too.
Only used on dates whose follow-up is complete (training windows, later evaluation).
"""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd

from stratify.features import Sources, _in, _ts, connect
from stratify.sources import DIED_DESTINATION, EMERGENCY_METHODS, add_months

OUTCOME_MONTHS = 12


def outcomes_from(con: duckdb.DuckDBPyConnection, persons: pd.Index, at: dt.date,
                  months: int = OUTCOME_MONTHS) -> pd.DataFrame:
    """`emergency` and `emergency_or_death` (0/1) for `persons`, over `[at, at + months)`."""
    out = pd.DataFrame(index=persons.astype(str))
    for name, flags in outcome_flags(con, out.index, at, months).items():
        out[name] = flags.astype("int8")
    return out


def outcome_flags(con: duckdb.DuckDBPyConnection, persons: pd.Index, at: dt.date,
                  months: int = OUTCOME_MONTHS) -> dict[str, np.ndarray]:
    """`outcomes_from`'s two outcomes as boolean arrays in the order of `persons` (text
    person keys), with no frame indexed by them: only the persons with an event are held
    as a set (a tenth of a population or less), which a whole population's keys are
    looked up in."""
    start, end = _ts(at), _ts(add_months(at, months))
    emergency = con.execute(f"""
        SELECT DISTINCT person_key FROM v_apc
        WHERE admission_method IN {_in(EMERGENCY_METHODS)}
        AND admission_date >= {start} AND admission_date < {end}
    """).df()["person_key"].astype(str)
    died = con.execute(f"""
        SELECT person_key FROM v_deaths WHERE date_of_death >= {start} AND date_of_death < {end}
        UNION SELECT person_key FROM v_apc WHERE discharge_destination = '{DIED_DESTINATION}'
        AND discharge_date >= {start} AND discharge_date < {end}
    """).df()["person_key"].astype(str)
    flags = {"emergency": np.asarray(persons.isin(emergency), dtype=bool)}
    flags["emergency_or_death"] = flags["emergency"] | np.asarray(persons.isin(died), dtype=bool)
    return flags


def build_outcomes(sources: Sources, persons: pd.Index, at: dt.date,
                   months: int = OUTCOME_MONTHS) -> pd.DataFrame:
    """Outcomes of `persons` in the `months` from `at` (see `outcomes_from`)."""
    con = connect(sources)
    try:
        return outcomes_from(con, persons, at, months)
    finally:
        con.close()


def build_outcome_flags(sources: Sources, persons: pd.Index, at: dt.date,
                        months: int = OUTCOME_MONTHS) -> dict[str, np.ndarray]:
    """Outcome flags of `persons` in the `months` from `at` (see `outcome_flags`)."""
    con = connect(sources)
    try:
        return outcome_flags(con, persons, at, months)
    finally:
        con.close()


def follow_up_complete(con: duckdb.DuckDBPyConnection, at: dt.date,
                       months: int = OUTCOME_MONTHS) -> bool:
    """True when hospital records reach past `at + months` (so outcomes there are known)."""
    last = con.execute("SELECT max(admission_date) FROM v_apc").fetchone()[0]
    return last is not None and pd.Timestamp(last).date() >= add_months(at, months) - \
        dt.timedelta(days=31)
