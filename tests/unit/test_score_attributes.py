"""Scoring's filter attributes worked out in DuckDB (stratify.score_batch.attribute_tables): the
sources each person was seen in before the date, as the ordered `string_agg` gave them (it
did not spill: a million persons ran out of 768 MB), now or-ed as bits by a plain grouping."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd

from stratify.score_batch import SOURCE_DATES, attribute_tables

AT = dt.date(2025, 4, 1)


def _connection(seed: int) -> duckdb.DuckDBPyConnection:
    """v_<source> tables of random persons' dated rows, some after `AT`, some sources empty."""
    rng = np.random.default_rng(seed)
    con = duckdb.connect()
    con.execute("CREATE TABLE v_gp_patients (person_key VARCHAR, gp_practice_code VARCHAR, "
                "sex VARCHAR, registration_date TIMESTAMP)")
    for source, column in SOURCE_DATES:
        rows = 0 if source == "community" else int(rng.integers(0, 400))
        frame = pd.DataFrame({
            "person_key": [f"P{k:03d}" for k in rng.integers(0, 150, rows)],
            column: pd.Timestamp(AT) + pd.to_timedelta(rng.integers(-900, 60, rows), "D")})
        con.register("rows", frame)
        con.execute(f"CREATE TABLE v_{source} AS SELECT * FROM rows")
        con.unregister("rows")
    return con


def test_the_sources_each_person_was_seen_in_are_those_string_agg_gave():
    for seed in range(4):
        con = _connection(seed)
        union = " UNION ALL ".join(
            f"SELECT DISTINCT person_key, '{s}' AS source FROM v_{s} WHERE {d} < TIMESTAMP "
            f"'{AT.isoformat()}'" for s, d in SOURCE_DATES)
        want = con.execute(f"""SELECT person_key, string_agg(source, ';' ORDER BY source)
            AS sources FROM ({union}) GROUP BY person_key ORDER BY person_key""").df()
        attribute_tables(con, AT)
        got = con.execute("SELECT * FROM score_seen ORDER BY person_key").df()
        assert len(want) > 100 and want["sources"].str.contains(";").any()
        pd.testing.assert_frame_equal(got, want, check_exact=True)
