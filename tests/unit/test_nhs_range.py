"""Synthetic NHS numbers beyond the 999 range: still never issued, valid, distinct; and a
population that fits in 999 gets exactly the numbers it always did."""

from __future__ import annotations

import nhs_number
import numpy as np
import pytest

from synth import nhs


def _by_check_digit(start: int) -> np.ndarray:
    """Valid prefixes of one million, the slow way (every prefix's own check digit)."""
    prefixes = start + np.arange(1_000_000, dtype=np.int64)
    return prefixes[nhs.check_digit(prefixes) != 10]


@pytest.mark.parametrize("start", [nhs.PREFIX, nhs.WIDER, nhs.WIDER + 5_000_000])
def test_valid_prefixes_are_those_whose_check_digit_is_usable(start):
    assert np.array_equal(nhs._valid_prefixes(start), _by_check_digit(start))


def test_capacity_is_the_999_range_and_990_to_998():
    in_999 = _by_check_digit(nhs.PREFIX).size
    assert in_999 == 909_091
    assert nhs.capacity() == nhs._valid_prefixes().size + nhs._valid_prefixes(
        nhs.WIDER, nhs.WIDER_SPAN).size
    assert 9_000_000 < nhs.capacity() < 9_100_000


def test_a_population_that_fits_in_999_gets_the_numbers_it_always_did():
    old = np.random.default_rng(7).choice(_by_check_digit(nhs.PREFIX), size=5000, replace=False)
    assert np.array_equal(nhs.allocate(5000, np.random.default_rng(7)),
                          old * 10 + nhs.check_digit(old))


def test_a_larger_population_takes_never_issued_numbers_beyond_999():
    n = 909_091 + 20_000
    numbers = nhs.allocate(n, np.random.default_rng(3))
    assert numbers.size == n and np.unique(numbers).size == n
    assert nhs.is_valid(numbers).all()
    first3 = numbers // 10_000_000
    assert (first3 == 999).sum() == 909_091  # every 999 number first
    assert ((first3 >= 990) & (first3 <= 998)).sum() == 20_000
    (synthetic,) = nhs_number.REGION_SYNTHETIC.ranges
    assert numbers.min() >= synthetic.start and numbers.max() <= synthetic.end
    sample = np.random.default_rng(0).choice(numbers, 2000, replace=False)
    assert all(nhs_number.is_valid(str(x)) for x in sample.tolist())
    assert not (first3[:1000] == 999).all()  # mixed, not 999 then the rest


def test_more_than_the_range_holds_is_refused():
    with pytest.raises(ValueError, match="never-issued"):
        nhs.allocate(nhs.capacity() + 1, np.random.default_rng(0))
