"""Training drops a date's feature table once its rows are fetched (issue #12): DuckDB does
not hold a population's features while the models are fitted; the next feature table is
made afresh, so the rows fetched do not change."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from factories import bench_score
from stratify.catalogue import NAMES
from stratify.features import WORK_TABLES, connect
from stratify.train import _training_rows

T1 = dt.date(2024, 4, 1)


def _tables(con) -> set[str]:
    return {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def test_the_feature_tables_are_gone_once_the_training_rows_are_fetched() -> None:
    sources = bench_score().make_sources(400, seed=3)
    con = connect(sources)
    try:
        names = list(NAMES)
        X, y, persons = _training_rows(con, T1, None, names, 10**9, 0, 4)  # everyone
        assert persons == len(X) > 100 and not _tables(con) & {*WORK_TABLES, "features_wanted"}
        sample, _, _ = _training_rows(con, T1, None, names, 50, 0, 4)  # a sample
        assert len(sample) == 50 and not _tables(con) & {*WORK_TABLES, "features_wanted"}
        again, y_again, _ = _training_rows(con, T1, None, names, 10**9, 0, 4)
        pd.testing.assert_frame_equal(again, X)
        assert (y_again == y).all()
    finally:
        con.close()


def test_scoring_lets_duckdb_hand_freed_memory_back(monkeypatch) -> None:
    """The dropped tables' memory goes back to the system only with DuckDB's allocator
    background threads on: they are on while training runs inside scoring."""
    from stratify import scoring

    seen: list[object] = []

    def training(con, *args, **kwargs):
        seen.append(con.execute(
            "SELECT current_setting('allocator_background_threads')").fetchone()[0])
        raise RuntimeError("stop after training")

    monkeypatch.setattr(scoring, "train", training)
    sources = bench_score().make_sources(50, seed=3)
    with pytest.raises(RuntimeError, match="stop after training"):
        scoring.score(sources, T1)
    assert seen == [True]
