"""Pseudonyms held as fixed-width bytes ordered by a hash (`linkage.pseudonym_table`, the
register's `index_matching.Register`): membership and lookup are exact, whatever the lengths,
nulls are never found, and an empty table holds nobody."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from linkage.index_matching import Register
from linkage.pseudonym_table import PseudonymTable, fixed_width


def _register(ids: list[str]) -> Register:
    return Register(fixed_width(pc.unique(pa.array(ids, pa.string())).cast(pa.binary())))


def test_membership_is_exact_for_equal_and_unequal_lengths() -> None:
    rng = np.random.default_rng(5)
    ids = [f"{v:064x}" for v in rng.integers(0, 2**62, 300)]
    register = _register(ids[:200] + ids[:50])  # repeats made distinct
    assert len(register) == 200 and register.ids.dtype == np.dtype("S64")
    asked = pd.Series(ids[150:300] + [ids[0] + "0", ids[1][:-1]], dtype=object)
    found = register.contains(asked)
    assert found.tolist() == [True] * 50 + [False] * 100 + [False, False]
    mixed = _register(["b", "abc", "ab", "c"])  # unequal lengths: padded, still exact
    assert mixed.contains(pd.Series(["ab", "a", "abc", "abcd", "c", "d"])).tolist() == [
        True, False, True, False, True, False]
    eight = _register(["abcdefgh", "b"])  # a value longer than any held is not cut to fit
    assert eight.contains(pd.Series(["abcdefghij", "abcdefgh"])).tolist() == [False, True]
    sliced = pa.array(ids[:10]).slice(3)  # an offset array is read from its own start
    assert fixed_width(sliced.cast(pa.binary())).tolist() == [i.encode() for i in ids[3:10]]


def test_an_empty_register_holds_nobody() -> None:
    empty = Register(np.zeros(0, dtype="S1"))
    assert len(empty) == 0
    assert empty.contains(pd.Series(["a", "b"])).tolist() == [False, False]


def test_pseudonyms_sharing_a_hash_are_told_apart_by_their_bytes(monkeypatch) -> None:
    """The hash only narrows the search: with pseudonyms hashed alike (as two could be by
    chance), membership is still decided on the bytes."""
    from linkage import pseudonym_table

    monkeypatch.setattr(pseudonym_table, "_hashed", lambda values: np.array(
        [len(v) % 2 for v in values.tolist()], dtype=np.uint64))
    register = _register(["aa", "bb", "cc", "ddd", "eee"])
    assert register.longest_run == 3
    asked = pd.Series(["cc", "ab", "eee", "dd", "aa", "fff"])
    assert register.contains(asked).tolist() == [True, False, True, False, True, False]


def test_lookup_gives_each_pseudonyms_value_and_none_for_the_absent_and_nulls() -> None:
    table = PseudonymTable.from_arrow(pa.array(["p1", "p22", "p333"]),
                                      pa.array(["Pa", "Pbb", "Pccc"]))
    asked = pd.Series(["p22", None, "p4", "p1", "p22"], dtype=object)
    assert table.lookup(asked).tolist() == ["Pbb", None, None, "Pa", "Pbb"]
    assert table.lookup(pd.Series([None, None], dtype=object)).tolist() == [None, None]
    assert table.contains(pd.Series(["p333", None], dtype="string[pyarrow]")).tolist() == [
        True, False]
    with pytest.raises(ValueError, match="no null"):
        PseudonymTable.from_arrow(pa.array(["p1", None]))


def test_a_pseudonyms_hash_does_not_depend_on_the_batch_it_comes_in() -> None:
    """Buckets of persons are chosen by this hash batch by batch: a batch holding a longer
    pseudonym (wider padding) must not move a person to another bucket."""
    from linkage.pseudonym_table import pseudonym_hashes

    alone = pseudonym_hashes(pa.array(["abc", "abcdefghij"]))
    beside_longer = pseudonym_hashes(pa.array(["x" * 40, "abc", "abcdefghij"]))
    assert alone.tolist() == beside_longer[1:].tolist()
    assert len(set(pseudonym_hashes(pa.array(["a", "b", "ab", "ba"])).tolist())) == 4
