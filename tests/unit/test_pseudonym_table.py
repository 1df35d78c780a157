"""Attacks on `linkage.pseudonym_table.PseudonymTable` and on `person_index.KeptKeys` (each
pseudonym's person key kept from the map across updates): against a plain dict, on
pseudonyms and keys of unequal lengths, non-ASCII text, the empty string, nulls, chunked
Arrow input, an empty table, and a pseudonym met again in a later batch with another key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from linkage import pseudonym_table
from linkage.person_index import KeptKeys
from linkage.pseudonym_table import PseudonymTable, dictionary_of


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


@pytest.mark.parametrize("one_array_bytes", [1 << 30, 0])
def test_pseudonyms_in_chunks_are_coded_as_in_one_array(monkeypatch, one_array_bytes):
    """A bucket's pseudonyms come in a chunk a batch read: their codes are those of one
    array (the order of first appearance, nulls left null), whether the chunks are combined
    first or, past `ONE_ARRAY_BYTES`, encoded one by one and their dictionaries unified."""
    monkeypatch.setattr(pseudonym_table, "ONE_ARRAY_BYTES", one_array_bytes)
    rng = np.random.default_rng(3)
    ids = [None if i % 17 == 0 else f"p{int(v):05d}" for i, v in
           enumerate(rng.integers(0, 400, 3_000))]
    whole = pa.array(ids, pa.string())
    chunked = pa.chunked_array([whole.slice(a, 250) for a in range(0, len(ids), 250)])
    one, many = dictionary_of(whole), dictionary_of(chunked)
    assert isinstance(many, pa.DictionaryArray)
    assert many.indices.equals(one.indices) and many.dictionary.equals(one.dictionary)
    assert many.dictionary.to_pylist() == list(dict.fromkeys(v for v in ids if v is not None))
    assert many.indices.null_count == sum(v is None for v in ids)
