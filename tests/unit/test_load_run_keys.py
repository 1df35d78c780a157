"""load_run reads a whole population's person keys once (issue #12): when the candidates list
the scores' persons in the same order, their keys are the scores' own text objects; in any
other order they are kept as read. Either way the frames hold the saved values."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from stratify.scoring import ScoreRun, load_run, save_run


def _run(candidate_order: np.ndarray) -> ScoreRun:
    n = 30
    keys = [f"P{i:020x}" for i in range(n)]
    p = np.linspace(0.01, 0.6, n)
    scores = pd.DataFrame({"person_key": keys, "probability": p, "tier": "low"})
    candidates = pd.DataFrame({"person_key": keys, "logistic": p}).iloc[candidate_order]
    return ScoreRun(run_id="score-keys", at=dt.date(2026, 4, 1), model_version="v",
                    model="logistic", seed=0, thresholds={}, extract_ids={}, metrics={},
                    scores=scores, candidates=candidates.reset_index(drop=True))


def test_candidates_share_the_scores_keys_only_in_the_same_order(tmp_path: Path) -> None:
    same = _run(np.arange(30))
    loaded = load_run(save_run(same, tmp_path / "same"))
    pd.testing.assert_frame_equal(loaded.scores, same.scores)
    pd.testing.assert_frame_equal(loaded.candidates, same.candidates)
    assert all(a is b for a, b in zip(loaded.scores["person_key"],
                                      loaded.candidates["person_key"], strict=True))
    shuffled = _run(np.random.default_rng(3).permutation(30))
    again = load_run(save_run(shuffled, tmp_path / "shuffled"))
    pd.testing.assert_frame_equal(again.candidates, shuffled.candidates)
    assert not all(a is b for a, b in zip(again.scores["person_key"],
                                          again.candidates["person_key"], strict=True))
    fewer = load_run(tmp_path / "same", columns=["probability"])  # no keys read: none shared
    pd.testing.assert_frame_equal(fewer.candidates, same.candidates)


def test_files_read_a_column_at_a_time_equal_pandas_reading_them(tmp_path: Path) -> None:
    """`load_run` reads a column at a time (issue #12); what it gives equals
    `pandas.read_parquet`'s, for a run as `save_run` writes it and for files it does not
    write: a nullable integer column, no column asked for, a stored pandas index."""
    run = _run(np.arange(30))
    run.scores["tier_change"] = pd.array([None, *range(29)], dtype="Int64")
    folder = save_run(run, tmp_path / "run")
    scores = folder / "scores.parquet"
    loaded = load_run(folder)
    pd.testing.assert_frame_equal(loaded.scores, pd.read_parquet(scores))
    assert str(loaded.scores["tier_change"].dtype) == "Int64"
    assert load_run(folder, columns=[]).scores.shape == (30, 0)
    run.scores.set_index("person_key").to_parquet(scores)  # an index stored as a column
    pd.testing.assert_frame_equal(load_run(folder).scores, pd.read_parquet(scores))
