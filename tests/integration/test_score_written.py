"""Scores written a batch at a time (issue #12: `haven score` holds no whole population's
scores): the files `score_connected(out=...)` writes must read back as exactly the frames
the in-memory path returns, whatever the batch size, including batches whose previous tiers
are all missing (a column Arrow types as null in those parts and as text in the others),
and with the previous run read from its scores file a batch at a time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from factories import bench_score
from governance.layout import RunFiles
from stratify.features import connect
from stratify.scoring import load_run, save_run, score_connected
from stratify.sources import extract_ids

AT = dt.date(2025, 4, 1)


def test_written_scores_equal_the_in_memory_ones(tmp_path: Path) -> None:
    sources = bench_score().make_sources(900, seed=8)
    ids = extract_ids(sources)
    whole = score_connected(connect(sources), ids, AT, seed=0, batch=10**9)
    assert len(whole.scores) > 600 and whole.written is None
    # a previous run of the first 150 persons only: later batches have no previous tier
    previous = whole.scores[["person_key", "probability", "tier"]].iloc[:150]
    # (the boosting model's probabilities can differ in the last bits between batch sizes:
    # the written run is compared with the in-memory run of the same batches, bit for bit)
    expected = score_connected(connect(sources), ids, AT, seed=0, bundle=whole.bundle,
                               previous=previous, batch=97)
    # written a batch at a time, the previous run given as its scores file (read a batch at a
    # time in DuckDB; a key twice in it counts once, its first row, as drop_duplicates keeps)
    file = tmp_path / "previous.parquet"
    pd.concat([previous, previous.iloc[:5].assign(tier="high")]).to_parquet(file, index=False)
    out = tmp_path / "written"
    out.mkdir()
    written = score_connected(connect(sources), ids, AT, seed=0, bundle=whole.bundle,
                              previous=file, batch=97, out=out)
    assert written.written == out and written.scores.empty
    assert written.persons == len(expected.scores) == len(whole.scores)
    files = RunFiles(out)
    pd.testing.assert_frame_equal(pd.read_parquet(files.scores), expected.scores,
                                  check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(files.candidates), expected.candidates,
                                  check_exact=True)
    assert expected.scores["previous_tier"].iloc[194:].isna().all()  # null-typed parts
    assert sorted(p.name for p in out.iterdir()) == ["candidates.parquet", "scores.parquet"]
    assert written.thresholds == expected.thresholds
    assert list(written.metrics["tiers"].items()) == list(expected.metrics["tiers"].items())
    assert written.metrics["mean_probability"] == expected.metrics["mean_probability"]
    assert written.metrics["reasons_method"] == expected.metrics["reasons_method"]
    # an empty previous file: no previous row, as no previous run
    empty = tmp_path / "empty.parquet"
    previous.iloc[:0].to_parquet(empty, index=False)
    nothing = score_connected(connect(sources), ids, AT, seed=0, bundle=whole.bundle,
                              previous=empty, batch=10**9)
    pd.testing.assert_frame_equal(nothing.scores, whole.scores, check_exact=True)
    # saving moves the written files into the run's folder; it reads back as the whole run
    saved = save_run(written, tmp_path / "run")
    assert not files.scores.exists() and not files.candidates.exists()
    again = load_run(saved)
    pd.testing.assert_frame_equal(again.scores, expected.scores, check_exact=True)
    pd.testing.assert_frame_equal(again.candidates, expected.candidates, check_exact=True)
    assert again.metrics["persons"] == len(expected.scores)
