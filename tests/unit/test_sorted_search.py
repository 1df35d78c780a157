"""`search_sorted` gives what `np.searchsorted` gives, whatever the order of what is asked."""

from __future__ import annotations

import numpy as np
import pytest

from linkage.sorted_search import search_sorted


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, "S3"])
def test_positions_are_numpy_s_in_the_needles_order(dtype: object) -> None:
    rng = np.random.default_rng(5)
    for size, asked in ((0, 5), (1, 1), (7, 0), (50, 200), (5_000, 3_000)):
        haystack = np.sort(rng.integers(0, 40, size).astype(dtype))  # repeated values too
        needles = rng.integers(-2, 45, asked).astype(dtype)
        assert np.array_equal(search_sorted(haystack, needles),
                              np.searchsorted(haystack, needles)), (size, asked)
