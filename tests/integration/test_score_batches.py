"""Scoring a batch of persons at a time (issue #12: no whole-population feature table in
memory): the run must not depend on the batch size, down to batches that split every tier,
nor on whether the features are read from frames or from the on-disk copy."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from factories import bench_score
from stratify.features import connect
from stratify.scoring import score_connected
from stratify.sources import extract_ids

AT = dt.date(2025, 4, 1)


def test_scores_do_not_depend_on_the_batch_size() -> None:
    sources = bench_score().make_sources(900, seed=8)
    ids = extract_ids(sources)
    said: list[str] = []
    whole = score_connected(connect(sources), ids, AT, seed=0, batch=10**9,
                            progress=said.append)
    _told_training_and_every_person(said, len(whole.scores))
    assert whole.bundle is not None and len(whole.scores) > 600
    previous = whole.scores[["person_key", "probability", "tier"]].iloc[::2]
    for size in (97,):
        batched = score_connected(connect(sources), ids, AT, seed=0, bundle=whole.bundle,
                                  batch=size)
        pd.testing.assert_frame_equal(batched.scores, whole.scores)
        pd.testing.assert_frame_equal(batched.candidates, whole.candidates)
        assert batched.thresholds == whole.thresholds
        assert batched.metrics["tiers"] == whole.metrics["tiers"]
        assert batched.metrics["reasons_method"] == whole.metrics["reasons_method"]
    # a previous run's scores line up with each person however the persons are batched
    again = score_connected(connect(sources), ids, AT, seed=0, bundle=whole.bundle,
                            previous=previous, batch=211)
    later = again.scores.set_index("person_key")
    before = previous.set_index("person_key")
    assert later["previous_probability"].notna().sum() == len(before)
    assert (later.loc[before.index, "previous_probability"] == before["probability"]).all()
    assert later["previous_probability"].isna().sum() == len(later) - len(before)
    with pytest.raises(ValueError, match="batch must be 1 or more"):
        score_connected(connect(sources), ids, AT, bundle=whole.bundle, batch=0)
    # many batches: progress tells about a tenth of the persons at a time, not every batch
    said.clear()
    small = score_connected(connect(sources), ids, AT, seed=0, bundle=whole.bundle, batch=7,
                            progress=said.append)
    pd.testing.assert_frame_equal(small.scores, whole.scores)
    assert not any(line.startswith("training") for line in said)  # a given model: no training
    for step in ("predicted", "tiered and explained"):
        done = [int(line.split()[-4].replace(",", "")) for line in said
                if line.startswith(step + " ")]
        assert 8 <= len(done) <= 10 and done == sorted(done)
        assert done[-1] == len(whole.scores) and done[0] < len(whole.scores) / 9


def _told_training_and_every_person(said: list[str], persons: int) -> None:
    """Training's steps, in order, then the features and all `persons` predicted and
    explained (one batch: one line each)."""
    steps = ["training: features at 2024-04-01", "training: features at 2023-04-01",
             "training: choosing among", "training: ", "model trained in",
             f"features at 2025-04-01 of {persons:,} persons",
             f"predicted {persons:,} of {persons:,} persons",
             f"tiered and explained {persons:,} of {persons:,} persons"]
    assert len(said) == len(steps)
    for line, step in zip(said, steps, strict=True):
        assert line.startswith(step), (line, step)
