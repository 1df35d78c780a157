"""A landing's memory of the record ids kept so far (`SeenIds`): exact, and in few runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from linkage.landing.seen_ids import SeenIds


def test_what_was_added_is_seen_and_nothing_else_in_few_runs() -> None:
    """Against a set, over 300 batches of repeated and fresh fingerprints: every lookup is
    exact, and the runs stay about log2 of what is held (merged as they fill, whatever the
    batches' sizes), each sorted."""
    rng = np.random.default_rng(3)
    seen, reference = SeenIds(), set()
    for batch in range(300):
        asked = np.sort(rng.integers(0, 20_000, int(rng.integers(0, 400))).astype(np.uint64))
        found = seen.seen(asked)
        assert found.tolist() == [int(x) in reference for x in asked], batch
        fresh = np.unique(asked[~found])
        seen.add(fresh)
        reference.update(int(x) for x in fresh)
        assert len(seen) == len(reference)
        assert len(seen.runs) <= math.log2(len(seen) + 1) + 1
        assert all((np.diff(run.astype(np.int64)) > 0).all() for run in seen.runs)


def test_fingerprints_of_another_type_are_refused() -> None:
    """int64 merged with uint64 would become floats, which compare wrongly: refused."""
    seen = SeenIds()
    seen.add(np.array([1, 2], dtype=np.uint64))
    with pytest.raises(TypeError, match="fingerprints of type int64"):
        seen.add(np.array([3], dtype=np.int64))
