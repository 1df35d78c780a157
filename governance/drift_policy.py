"""The drift watch's thresholds (`policies/drift.json`): when `haven refresh` warns, and when
the approved model is flagged for retraining.

A policy table like the others: shipped in `policies/`, an IG lead may store their own version
(`haven policy set drift.json FILE`, checked by `validate_drift`), read by `load_drift`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from governance.policy_tables import json_object, policy_text

POLICY = "drift.json"
# Each threshold: a non-negative number (PSI or percentage points), AUROC between 0 and 1.
NUMBERS = ("feature_psi", "source_share_points", "score_psi", "tier_churn_share",
           "match_rate_drop_points", "probabilistic_share_points", "min_auroc")
# When a link trains a source's linkage model again instead of reusing the kept one
# (`linkage.kept_models`): the register's profiles changed by more than this share, or the
# model is older than this many days. Optional: a version stored before they existed has these.
LINKAGE_RETRAIN = {"linkage_retrain_register_change": 0.10, "linkage_retrain_days": 92.0}
LINKAGE_RETRAIN_MOST = {"linkage_retrain_register_change": 1.0, "linkage_retrain_days": 3650.0}


def parse_drift(content: str) -> dict[str, Any]:
    """The thresholds from JSON text; ValueError naming the field that is wrong."""
    data = json_object(content, POLICY)
    out: dict[str, Any] = {}
    for name in NUMBERS:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{POLICY}: {name} must be a number, 0 or more")
        out[name] = float(value)
    for name, default in LINKAGE_RETRAIN.items():
        value = data.get(name, default)
        most = LINKAGE_RETRAIN_MOST[name]
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 <= value <= most):  # NaN and infinities fail this too
            raise ValueError(f"{POLICY}: {name} must be a number from 0 to {most:g}")
        out[name] = float(value)
    if out["min_auroc"] > 1 or out["tier_churn_share"] > 1:
        raise ValueError(f"{POLICY}: min_auroc and tier_churn_share are at most 1")
    slope = data.get("calibration_slope")
    if not (isinstance(slope, list) and len(slope) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in slope)
            and 0 <= slope[0] < slope[1]):
        raise ValueError(f"{POLICY}: calibration_slope must be [low, high], 0 <= low < high")
    out["calibration_slope"] = [float(slope[0]), float(slope[1])]
    return out


def validate_drift(content: str, engine: Engine | None = None) -> None:
    """The check `haven policy set drift.json` runs (ValueError when wrong)."""
    parse_drift(content)


def load_drift(engine: Engine | None = None) -> dict[str, Any]:
    """The thresholds in force: an IG lead's version when an engine is given and one is
    stored, else the shipped `policies/drift.json`."""
    return parse_drift(policy_text(POLICY, engine))

