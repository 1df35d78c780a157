"""An extract's persons file made a batch at a time out of core (linkage.persons_file): the
same pseudonyms, first keys, row counts and order as grouping every map row at once, and
nothing of the batches left beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linkage import persons_file
from linkage.persons_file import PERSONS_SCHEMA, PersonsOfFile, persons_part

ROWS = pa.schema([("person_id", pa.string()), ("person_key", pa.string())])  # the map's own


def _map_rows(n: int, seed: int) -> pd.DataFrame:
    """Map rows whose persons recur across batches, some rows unlinked (no pseudonym) and
    some of a person's rows without a key."""
    rng = np.random.default_rng(seed)
    person = rng.integers(0, n // 5, n)
    ids = pd.Series([f"id{p:05d}" for p in person], dtype=object)
    ids[rng.random(n) < 0.1] = None
    keys = pd.Series([f"P{p:05d}-{i}" for i, p in enumerate(person)], dtype=object)
    keys[rng.random(n) < 0.2] = None
    return pd.DataFrame({"person_id": ids, "person_key": keys})


def _whole(rows: pd.DataFrame) -> pd.DataFrame:
    """Every row grouped at once: what the persons file held before it was made out of core."""
    known = rows[rows["person_id"].notna()]
    return known.groupby("person_id", sort=False).agg(
        person_key=("person_key", "first"), rows=("person_key", "size")).reset_index()


@pytest.mark.parametrize("batch", [1, 7, 250, 10_000])
def test_persons_made_a_batch_at_a_time_equal_every_row_grouped_at_once(tmp_path: Path,
                                                                       batch: int):
    rows = _map_rows(3_000, seed=batch)
    made = PersonsOfFile(tmp_path, "e1")
    for start in range(0, len(rows), batch):
        made.add(persons_part(pa.Table.from_pandas(rows.iloc[start:start + batch],
                                                   schema=ROWS, preserve_index=False)))
    made.write(tmp_path / "persons.parquet")
    got = pq.read_table(tmp_path / "persons.parquet")
    assert got.schema.equals(PERSONS_SCHEMA)
    pd.testing.assert_frame_equal(got.to_pandas(), _whole(rows), check_dtype=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["persons.parquet"]


def test_an_extract_of_no_pseudonyms_has_an_empty_persons_file(tmp_path: Path):
    made = PersonsOfFile(tmp_path, "e1")
    made.add(persons_part(pa.table({"person_id": pa.array([None], pa.string()),
                                    "person_key": ["Pa"]})))
    made.write(tmp_path / "persons.parquet")
    got = pq.read_table(tmp_path / "persons.parquet")
    assert got.num_rows == 0 and got.schema.equals(PERSONS_SCHEMA)


def test_a_write_that_fails_leaves_no_batch_behind(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(persons_file, "PERSONS_MEMORY", "not a size")
    made = PersonsOfFile(tmp_path, "e1")
    made.add(persons_part(pa.Table.from_pandas(_map_rows(100, 1), schema=ROWS,
                                               preserve_index=False)))
    with pytest.raises(Exception):  # noqa: B017 (DuckDB's own error for the setting)
        made.write(tmp_path / "persons.parquet")
    made.close()
    assert list(tmp_path.iterdir()) == []
