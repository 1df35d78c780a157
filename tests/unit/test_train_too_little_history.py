"""A date the data cannot train a model for is refused by name (the training year, how many
persons and emergency admissions it holds), not with the model library's error: a user's
`haven score --at` before the history starts, or with no admission in the year before."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from factories import bench_score
from stratify.features import connect
from stratify.train import TooLittleHistory, train


@pytest.fixture(scope="module")
def sources() -> dict[str, pd.DataFrame]:
    return bench_score().make_sources(300, seed=3)


def test_a_date_before_the_history_is_refused_by_name(sources) -> None:
    con = connect(sources)
    try:
        with pytest.raises(TooLittleHistory, match=r"on 1989-01-01 the data hold [\d,]+ "
                                                    r"persons alive and registered, 0 of them"):
            train(con, dt.date(1990, 1, 1))
    finally:
        con.close()


def test_a_year_without_emergency_admissions_is_refused_by_name(sources) -> None:
    quiet = {**sources, "apc": sources["apc"].iloc[:0]}
    con = connect(quiet)
    try:
        with pytest.raises(TooLittleHistory, match="0 of them with an emergency admission"):
            train(con, dt.date(2025, 4, 1))
    finally:
        con.close()
