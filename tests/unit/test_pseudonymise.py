"""The pseudonymisation boundary's building blocks, against their reference implementations."""

from __future__ import annotations

import secrets

import nhs_number
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.keys import Key
from linkage.landing.pseudonymise import generalise_postcode, keyed_hashes, keyed_record_ids
from linkage.landing.validate import nhs_checksum_ok

KEY = Key("k1", secrets.token_bytes(32))
OTHER = Key("k2", secrets.token_bytes(32))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="0123456789", min_size=9, max_size=11), max_size=40))
def test_vectorised_modulus_11_agrees_with_nhs_number_package(values):
    got = nhs_checksum_ok(pa.array(values, pa.string())).tolist()
    assert got == [len(v) == 10 and nhs_number.is_valid(v) for v in values]


def test_modulus_11_on_known_numbers():
    assert nhs_checksum_ok(pa.array(["9434765919", "9434765918", None, "94347659"])).tolist() \
        == [True, False, False, False]


def test_keyed_hashes_are_keyed_deterministic_and_null_preserving():
    values = pa.array(["9434765919", None, "9434765919", "9990001112"])
    first = keyed_hashes(values, KEY, domain="nhs_number").to_pylist()
    assert first[0] == first[2] and first[1] is None and first[0] != first[3]
    assert keyed_hashes(values, OTHER, domain="nhs_number").to_pylist()[0] != first[0]
    assert keyed_hashes(values, KEY, domain="other").to_pylist()[0] != first[0]
    memo: dict[str, str] = {}
    assert keyed_hashes(values, KEY, domain="nhs_number", memo=memo).to_pylist() == first
    assert len(memo) == 2


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(min_size=1, max_size=30)), max_size=30))
def test_record_ids_are_injective_and_keyed(ids):
    out = keyed_record_ids(pa.array(ids, pa.string()), KEY, "apc|RR8").to_pylist()
    assert [o is None for o in out] == [i is None for i in ids]
    pairs = {i: o for i, o in zip(ids, out, strict=True) if i is not None}
    assert len(set(pairs.values())) == len(pairs)
    assert all(o is None or (len(o) == 32 and set(o) <= set("0123456789abcdef") and o != i)
               for i, o in zip(ids, out, strict=True))
    other = keyed_record_ids(pa.array(ids, pa.string()), KEY, "apc|RAE").to_pylist()
    assert all(a != b for a, b in zip(out, other, strict=True) if a is not None)


def test_postcode_generalises_to_district_and_sector():
    district, sector = generalise_postcode(pa.array(["ls1 4ab", "SW1A1AA", "nonsense", None]))
    assert district.to_pylist() == ["LS1", "SW1A", None, None]
    assert sector.to_pylist() == ["LS1 4", "SW1A 1", None, None]
