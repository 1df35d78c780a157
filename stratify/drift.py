"""Drift between two months: pure functions on frames, for `haven refresh` (pipeline.refresh).

- `psi`: population stability index of one variable, sum over bins of (a - e) * ln(a / e)
  where e and a are the shares of the earlier and later month in each bin (bins: deciles of
  the earlier month for a numeric variable with many values, else each value). 0 when the two
  distributions are the same; by convention under 0.1 is stable, 0.1-0.25 a moderate shift,
  over 0.25 a large one (thresholds live in `policies/drift.json`).
- `feature_psi`: PSI of every feature between two feature frames.
- `source_shares`: share of persons each source has records for.
- `score_distribution`: the score's summary (mean, quantiles, tier shares) and PSI.
- `tier_churn`: who moved tier between two runs, and the main reason group of those who moved.
- `linkage_figures`: match rate and probabilistic share per source from a link summary.
- `performance`: AUROC and calibration slope on a complete outcome year.
- `warnings`: every figure past its threshold.

Nothing here reads files or a database; counts only, never a person key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from stratify.evaluate import calibration_fit, delong

EPSILON = 1e-4  # the share given to an empty bin, so ln(a / e) stays finite
BINS = 10
TIERS = ("very_high", "high", "moderate", "low")
TIER_RANK = {"low": 0, "moderate": 1, "high": 2, "very_high": 3}
PROBABILISTIC = "probabilistic"  # the link method of a probabilistic (Fellegi-Sunter) match
UNLINKED = "unlinked"


def psi_from_shares(expected: np.ndarray | list[float], actual: np.ndarray | list[float]
                    ) -> float:
    """PSI of two share vectors over the same bins (each normalised to sum 1; empty bins
    floored at EPSILON). ValueError when the lengths differ or a vector sums to 0."""
    e, a = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    if e.shape != a.shape:
        raise ValueError(f"psi: {len(e)} expected bins but {len(a)} actual bins")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi: a distribution with no persons")
    e = np.maximum(e / e.sum(), EPSILON)
    a = np.maximum(a / a.sum(), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_counts(expected: pd.Series, actual: pd.Series, bins: int = BINS
               ) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both months in the same bins: the earlier month's quantiles for a numeric
    variable with more than `bins` values, else one bin per value (missing values a bin of
    their own)."""
    e, a = expected.reset_index(drop=True), actual.reset_index(drop=True)
    numeric = pd.api.types.is_numeric_dtype(e) and pd.api.types.is_numeric_dtype(a)
    values = pd.concat([e, a]).dropna().unique()
    if numeric and len(values) > bins:
        edges = np.unique(np.nanquantile(e.astype(float), np.linspace(0, 1, bins + 1)))
        edges[0], edges[-1] = -np.inf, np.inf
        e_bin = pd.cut(e.astype(float), edges, labels=False, include_lowest=True)
        a_bin = pd.cut(a.astype(float), edges, labels=False, include_lowest=True)
    else:
        e_bin, a_bin = e.astype(object), a.astype(object)
    e_bin = e_bin.astype(object).where(e_bin.notna(), "(missing)")
    a_bin = a_bin.astype(object).where(a_bin.notna(), "(missing)")
    labels = sorted(set(e_bin) | set(a_bin), key=str)
    return (e_bin.value_counts().reindex(labels, fill_value=0).to_numpy(),
            a_bin.value_counts().reindex(labels, fill_value=0).to_numpy())


def psi(expected: pd.Series, actual: pd.Series, bins: int = BINS) -> float:
    """PSI of one variable between the earlier (`expected`) and later (`actual`) month."""
    e, a = bin_counts(expected, actual, bins)
    return psi_from_shares(e, a)


def feature_psi(before: pd.DataFrame, after: pd.DataFrame,
                features: list[str] | None = None) -> pd.DataFrame:
    """PSI of each feature (columns both frames hold, or `features`), largest first:
    columns feature, psi, mean_before, mean_after."""
    names = features or [c for c in before.columns if c in after.columns]
    missing = [n for n in names if n not in before.columns or n not in after.columns]
    if missing:
        raise ValueError(f"feature_psi: no column {missing[0]!r} in both months")
    rows = [{"feature": n, "psi": psi(before[n], after[n]),
             "mean_before": float(pd.to_numeric(before[n], errors="coerce").mean()),
             "mean_after": float(pd.to_numeric(after[n], errors="coerce").mean())}
            for n in names]
    frame = pd.DataFrame(rows, columns=["feature", "psi", "mean_before", "mean_after"])
    return frame.sort_values(["psi", "feature"], ascending=[False, True],
                             ignore_index=True)


def source_shares(sources: pd.Series) -> dict[str, float]:
    """Share of persons with records in each source, from `;`-joined source lists (a run's
    `sources` column); {} for no persons."""
    if not len(sources):
        return {}
    exploded = sources.fillna("").astype(str).str.split(";").explode()
    exploded = exploded[exploded != ""]
    counts = exploded.groupby(level=0).unique().explode().value_counts()
    return {str(k): float(v) / len(sources) for k, v in sorted(counts.items())}


def share_changes(before: Mapping[str, float], after: Mapping[str, float]
                  ) -> dict[str, dict[str, float]]:
    """Per key of either: share before, after and the change in percentage points."""
    return {k: {"before": before.get(k, 0.0), "after": after.get(k, 0.0),
                "change_points": 100 * (after.get(k, 0.0) - before.get(k, 0.0))}
            for k in sorted(set(before) | set(after))}


def score_distribution(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
    """Mean and quantiles of the probability in both runs, tier shares, and the PSI of the
    probability (deciles of the earlier run) and of the tier."""
    def summary(frame: pd.DataFrame) -> dict[str, Any]:
        p = frame["probability"].astype(float)
        tiers = frame["tier"].value_counts(normalize=True)
        return {"persons": int(len(frame)), "mean": float(p.mean()),
                **{f"p{q}": float(p.quantile(q / 100)) for q in (50, 90, 99)},
                "tier_shares": {t: float(tiers.get(t, 0.0)) for t in TIERS}}

    return {"before": summary(before), "after": summary(after),
            "psi_probability": psi(before["probability"].astype(float),
                                   after["probability"].astype(float)),
            "psi_tier": psi(before["tier"].astype(object), after["tier"].astype(object))}


def tier_churn(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
    """Who moved tier between two runs (`person_key`, `tier`; `after` with
    `reason_group_1`): counts from -> to among persons in both, how many moved up and down,
    the share who moved, persons new and gone, and for those who moved up (and down) the
    count by their main reason group now."""
    b = before.drop_duplicates("person_key").set_index("person_key")["tier"]
    columns = ["tier"] + (["reason_group_1"] if "reason_group_1" in after else [])
    a = after.drop_duplicates("person_key").set_index("person_key")[columns]
    both = a.join(b.rename("tier_before"), how="inner")
    rank_now = both["tier"].map(TIER_RANK)
    rank_then = both["tier_before"].map(TIER_RANK)
    up, down = both[rank_now > rank_then], both[rank_now < rank_then]
    matrix = pd.crosstab(both["tier_before"], both["tier"])
    moves = {f"{f}->{t}": int(matrix.loc[f, t]) for f in matrix.index for t in matrix.columns
             if f != t and matrix.loc[f, t]}

    def reasons(frame: pd.DataFrame) -> dict[str, int]:
        if "reason_group_1" not in frame or frame.empty:
            return {}
        counts = frame["reason_group_1"].fillna("(none)").value_counts()
        return {str(k): int(v) for k, v in counts.items()}

    return {"in_both": int(len(both)), "moved": int(len(up) + len(down)),
            "moved_share": float((len(up) + len(down)) / len(both)) if len(both) else 0.0,
            "up": int(len(up)), "down": int(len(down)), "moves": moves,
            "new": int(len(a.index.difference(b.index))),
            "gone": int(len(b.index.difference(a.index))),
            "up_by_reason": reasons(up), "down_by_reason": reasons(down)}


def linkage_figures(by_source_method: Mapping[str, Mapping[str, int]]
                    ) -> dict[str, dict[str, float]]:
    """Per source of a link summary (`by_source_method`: source -> method -> rows): rows,
    match rate (rows linked by any method) and probabilistic share (rows linked
    probabilistically, of rows linked)."""
    out: dict[str, dict[str, float]] = {}
    for source, methods in sorted(by_source_method.items()):
        total = sum(int(v) for v in methods.values())
        linked = total - int(methods.get(UNLINKED, 0))
        other = int(methods.get(PROBABILISTIC, 0))
        out[source] = {"rows": float(total),
                       "match_rate": linked / total if total else float("nan"),
                       "probabilistic_share": other / linked if linked else 0.0}
    return out


def linkage_changes(before: Mapping[str, Mapping[str, int]],
                    after: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, float]]:
    """Per source in either link summary: match rate and probabilistic share before and after,
    and their changes in percentage points (NaN where a run has no rows of the source)."""
    b, a = linkage_figures(before), linkage_figures(after)
    nan = {"rows": 0.0, "match_rate": float("nan"), "probabilistic_share": float("nan")}
    out = {}
    for source in sorted(set(b) | set(a)):
        then, now = b.get(source, nan), a.get(source, nan)
        out[source] = {
            "match_rate_before": then["match_rate"], "match_rate_after": now["match_rate"],
            "match_rate_change_points": 100 * (now["match_rate"] - then["match_rate"]),
            "probabilistic_before": then["probabilistic_share"],
            "probabilistic_after": now["probabilistic_share"],
            "probabilistic_change_points": 100 * (now["probabilistic_share"]
                                                  - then["probabilistic_share"])}
    return out


def performance(outcome: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """AUROC (with its 95% interval) and calibration slope of probabilities on outcomes;
    NaN where the outcomes are all one value."""
    y = np.asarray(outcome).astype(int)
    p = np.asarray(probability, dtype=float)
    if len(y) != len(p):
        raise ValueError(f"performance: {len(y)} outcomes but {len(p)} probabilities")
    if len(y) == 0 or y.min() == y.max():
        nan = float("nan")
        return {"persons": float(len(y)), "events": float(y.sum()), "auroc": nan,
                "auroc_lo": nan, "auroc_hi": nan, "calibration_slope": nan}
    auc, lo, hi = delong(y, p)
    slope, _ = calibration_fit(y, p)
    return {"persons": float(len(y)), "events": float(y.sum()), "auroc": auc,
            "auroc_lo": lo, "auroc_hi": hi, "calibration_slope": slope}


def _past(value: float, limit: float, direction: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return value > limit if direction == "above" else value < limit


def warnings(figures: Mapping[str, Any], policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every figure past its threshold in `policy` (policies/drift.json), as
    {check, subject, value, threshold, message}; `retrain: True` on a performance warning."""
    out: list[dict[str, Any]] = []

    def warn(check: str, subject: str, value: float, limit: float, direction: str,
             what: str, retrain: bool = False) -> None:
        if _past(value, limit, direction):
            out.append({"check": check, "subject": subject, "value": round(float(value), 4),
                        "threshold": limit, "retrain": retrain,
                        "message": f"{what} {value:.3f} is {direction} {limit:g}"})

    for row in figures.get("feature_psi", []):
        warn("feature_psi", row["feature"], row["psi"], policy["feature_psi"], "above",
             f"PSI of feature {row['feature']}")
    for source, shares in figures.get("source_shares", {}).items():
        warn("source_share", source, abs(shares["change_points"]),
             policy["source_share_points"], "above",
             f"share of persons with {source} records moved (points)")
    scores = figures.get("score_distribution")
    if scores:
        warn("score_psi", "probability", scores["psi_probability"], policy["score_psi"],
             "above", "PSI of the probability")
    churn = figures.get("tier_churn")
    if churn:
        warn("tier_churn", "tiers", churn["moved_share"], policy["tier_churn_share"], "above",
             "share of persons who moved tier")
    for source, change in figures.get("linkage", {}).items():
        warn("match_rate", source, -change["match_rate_change_points"],
             policy["match_rate_drop_points"], "above",
             f"fall in the {source} match rate (points)")
        warn("probabilistic_share", source, abs(change["probabilistic_change_points"]),
             policy["probabilistic_share_points"], "above",
             f"change in the {source} probabilistic share (points)")
    done = figures.get("performance")
    if done and "auroc" in done:  # measured (not awaiting outcomes)
        warn("auroc", "model", done["auroc"], policy["min_auroc"], "below",
             "AUROC on the most recent complete year", retrain=True)
        slope = done["calibration_slope"]
        low, high = policy["calibration_slope"]
        warn("calibration_slope", "model", slope, low, "below", "calibration slope",
             retrain=True)
        warn("calibration_slope", "model", slope, high, "above", "calibration slope",
             retrain=True)
    return out
