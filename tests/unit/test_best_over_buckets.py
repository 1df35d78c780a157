"""A match's buckets folded as they come (`linkage.bucket_best`) give the frame the code before
gave from a list of every bucket's best pairs, to the bit; and the embedded engine runs a
bucket's task only once the one before is folded, so one bucket's results are held at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from linkage import index_matcher
from linkage.bucket_best import BestOverBuckets
from linkage.index_matcher import _banded, in_turn, match_profiles


def _combined_before(best: list[pd.DataFrame], coverage: float, several: bool) -> pd.DataFrame:
    """The code before, written out: every bucket's parts in one frame, then combined."""
    found = pd.concat(best, ignore_index=True)
    if several:
        total = found.groupby("query", sort=False)["total"].transform("sum").to_numpy()
        found = found.assign(total=total).sort_values(
            ["query", "weight", "profile"], ascending=[True, False, True], kind="stable")
        found = found.drop_duplicates("query", keep="first")
    factor, total = found["factor"].to_numpy(), found["total"].to_numpy()
    found["probability"] = coverage * factor / (coverage * total + (1 - coverage))
    band = np.where(found["probability"] >= index_matcher.UPPER, "link",
                    np.where(found["probability"] >= index_matcher.LOWER, "review", "none"))
    out = found.assign(band=band)
    return out[out["band"] != "none"].drop(columns=["person", "factor", "total"]).reset_index(
        drop=True)


def _parts(rng: np.random.Generator, buckets: int, queries: int) -> list[list[pd.DataFrame]]:
    """Each bucket's parts as `best_in_part` makes them: a query at most once a bucket, in
    query order within a part; some queries in no bucket, weights tied across buckets, and
    evidence totals whose sum depends on how it is added (1 and a run of 1e-16s)."""
    out = []
    for bucket in range(buckets):
        present = np.flatnonzero(rng.random(queries) < 0.7)
        weight = rng.choice([-3.0, 2.5, 2.5, 7.0, 11.25, 16.0], len(present))
        weight[present % 5 == 0] = 7.0  # the same best weight in every bucket: a tie
        # profile positions: a bucket's own, later buckets lower for some (ties go lowest)
        profile = (buckets - bucket) * 10_000 + present * 3 + rng.integers(0, 3, len(present))
        factor = np.exp2(np.clip(weight, -60, 60)) / 100
        total = factor + rng.choice([0.0, 1e-16, 0.01, 0.3], len(present))
        total[present % 7 == 0] = 1.0 if bucket == 0 else 1e-16
        frame = pd.DataFrame({
            "query": present.astype(np.int64), "profile": profile.astype(np.int64),
            "weight": weight, "probability": rng.random(len(present)),
            "cmp_surname": rng.integers(0, 3, len(present)).astype(np.int8),
            "cmp_dob": rng.integers(0, 4, len(present)).astype(np.int8),
            "person": rng.integers(0, 50, len(present)).astype(np.int64),
            "factor": factor, "total": total})
        cut = int(rng.integers(0, len(frame) + 1))  # a bucket's query rows in two parts
        out.append([p for p in (frame.iloc[:cut], frame.iloc[cut:]) if len(p)])
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("buckets", [1, 2, 9])
def test_folding_the_buckets_gives_the_frame_of_combining_them_all(seed: int,
                                                                    buckets: int) -> None:
    rng = np.random.default_rng(seed)
    parts = _parts(rng, buckets, queries=400)
    coverage = [0.95, 0.999, 0.5][seed % 3]
    folded = BestOverBuckets(several=buckets > 1)
    for bucket in parts:
        for part in bucket:
            folded.add(part)
    found = folded.found()
    assert found is not None
    got = _banded(found, coverage)
    want = _combined_before([p for bucket in parts for p in bucket], coverage, buckets > 1)
    assert len(want) > 50 and set(want["band"]) == {"link", "review"}
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_the_summed_evidence_is_pandas_own_sum_not_a_running_one() -> None:
    """1 then a run of 1e-16s: added one at a time they vanish; pandas' sum keeps them. A fold
    that kept a running total would differ from the frame of every bucket in the last bits."""
    buckets = 12
    parts = [[pd.DataFrame({"query": np.array([0], dtype=np.int64),
                            "profile": np.array([b], dtype=np.int64), "weight": [1.0],
                            "probability": [0.5], "person": np.array([0], dtype=np.int64),
                            "factor": [1.0], "total": [1.0 if b == 0 else 1e-16]})]
             for b in range(buckets)]
    folded = BestOverBuckets(several=True)
    for bucket in parts:
        folded.add(bucket[0])
    found = folded.found()
    assert found is not None
    running = 0.0
    for b in range(buckets):
        running += 1.0 if b == 0 else 1e-16
    assert running == 1.0  # the running total lost the small ones
    want = _combined_before([bucket[0] for bucket in parts], 0.95, several=True)
    assert found["total"].iloc[0] != running
    pd.testing.assert_frame_equal(_banded(found, 0.95), want, check_exact=True)


def test_no_pair_in_any_bucket_is_none() -> None:
    assert BestOverBuckets(several=True).found() is None
    assert BestOverBuckets(several=False).found() is None


def test_the_embedded_engine_runs_a_bucket_after_the_last_is_folded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`in_turn` is lazy: bucket i+1's task starts only after bucket i's parts are folded, so
    the matcher never holds two buckets' results (a list of them did)."""
    from unit.test_bucketed_matching import _store, _world

    profiles, query, examples = _world(seed=5)
    store = _store(profiles, tmp_path / "b", bucket_rows=40)
    folds: list[int] = []  # folds so far
    started: list[tuple[int, int]] = []  # per scoring task: (folds, buckets with pairs before)
    given: list[int] = []
    real_add = BestOverBuckets.add

    def add(self: BestOverBuckets, part: pd.DataFrame) -> None:
        folds.append(1)
        real_add(self, part)

    def recording(task, count):  # noqa: ANN001, ANN202 - a BucketMap
        scoring = task.func.__name__ == "_best_in_bucket"

        def noted(index: int) -> list[pd.DataFrame]:
            if scoring:
                started.append((len(folds), sum(given)))
            result = task(index)
            if scoring:
                given.append(1 if result else 0)
            return result

        return in_turn(noted, count)

    want = match_profiles(query, store, 0.95, examples)
    monkeypatch.setattr(BestOverBuckets, "add", add)
    got = match_profiles(query, store, 0.95, examples, recording)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert len(started) == len(store.buckets) > 2 and min(given) >= 1
    # each bucket's task starts once every bucket before it is folded
    assert all(folded == before for folded, before in started), started


def _best_in_part_before(scored: pd.DataFrame, persons: int) -> pd.DataFrame:
    """`best_in_part` as it was: pandas' sort and duplicate search on the frame of pairs."""
    scored = scored.sort_values(["query", "weight"], ascending=[True, False], kind="stable")
    per_person = scored.drop_duplicates(["query", "person"]).copy()
    per_person["factor"] = np.exp2(np.clip(per_person["weight"].to_numpy(), -60, 60)) / persons
    per_person["total"] = per_person.groupby("query")["factor"].transform("sum").to_numpy()
    return per_person.drop_duplicates("query", keep="first")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_best_in_part_is_pandas_sort_and_drop(seed: int) -> None:
    """The numpy ordering gives the rows, labels, order and sums of pandas' stable sort and
    duplicate search: weights tied within a query (rounded to few values) and across
    persons, several pairs per (query, person), persons coded -1, pairs in any order."""
    from linkage.bucket_best import best_in_part

    rng = np.random.default_rng(seed)
    n = 5000
    scored = pd.DataFrame({
        "query": rng.integers(0, 400, n), "profile": rng.permutation(n),
        "weight": np.round(rng.normal(0, 8, n), 0 if seed % 2 else 1),
        "probability": rng.random(n), "cmp_name": rng.integers(0, 3, n).astype(np.int8),
        "person": rng.integers(-1, 60, n)})
    if seed == 3:  # as the bucket gives them: by query, a chunk's pairs together
        scored = scored.sort_values("query", kind="stable").reset_index(drop=True)
    got = best_in_part(scored, 1234)
    want = _best_in_part_before(scored, 1234)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert len(want) == scored["query"].nunique()
    assert (scored.groupby(["query", "weight"]).size() > 1).any()  # ties were there


def test_best_in_part_with_a_nan_weight_or_nothing_is_pandas_too() -> None:
    from linkage.bucket_best import best_in_part

    scored = pd.DataFrame({"query": [0, 0, 1, 1], "profile": [3, 2, 1, 0],
                           "weight": [np.nan, 1.0, 2.0, 2.0], "probability": 0.5,
                           "person": [0, 1, 1, 2]})
    pd.testing.assert_frame_equal(best_in_part(scored, 5), _best_in_part_before(scored, 5))
    assert best_in_part(scored, 5)["profile"].tolist() == [2, 1]
    empty = scored.iloc[:0].reset_index(drop=True)
    pd.testing.assert_frame_equal(best_in_part(empty, 5), _best_in_part_before(empty, 5))
