"""What a distributed engine needs besides the batch code both engines run.

On Spark (pipeline.engines.spark_score) each task runs `stratify.score_batch`'s functions
on a range of persons; what spans the population is worked out from counts and ranks here:
`tier_thresholds` gives the same thresholds as `stratify.tiers.thresholds` from a count and
the m-th largest probability (a distributed sort).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from stratify.tiers import TIERS


def higher_rank(n: int, share: float) -> int:
    """0-based ascending rank of the tier bound `tiers.thresholds` takes for `share` of `n`
    persons: numpy's `quantile(..., 1 - share, method="higher")` index, ceil((n-1)(1-share))."""
    return int(math.ceil((n - 1) * (1 - share)))


def tier_thresholds(n: int, nth_largest: Callable[[int], float]) -> dict[str, float]:
    """The same thresholds as `tiers.thresholds` for `n` probabilities, given a function that
    returns the m-th largest of them (1-based; a distributed engine's sort and limit)."""
    if n == 0:
        return {name: 1.0 for name, _ in TIERS}
    return {name: float(nth_largest(n - higher_rank(n, share))) for name, share in TIERS}
