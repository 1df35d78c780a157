"""Score one partition of persons with a fitted model: the seam a distributed engine calls.

`stratify.scoring.score` trains, computes features and scores everyone in one process. On
Spark (pipeline.engines.spark_score) the model is fitted on the driver exactly as there, and
these functions run on each partition of the feature table: `predict_partition` (every
candidate's calibrated probability), then, once the tier thresholds are known for the whole
population (`tier_thresholds`, from counts and ranks, not from a gathered column),
`explain_partition` (tier, reasons and the per-person columns that need only the row). They
call the same functions `score` calls (`ModelBundle.probabilities`, `tiers.assign`, the
contributions, `explain.reasons`), so a person's results do not depend on the partition.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from stratify import explain
from stratify.scoring import _conditions, _contributions, age_band
from stratify.tiers import TIERS, assign
from stratify.train import ModelBundle

REASON_GROUPS = ["reason_group_1", "reason_group_2", "reason_group_3"]


def predict_partition(bundle: ModelBundle, X: pd.DataFrame) -> pd.DataFrame:
    """Each candidate model's calibrated probability for the persons of `X` (index kept)."""
    probability = bundle.probabilities(X)
    return pd.DataFrame({name: np.asarray(p, dtype=float) for name, p in probability.items()},
                        index=X.index)


def explain_partition(bundle: ModelBundle, X: pd.DataFrame, probability: np.ndarray,
                      cut: dict[str, float]) -> pd.DataFrame:
    """Tier (under the population's thresholds `cut`), reasons and row-only columns for the
    persons of `X`, whose chosen-model probability is `probability` (from `predict_partition`:
    not predicted again, so a tier sits on exactly the probability reported)."""
    probability = np.asarray(probability, dtype=float)
    tiers = assign(probability, cut)
    out = pd.DataFrame({"probability": probability, "tier": tiers}, index=X.index)
    if len(X):
        contributions, _ = _contributions(bundle, X, tiers)
        why = explain.reasons(contributions, X)
        out["reasons"] = explain.joined(why)
        out = out.join(why[REASON_GROUPS])
    else:
        out["reasons"] = pd.Series(dtype=object)
        for column in REASON_GROUPS:
            out[column] = pd.Series(dtype=object)
    out["age"] = X["age"]
    out["age_band"] = age_band(X["age"])
    out["conditions"] = _conditions(X)
    out["social_care_known"] = X["sc_known"].astype(bool)
    return out


def reasons_method(bundle: ModelBundle) -> dict[str, str]:
    """Which model's contributions explain which tiers (as `scoring.score` records it)."""
    if bundle.chosen in ("rule", "logistic") or "logistic" not in bundle.models:
        return {"all": bundle.chosen}
    return {"very_high, high": bundle.chosen, "moderate, low": "logistic"}


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
