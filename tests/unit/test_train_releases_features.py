"""Training's memory (issue #12): it drops a date's feature table once its rows are fetched
(DuckDB does not hold a population's features while the models are fitted; the next feature
table is made afresh, so the rows fetched do not change), and its sample's order is made a
batch of persons at a time (the same sample whatever the batch)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from factories import bench_score
from stratify.catalogue import NAMES
from stratify.features import WORK_TABLES, connect, feature_table, features_from
from stratify.outcomes import outcomes_from
from stratify.train import _sampled_rows, _training_rows, stable_order

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


def test_the_sample_does_not_depend_on_the_hashing_batch() -> None:
    """`_sampled_rows` makes the order a batch of persons at a time: any batch, down to one
    that splits the population unevenly, draws the same persons in the same order."""
    sources = bench_score().make_sources(400, seed=3)
    con = connect(sources)
    try:
        names = list(NAMES)
        persons = feature_table(con, T1)
        whole, y_whole = _sampled_rows(con, T1, names, 120, 0, 4, batch=10**9)
        for size in (37, persons - 1):
            part, y_part = _sampled_rows(con, T1, names, 120, 0, 4, batch=size)
            pd.testing.assert_frame_equal(part, whole)
            assert (y_part == y_whole).all() and y_part.dtype == y_whole.dtype
        everyone, y_all = _sampled_rows(con, T1, names, persons, 0, 4, batch=37)
        expected = features_from(con, T1)[names]
        outcome = outcomes_from(con, expected.index, T1)["emergency"].to_numpy()
        order = stable_order(expected, outcome)
        pd.testing.assert_frame_equal(everyone, expected.iloc[order])  # stable_order's own
        assert (y_all == outcome[order]).all()
    finally:
        con.close()
