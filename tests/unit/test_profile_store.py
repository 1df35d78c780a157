"""The register's profiles in buckets of persons (`linkage.profile_store`): positions are the
register's order, a person's profiles share a bucket, gathering returns rows in the order
asked, and a register less some profiles is numbered as if they had never been there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from linkage.profile_store import ProfileStore, ProfileWriter


def _profiles(n: int = 500, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "extract_id": np.where(rng.random(n) < 0.5, "e1", "e2"),
        "row": np.arange(n, dtype=np.int64),
        "person_id": [f"{p:064x}" for p in rng.integers(0, n // 3, n)],
        "lk_surname": rng.integers(1, 50, n),
    })


def _written(frame: pd.DataFrame, folder: Path, bucket_rows: int) -> ProfileStore:
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    writer = ProfileWriter(folder, len(frame), schema, bucket_rows=bucket_rows)
    for start in range(0, len(frame), 70):  # in batches that split persons
        part = frame.iloc[start:start + 70].drop(columns=["lk_surname"] if start == 140 else [])
        writer.add(pa.Table.from_pandas(part, preserve_index=False))
    return writer.close()


def test_buckets_hold_every_profile_once_each_person_in_one(tmp_path: Path) -> None:
    frame = _profiles()
    store = _written(frame, tmp_path, bucket_rows=100)
    assert len(store.buckets) == 5 and all(isinstance(b, Path) for b in store.buckets)
    assert store.n == len(frame) and store.persons == frame["person_id"].nunique()
    seen = []
    for positions, part in store.frames(["row", "person_id"]):
        assert (np.diff(positions) > 0).all()  # position order within a bucket
        assert (part["row"].to_numpy() == positions).all()  # position = register order
        seen.append(set(part["person_id"]))
        assert len(part) < len(frame)
    assert sum(len(s) for s in seen) == frame["person_id"].nunique()  # persons disjoint
    assert set().union(*seen) == set(frame["person_id"])
    # a batch without a column: its rows hold it null, the others keep theirs
    surname = store.whole(["lk_surname"])["lk_surname"]
    assert surname.isna().sum() == 70 and store.has_values("lk_surname")


def test_gather_and_without_keep_the_registers_order(tmp_path: Path) -> None:
    frame = _profiles()
    for store in (ProfileStore.from_frame(frame), _written(frame, tmp_path, bucket_rows=120)):
        asked = np.array([499, 3, 3, 250, 0])
        got = store.gather(asked, ["row", "person_id"])
        assert got["row"].tolist() == asked.tolist()
        assert got["person_id"].tolist() == frame["person_id"].iloc[asked].tolist()
        gone = np.array([0, 7, 8, 400])
        rest = store.without(gone)
        kept = frame.drop(index=gone).reset_index(drop=True)
        assert rest.n == len(kept) and rest.persons == kept["person_id"].nunique()
        assert rest.whole(["row"])["row"].tolist() == kept["row"].tolist()
        again = rest.without(np.array([0, 1]))  # positions of the view, not the register
        assert again.whole(["row"])["row"].tolist() == kept["row"].iloc[2:].tolist()
        for positions, part in rest.frames(["row"]):
            assert kept["row"].iloc[positions].tolist() == part["row"].tolist()


def test_a_filter_of_another_length_is_refused_naming_its_column(tmp_path: Path) -> None:
    """Bloom filters are held at the length the register's first rows give; a later one of
    another length is a clear error naming the column, not Arrow's."""
    schema = pa.schema([("person_id", pa.string()), ("lk_surname__bf", pa.binary(8))])
    writer = ProfileWriter(tmp_path, 10, schema)
    writer.add(pa.table({"person_id": ["a"], "lk_surname__bf": [b"12345678"]}))
    with pytest.raises(ValueError, match="lk_surname__bf"):
        writer.add(pa.table({"person_id": ["b"], "lk_surname__bf": [b"123"]}))
