"""The views `stratify.features.connect` makes over a Parquet copy (the Spark engine's linked
copy, `OnDisk.ranges`): typed like the DuckDB copy's even with no file, and never over a path
DuckDB would read as a pattern."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stratify.features import PARQUET_COPY, OnDisk, connect, copy_schema, person_ranges
from stratify.sources import COLUMNS


def test_a_copy_view_over_no_files_is_an_empty_typed_table(tmp_path: Path) -> None:
    copy = OnDisk(folder=tmp_path, memory_limit="256MB", ids={}, rows=0,
                  ranges=((None, None),))
    con = connect(copy.part(None, None))
    try:
        for name in COLUMNS:
            assert con.execute(f"SELECT count(*) FROM v_{name}").fetchone()[0] == 0
        described = {row[0]: row[1] for row in con.execute("DESCRIBE v_apc").fetchall()}
        assert described["admission_date"] == "TIMESTAMP"
    finally:
        con.close()


@pytest.mark.parametrize("mark", ["*", "?", "["])
def test_a_copy_in_a_folder_duckdb_would_read_as_a_pattern_is_refused(tmp_path: Path,
                                                                      mark: str) -> None:
    # a reviewer's find: `ws*1` read the files of a sibling `ws-other-stage1` as well
    for name in (f"ws{mark}1", "ws-other-stage1", "wsX1"):
        folder = tmp_path / name / PARQUET_COPY / "deaths" / "range=0"
        folder.mkdir(parents=True)
        pq.write_table(copy_schema("deaths").empty_table(), folder / "part-0.parquet")
    copy = OnDisk(folder=tmp_path / f"ws{mark}1", memory_limit="256MB", ids={}, rows=0,
                  ranges=((None, None),))
    with pytest.raises(ValueError, match="pattern"):
        connect(copy)


def _write(folder: Path, name: str, part: int, keys: list[str | None]) -> None:
    schema = copy_schema(name)
    table = pa.table({f.name: pa.nulls(len(keys), f.type) for f in schema}, schema=schema)
    table = table.set_column(0, "person_key", pa.array(keys, pa.string()))
    where = folder / PARQUET_COPY / name / f"range={part}"
    where.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, where / "part-00000.parquet")


def _hand_made(folder: Path) -> OnDisk:
    """Three ranges; range 0's file also holds a stray row keyed inside range 1, which only a
    read of range 0's file can see."""
    for part, keys in enumerate([[None, "P0a", "P0b", "P1z"], ["P1a", "P1b"], ["P2a"]]):
        _write(folder, "apc", part, keys)
        _write(folder, "gp_patients", part, [k for k in keys if k not in (None, "P1z")])
    return OnDisk(folder=folder, memory_limit="256MB", ids={}, rows=10,
                  ranges=((None, "P1"), ("P1", "P2"), ("P2", None)))


def _keys(copy: OnDisk, view: str = "v_apc") -> list[str | None]:
    con = connect(copy)
    try:
        return [r[0] for r in con.execute(
            f"SELECT person_key FROM {view} ORDER BY person_key NULLS FIRST").fetchall()]
    finally:
        con.close()


def test_a_run_of_the_copy_s_ranges_reads_their_files_only(tmp_path: Path) -> None:
    copy = _hand_made(tmp_path)
    assert _keys(copy.part("P1", None)) == ["P1a", "P1b", "P2a"]  # not range 0's stray
    assert _keys(copy.part(None, "P2")) == [None, "P0a", "P0b", "P1a", "P1b", "P1z"]
    assert _keys(copy.part("P1", "P2")) == ["P1a", "P1b"]
    # a range that is no run of the copy's reads every file, and keeps its persons' rows
    assert _keys(copy.part("P1", "P1zz")) == ["P1a", "P1b", "P1z"]
    # every task still sees every GP registration
    assert _keys(copy.part("P1", "P2"), "whole_gp_patients") == ["P0a", "P0b", "P1a", "P1b",
                                                                  "P2a"]


def test_ranges_cut_over_a_parquet_copy_are_runs_of_its_own(tmp_path: Path) -> None:
    copy = _hand_made(tmp_path)
    starts = {low for low, _ in copy.ranges or ()}
    for size in (1, 2, 3, 100):
        ranges = person_ranges(copy, size)
        assert all(low in starts for low, _ in ranges), size
        assert ranges[0][0] is None and ranges[-1][1] is None
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert person_ranges(copy, 1) == list(copy.ranges or ())
    # six persons: every 2nd key from P1a starts a range, moved to the copy's next start
    assert person_ranges(copy, 2) == [(None, "P2"), ("P2", None)]
    assert person_ranges(copy, 100) == [(None, None)]
