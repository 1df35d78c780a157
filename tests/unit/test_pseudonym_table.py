"""Attacks on `linkage.pseudonym_table.PseudonymTable` and on `person_index.KeptKeys` (each
pseudonym's person key kept from the map across updates): against a plain dict, on
pseudonyms and keys of unequal lengths, non-ASCII text, the empty string, nulls, chunked
Arrow input, an empty table, and a pseudonym met again in a later batch with another key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from linkage.person_index import KeptKeys
from linkage.pseudonym_table import PseudonymTable


def _reference(ids: list[str], values: list[str], asked: list[str | None]) -> list[str | None]:
    held = dict(zip(ids, values, strict=True))
    return [held.get(a) if a is not None else None for a in asked]


def test_lookup_matches_a_dict_on_awkward_pseudonyms_and_values() -> None:
    rng = np.random.default_rng(2)
    ids = ["", "a", "ab", "abcdefgh", "abcdefghi", "é", "ée", "日本", "x" * 64, "x" * 63,
           *[f"{v:x}" for v in rng.integers(0, 2**40, 200)]]
    ids = list(dict.fromkeys(ids))  # distinct, first kept
    values = [f"K{i}" + ("ü" if i % 7 == 0 else "") * (i % 3) for i in range(len(ids))]
    table = PseudonymTable.from_arrow(pa.array(ids, pa.string()), pa.array(values, pa.string()))
    asked = [*ids[::-1], None, "b", "abcdefg", "abcdefghij", "e", "日", "x" * 65, "x" * 62,
             "a\u0301", "ab ", " ab"]
    want = _reference(ids, values, asked)
    assert table.lookup(pd.Series(asked, dtype=object)).tolist() == want
    chunked = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array(
        [asked[:5], asked[5:]], pa.string())))
    assert table.lookup(chunked).tolist() == want
    assert table.contains(pd.Series(asked, dtype=object)).tolist() == [w is not None
                                                                         for w in want]


def test_an_empty_table_with_values_finds_nothing() -> None:
    table = PseudonymTable.from_arrow(pa.array([], pa.string()), pa.array([], pa.string()))
    assert len(table) == 0
    assert table.lookup(pd.Series(["a", None, ""], dtype=object)).tolist() == [None] * 3
    assert table.lookup(pd.Series([], dtype=object)).tolist() == []


@pytest.mark.parametrize("as_arrow", [False, True])
def test_kept_keys_are_each_pseudonyms_first_key_across_batches(as_arrow: bool) -> None:
    """The map read a batch at a time: a pseudonym's key is its first row's, even when a
    later batch (or a later row of the same batch) gives it another; the same whether a
    batch comes as a frame or as an Arrow table (a persons file as read)."""
    rng = np.random.default_rng(9)
    persons = [f"{v:064x}" for v in rng.integers(0, 2**62, 60)] + ["é" * 3, ""]
    kept, reference = KeptKeys(), {}
    for batch in range(5):
        ids = rng.choice(np.array(persons + [None], dtype=object), 40)
        frame = pd.DataFrame({"person_id": ids,
                              "person_key": [f"k{batch}-{i}" for i in range(len(ids))]})
        kept.add(pa.Table.from_pandas(frame, preserve_index=False) if as_arrow else frame)
        for p, k in zip(frame["person_id"], frame["person_key"], strict=True):
            if p is not None:
                reference.setdefault(p, k)
    table = kept.freeze()
    assert table is not None and len(table) == len(reference)
    asked = pd.Series([*persons, None, "absent"], dtype=object)
    assert table.lookup(asked).tolist() == [reference.get(p) for p in persons] + [None, None]
    assert KeptKeys().freeze() is None  # a map without pseudonyms keeps no key
