"""Risk tiers: very high (top 0.5%), high (0.5-5%), moderate (5-20%), low (the rest).

Thresholds are probabilities at those population centiles, stored with each run so a tier can
be traced back to the cut-off that made it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# (tier, share of the population at or above its lower threshold)
TIERS: tuple[tuple[str, float], ...] = (("very_high", 0.005), ("high", 0.05),
                                       ("moderate", 0.20))
ORDER = ("low", "moderate", "high", "very_high")
RANK = {name: i for i, name in enumerate(ORDER)}


def thresholds(probability: np.ndarray) -> dict[str, float]:
    """Lower probability bound of each tier above low, from the scored population."""
    p = np.asarray(probability, dtype=float)
    if len(p) == 0:
        return {name: 1.0 for name, _ in TIERS}
    return {name: float(np.quantile(p, 1 - share, method="higher")) for name, share in TIERS}


def assign(probability: np.ndarray, cut: dict[str, float]) -> np.ndarray:
    """Tier of each probability under thresholds `cut` (highest tier whose bound it reaches)."""
    p = np.asarray(probability, dtype=float)
    out = np.full(len(p), "low", dtype=object)
    for name in ("moderate", "high", "very_high"):
        out[p >= cut[name]] = name
    return out


def tier_change(current: pd.Series, previous: pd.Series) -> pd.Series:
    """Steps moved between tiers (+1 = one tier up); null where there is no previous tier."""
    now = current.map(RANK)
    before = previous.map(RANK)
    return (now - before).astype("Int64")
