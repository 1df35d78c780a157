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
    whole = score_connected(connect(sources), ids, AT, seed=0, batch=10**9)
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
