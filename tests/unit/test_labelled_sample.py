"""Labelled linkage examples are capped per source (issue #12): past `most` rows a source
keeps a sample of its persons, all of a kept person's rows, the same whatever the batches."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from linkage.index_matching import labelled_sample


def _rows(source: str, persons: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    per_person = rng.integers(1, 5, persons)
    ids = [hashlib.sha256(f"{source}{i}".encode()).hexdigest() for i in range(persons)]
    person = np.repeat(np.array(ids, dtype=object), per_person)
    order = rng.permutation(len(person))
    return pa.table({"row": pa.array(np.arange(len(person))),
                     "person_id": pa.array(person[order], pa.string()),
                     "source": pa.array([source] * len(person), pa.string())})


def _batches(table: pa.Table, size: int) -> list[pa.Table]:
    return [table.slice(at, size) for at in range(0, table.num_rows, size)]


def _count(tables: list[pa.Table]) -> dict[str, int]:
    joined = pa.concat_tables(tables).to_pandas()
    return joined.groupby("person_id").size().to_dict()


def test_a_source_over_the_cap_keeps_a_sample_of_whole_persons() -> None:
    big, small = _rows("op", 3000, 1), _rows("ae", 200, 2)
    most = big.num_rows // 4
    kept = labelled_sample([*_batches(big, 700), *_batches(small, 90)], most)
    kept_big = [t for t in kept if t.num_rows and t["source"][0].as_py() == "op"]
    rows = sum(t.num_rows for t in kept_big)
    assert most // 2 <= rows <= most * 1.3  # bounded, and not a handful
    whole, sampled = _count(_batches(big, 700)), _count(kept_big)
    assert all(whole[p] == n for p, n in sampled.items())  # a kept person's rows, all of them
    # a source under the cap is untouched
    assert sum(t.num_rows for t in kept if t.num_rows and t["source"][0].as_py() == "ae") \
        == small.num_rows
    # the same persons however the rows come in batches
    again = labelled_sample(_batches(big, 333), most)
    assert _count(again) == sampled


def test_under_the_cap_nothing_is_dropped() -> None:
    table = _rows("op", 500, 3)
    kept = labelled_sample(_batches(table, 100), table.num_rows)
    assert sum(t.num_rows for t in kept) == table.num_rows
    assert labelled_sample([table.slice(0, 0)], 10)[0].num_rows == 0
