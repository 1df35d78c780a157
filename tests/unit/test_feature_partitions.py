"""Features worked a person-hash partition at a time equal the whole population's, cell for cell.

A large population's feature table is built one partition of persons at a time so DuckDB's
working set is bounded (issue #12); every feature is one person's own records, so nothing may
change. Checked on synthetic persons with every source, in memory and on disk, and on a
population with no GP registrations (other records stand in: a global choice that must not be
made per partition).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from stratify.catalogue import NAMES
from stratify.features import (
    COLUMNS,
    OnDisk,
    append_rows,
    cluster_by_person,
    connect,
    connect_on_disk,
    feature_table,
    fetch_features,
)
from stratify_fixtures import SynthData, synth_or_skip


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> SynthData:
    return synth_or_skip(tmp_path_factory, 1200, seed=5)


def _at(data: SynthData) -> dt.date:
    return dt.date.fromisoformat(data.meta.get("score_date", "2025-04-01"))


def _table(con, at: dt.date, partition_persons: int, lookback: int | None = None
           ) -> tuple[int, pd.DataFrame]:
    persons = feature_table(con, at, lookback, partition_persons=partition_persons)
    return persons, fetch_features(con, NAMES)


@pytest.mark.parametrize("lookback", [None, 24])
def test_partitioned_features_equal_the_whole_in_memory(synth_data: SynthData,
                                                       lookback: int | None) -> None:
    con = connect(synth_data.sources)
    try:
        persons, whole = _table(con, _at(synth_data), 10**9, lookback)
        parted_persons, parted = _table(con, _at(synth_data), 150, lookback)
    finally:
        con.close()
    assert persons == parted_persons > 600  # about eight partitions of 150
    assert whole.index.is_unique and len(whole) == persons
    pd.testing.assert_frame_equal(parted, whole)
    assert whole["emergency_admissions_24m"].sum() > 0  # features with something in them


def test_partitioned_features_equal_the_whole_on_disk(synth_data: SynthData,
                                                     tmp_path: Path) -> None:
    con = connect_on_disk(tmp_path, "256MB")
    try:
        for name, frame in synth_data.sources.items():
            append_rows(con, name, frame)
        persons, whole = _table(con, _at(synth_data), 10**9)
        _, parted = _table(con, _at(synth_data), 400)
    finally:
        con.close()
    assert len(whole) == persons
    pd.testing.assert_frame_equal(parted, whole)


def test_without_gp_registrations_every_partition_uses_other_records(synth_data: SynthData
                                                                     ) -> None:
    sources = {k: v for k, v in synth_data.sources.items() if k != "gp_patients"}
    con = connect(sources)
    try:
        persons, whole = _table(con, _at(synth_data), 10**9)
        _, parted = _table(con, _at(synth_data), 100)
    finally:
        con.close()
    assert persons > 100
    pd.testing.assert_frame_equal(parted, whole)


READER = """
import sys
from pathlib import Path
from stratify.features import OnDisk, connect
copy = OnDisk(folder=Path(sys.argv[1]), memory_limit="256MB", ids={}, rows=0,
              read_only=sys.argv[2] == "shared")
con = connect(copy)
print(con.execute("SELECT count(*) FROM v_gp_patients").fetchall()[0][0])
"""


def _open_elsewhere(folder: Path, how: str) -> subprocess.CompletedProcess[str]:
    """Open the copy in another process, as a Spark task does (`shared`) or as a writer."""
    return subprocess.run([sys.executable, "-c", READER, str(folder), how],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2],
                          check=False, timeout=120)


def test_a_shared_copy_lets_tasks_read_beside_each_other_and_keeps_writers_out(
        synth_data: SynthData, tmp_path: Path) -> None:
    con = connect_on_disk(tmp_path, "256MB")
    try:
        rows = append_rows(con, "gp_patients", synth_data.sources["gp_patients"])
    finally:
        con.close()
    copy = OnDisk(folder=tmp_path, memory_limit="256MB", ids={}, rows=rows).shared()
    reading = connect(copy)  # a task holding the copy open, read-only
    try:
        beside = _open_elsewhere(tmp_path, "shared")
        assert beside.returncode == 0, beside.stderr[-500:]
        assert int(beside.stdout.split()[-1]) == rows
        writer = _open_elsewhere(tmp_path, "write")
        assert writer.returncode != 0 and "lock" in writer.stderr.lower()
        with pytest.raises(duckdb.Error):  # and the task itself cannot change the copy
            reading.execute("CREATE TABLE main.planted (x INTEGER)")
    finally:
        reading.close()


def test_a_shared_copy_spills_past_its_memory_limit(tmp_path: Path) -> None:
    """A task's read-only connection spills to a folder of its own (made for it: DuckDB makes
    only the last level, and the writer that made `spill/` removed it when it closed)."""
    con = connect_on_disk(tmp_path, "64MB")
    try:
        con.execute("CREATE TABLE big AS SELECT (random() * 1e9)::BIGINT AS a, "
                    "repeat('x', 40) || range::VARCHAR AS b FROM range(2000000)")
    finally:
        con.close()
    assert not (tmp_path / "spill").exists()
    reader = connect_on_disk(tmp_path, "32MB", threads=1, create=False, read_only=True)
    try:
        folder = Path(reader.execute("SELECT current_setting('temp_directory')").fetchall()[0][0])
        assert folder.parent == tmp_path / "spill" and folder.name.startswith("reader-")
        reader.execute("CREATE TEMP TABLE sorted AS SELECT b, a FROM big ORDER BY b DESC")
        assert reader.execute("SELECT count(*) FROM sorted").fetchall()[0][0] == 2_000_000
    finally:
        reader.close()


def test_a_copy_clustered_by_person_holds_the_same_rows_in_key_order(synth_data: SynthData,
                                                                     tmp_path: Path) -> None:
    con = connect_on_disk(tmp_path, "256MB")
    try:
        for name, frame in synth_data.sources.items():
            append_rows(con, name, frame)
        before = {name: con.execute(f"SELECT * FROM v_{name}").df() for name in COLUMNS}
        _, whole = _table(con, _at(synth_data), 10**9)
    finally:
        con.close()
    cluster_by_person(tmp_path, "256MB")
    assert sorted(p.name for p in tmp_path.glob("*.duckdb")) == ["sources.duckdb"]
    con = connect_on_disk(tmp_path, "256MB", create=False)
    try:
        for name in COLUMNS:
            stored = con.execute(f"SELECT person_key FROM v_{name} ORDER BY rowid").df()
            keys = stored["person_key"]
            assert keys.isna().sum() == keys.isna()[:keys.isna().sum()].sum()  # nulls first
            present = keys.dropna().tolist()
            assert present == sorted(present), name  # stored in person-key order
            after = con.execute(f"SELECT * FROM v_{name}").df()
            columns = list(before[name].columns)
            pd.testing.assert_frame_equal(
                after.sort_values(columns, na_position="first").reset_index(drop=True),
                before[name].sort_values(columns, na_position="first").reset_index(drop=True),
                obj=name)
        assert sum(len(frame) for frame in before.values()) > 10_000
        _, clustered = _table(con, _at(synth_data), 10**9)
    finally:
        con.close()
    pd.testing.assert_frame_equal(clustered, whole)
