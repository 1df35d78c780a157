"""`append_table` (Arrow into the DuckDB copy) against `append_rows` (the frame through
`prepare`), which it replaces for the linked copy: the same typed rows in the file, with
nulls, NaN, dates pandas cannot hold, and types it must leave to the frame's way."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from stratify.features import _arrow_prepared, append_rows, append_table, connect_on_disk
from stratify.sources import COLUMNS, DATES, NUMBERS, PERSON_FIELDS


def _column(rng: np.random.Generator, name: str, n: int) -> pa.Array:
    missing = rng.random(n) < 0.2
    if name in DATES:
        if name == "arrival_datetime":
            ms = rng.integers(1.5e12, 1.8e12, n)
            return pa.array(ms, pa.timestamp("ms"), mask=missing)
        days = rng.integers(-200_000, 120_000, n)  # 1422 to 2298: some pandas cannot hold
        days[:4] = [-106_752, -106_751, 106_750, 106_751]  # 1677-09-21 ... 2262-04-12
        return pa.array(days.astype(np.int32), pa.date32(), mask=missing)
    if name in NUMBERS:
        if name == "acuity":
            return pa.array(rng.integers(1, 6, n).astype(np.int8), mask=missing)
        values = rng.normal(100, 30, n)
        values[rng.random(n) < 0.1] = np.nan
        return pa.array(values, pa.float64(), mask=missing)
    if name == "withdrawn":
        return pa.array(rng.random(n) < 0.3, pa.bool_(), mask=missing)
    words = np.array(["a", "B1", "2A", "", "x.y", "Zz9"], dtype=object)
    return pa.array(words[rng.integers(0, len(words), n)], pa.string(), mask=missing)


def _rows(con, name: str) -> list[tuple]:
    return sorted(con.execute(f"SELECT * FROM v_{name}").fetchall(), key=repr)


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_append_table_types_the_rows_as_append_rows(tmp_path, name):
    rng = np.random.default_rng(len(name))
    n = 400
    columns = {"person_key": pa.array([f"P{i % 37:020x}" for i in range(n)]),
               "extract_id": pa.array(["20261207-x-0001"] * n), "row": pa.array(range(n)),
               "person_id": pa.array([None] * n, pa.string()), "sender": pa.array(["S"] * n)}
    for column in (*COLUMNS[name], *PERSON_FIELDS):
        if column != COLUMNS[name][-1] or len(COLUMNS[name]) == 1:  # one left out: a null
            columns[column] = _column(rng, column, n)
    table = pa.table(columns)
    assert _arrow_prepared(name, table) is not None  # the Arrow way is the one under test
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    by_frame = connect_on_disk(tmp_path / "a")
    by_table = connect_on_disk(tmp_path / "b")
    try:
        assert append_rows(by_frame, name, table.to_pandas()) == n
        assert append_table(by_table, name, table) == n
        expected, got = _rows(by_frame, name), _rows(by_table, name)
        assert got == expected
        assert any(None in row for row in got)  # nulls were there to be kept alike
    finally:
        by_frame.close()
        by_table.close()


def test_dates_pandas_cannot_hold_are_null_and_the_rest_kept(tmp_path):
    days = [dt.date(1677, 9, 21), dt.date(1677, 9, 22), dt.date(2262, 4, 11),
            dt.date(2262, 4, 12), dt.date(2025, 3, 1)]
    table = pa.table({"person_key": pa.array(["P1"] * 5), "date_of_death": pa.array(days)})
    con = connect_on_disk(tmp_path)
    try:
        append_table(con, "deaths", table)
        got = [r[0] for r in con.execute(
            "SELECT date_of_death FROM v_deaths ORDER BY date_of_death NULLS FIRST").fetchall()]
    finally:
        con.close()
    assert got[:2] == [None, None]
    assert [d.date() for d in got[2:]] == [dt.date(1677, 9, 22), dt.date(2025, 3, 1),
                                            dt.date(2262, 4, 11)]


@pytest.mark.parametrize("column,values", [
    ("admission_date", pa.array(["2024-01-02", "not a date"])),  # dates as text
    ("admission_date", pa.array([1, 2], pa.timestamp("s", tz="Europe/London"))),
    ("admission_method", pa.array([21, 11])),  # a code as a number
])
def test_types_it_does_not_know_go_the_frame_s_way(tmp_path, column, values):
    table = pa.table({"person_key": pa.array(["P1", "P2"]), column: values})
    assert _arrow_prepared("apc", table) is None
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    by_frame, by_table = connect_on_disk(tmp_path / "a"), connect_on_disk(tmp_path / "b")
    try:
        append_rows(by_frame, "apc", table.to_pandas())
        append_table(by_table, "apc", table)
        assert _rows(by_table, "apc") == _rows(by_frame, "apc")
    finally:
        by_frame.close()
        by_table.close()


def test_a_table_without_person_keys_is_refused(tmp_path):
    con = connect_on_disk(tmp_path)
    try:
        with pytest.raises(ValueError, match="no person_key"):
            append_table(con, "apc", pa.table({"admission_date": pa.array([dt.date.today()])}))
    finally:
        con.close()
