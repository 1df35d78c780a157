"""The views `stratify.features.connect` makes over a Parquet copy (the Spark engine's linked
copy, `OnDisk.ranges`): typed like the DuckDB copy's even with no file, and never over a path
DuckDB would read as a pattern."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stratify.features import PARQUET_COPY, OnDisk, connect, copy_schema
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
