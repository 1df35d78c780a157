"""`linked_view._verdicts`: a row filter asked once per distinct (pseudonym, person key) of a
batch gives every row the verdict it would give that row alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from linkage.linked_view import _verdicts


def _batch() -> pa.Table:
    return pa.table({
        "extract_id": ["e1"] * 8, "row": list(range(8)),
        "person_id": ["a", "a", "a", None, None, "b", None, "b"],
        "person_key": ["P1", "P1", "P9", "P1", "P2", "P3", "P2", "P3"],
        "admission_date": pa.array([None] * 8, pa.date32()), "sender": ["S1"] * 8})


def test_each_row_gets_the_verdict_of_a_row_alike():
    asked: list[pd.DataFrame] = []

    def refuse(frame: pd.DataFrame, source: str) -> pd.Series:
        asked.append(frame)
        # refuse pseudonym "a" under key P9 only, and bare rows of key P2
        bad = ((frame["person_id"] == "a") & (frame["person_key"] == "P9")) | (
            frame["person_id"].isna() & (frame["person_key"] == "P2"))
        return ~bad

    table = _batch()
    got = _verdicts(table, refuse, "apc")
    whole = refuse(table.to_pandas(), "apc").to_numpy()  # asked about every row
    assert got.tolist() == whole.tolist() == [True, True, False, True, False, True, False,
                                              True]
    assert len(asked[0]) == 5  # (a,P1) (a,P9) (-,P1) (-,P2) (b,P3)
    assert set(asked[0].columns) == {"extract_id", "person_id", "person_key", "sender"}


def test_a_filter_reading_a_column_it_is_not_given_fails():
    def by_date(frame: pd.DataFrame, source: str) -> pd.Series:
        return frame["admission_date"].isna()

    with pytest.raises(KeyError):
        _verdicts(_batch(), by_date, "apc")


def test_a_source_without_pseudonyms_is_asked_by_person_key():
    table = _batch().drop_columns(["person_id"])
    seen: list[pd.DataFrame] = []

    def keep_all(frame: pd.DataFrame, source: str) -> pd.Series:
        seen.append(frame)
        return pd.Series(np.ones(len(frame), dtype=bool), index=frame.index)

    assert _verdicts(table, keep_all, "community").all()
    assert "person_id" not in seen[0] and len(seen[0]) == 4  # P1 P9 P2 P3
