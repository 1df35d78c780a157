"""Landing's faster building blocks against the plain forms they replace."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import secrets

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from governance.keys import Key
from linkage.landing.land import SealedPersons
from linkage.landing.pseudonymise import HashMemo, fixed_width_text, person_hashes


def test_fixed_width_text_equals_the_value_by_value_array():
    raw = secrets.token_bytes(16 * 37)
    hexed = binascii.hexlify(raw)
    expected = [hexed[i:i + 32].decode() for i in range(0, len(hexed), 32)]
    from_bytes = fixed_width_text(hexed, 32)
    from_numpy = fixed_width_text(np.frombuffer(hexed, dtype="S32"), 32)
    for array in (from_bytes, from_numpy):
        array.validate(full=True)
        assert array.type == pa.string()
        assert array.to_pylist() == expected
    assert fixed_width_text(b"", 10).to_pylist() == []
    assert fixed_width_text(np.zeros(0, dtype="S64"), 64).to_pylist() == []


def test_fixed_width_text_of_a_strided_view_copies_it_into_place():
    digits = np.array([[b"1"] * 10, [b"2"] * 10, [b"3"] * 10]).view(np.uint8)
    every_other = digits[::2].view("S10").ravel()  # rows 0 and 2: not contiguous
    assert fixed_width_text(every_other, 10).to_pylist() == ["1" * 10, "3" * 10]


def test_sealed_persons_knows_each_number_once_in_any_order():
    sealed = SealedPersons()
    first = np.array([9_990_000_018, 9_990_000_026, 9_990_000_034], dtype=np.int64)
    assert sealed.unknown(first).all()
    sealed.add(first)
    later = np.array([9_990_000_042, 9_990_000_026, 9_990_000_000, 9_990_000_034])
    assert sealed.unknown(later).tolist() == [True, False, True, False]
    sealed.add(later[sealed.unknown(later)])
    everyone = np.concatenate([first, later])
    assert not sealed.unknown(everyone).any()
    assert sealed.unknown(np.array([9_999_999_999])).tolist() == [True]


def test_sealed_persons_forgets_everyone_past_its_limit():
    sealed = SealedPersons(limit=4)
    sealed.add(np.array([1, 2, 3], dtype=np.int64))
    sealed.add(np.array([4, 5], dtype=np.int64))  # 5 > 4: starts again with these
    assert sealed.unknown(np.array([1, 2, 3, 4, 5])).tolist() == [True, True, True, False, False]


def test_person_hashes_are_the_hmac_of_each_number_across_batches_with_a_memo():
    key = Key("k1", secrets.token_bytes(32))

    def reference(number: str) -> str:
        return hmac.new(key.secret, b"nhs_number\x00" + number.encode(), hashlib.sha256).hexdigest()

    first = ["9990000018", None, "9990000026", "9990000018", "9990000034"]
    second = ["9990000042", "9990000026", None, "9990000042", "9990000000"]
    memo = HashMemo()
    for batch in (first, second):
        hashed = person_hashes(pa.array(batch, pa.string()), key, memo)
        rows = pc.take(hashed.digests, hashed.indices).to_pylist()
        assert rows == [None if n is None else reference(n) for n in batch]
        assert pc.take(hashed.values, hashed.indices).to_pylist() == batch
    # only numbers the memo lacked were hashed in the second batch
    assert sorted(hashed.values.filter(pa.array(hashed.new)).to_pylist()) == [
        "9990000000", "9990000042"]
