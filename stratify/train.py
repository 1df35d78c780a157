"""Training with a time split: learn from the past year, choose on a later one, calibrate.

For a run at `at`:
1. Selection (backtest): each candidate learns features at `at - 24 months` -> emergency
   admissions in the following 12 months, and is judged by AUROC on the later reference date
   `at - 12 months` (outcomes up to `at`). Where the data hold too little history for that, the
   candidates are judged on a held-out slice of persons at `at - 12 months` instead.
2. Final fit: every candidate learns features at `at - 12 months` -> emergency admissions in the
   12 months up to `at` (a training slice of persons); a calibrator is fitted on the rest
   (held out). Nothing on or after `at` is read.
The candidate with the best selection AUROC scores the run; the others are kept for comparison.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from stratify import codelists
from stratify.catalogue import NAMES
from stratify.features import _ts, features_from, history_months
from stratify.models import CANDIDATES, Blend, Calibrator, Model, make
from stratify.outcomes import outcomes_from
from stratify.sources import add_months
from stratify.tiers import thresholds

MODEL_VERSION = "haven-score-1.0"
LIFETIME_MONTHS = 240  # with 20 years of history or more, conditions use all of it
CALIBRATION_SHARE = 0.2


@dataclass
class ModelBundle:
    """Everything needed to score and to explain a score later (persisted with joblib)."""

    version: str
    chosen: str
    models: dict[str, Model]
    calibrators: dict[str, Calibrator]
    features: list[str]
    train_at: str
    train_window: tuple[str, str]
    selection: dict[str, Any]
    thresholds: dict[str, float]
    metrics: dict[str, Any]
    seed: int
    codelists_digest: str = ""
    lookback_months: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """Calibrated probability from every candidate; a blend reuses its parts' log-odds."""
        decisions: dict[str, np.ndarray] = {}
        for name, model in self.models.items():
            if not isinstance(model, Blend):
                decisions[name] = model.decision(X[self.features])
        for name, model in self.models.items():
            if isinstance(model, Blend):
                known = {id(m): decisions[n] for n, m in self.models.items() if n in decisions}
                parts = [known.get(id(p)) for p in model.parts]
                decisions[name] = np.mean(parts, axis=0) if all(
                    p is not None for p in parts) else model.decision(X[self.features])
        return {name: self.calibrators[name](d) for name, d in decisions.items()}

    def probability(self, X: pd.DataFrame, name: str | None = None) -> np.ndarray:
        """Calibrated probability of an emergency admission in 12 months."""
        name = name or self.chosen
        return self.calibrators[name](self.models[name].decision(X[self.features]))


def person_fraction(index: pd.Index, seed: int) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per person key (same key, seed -> same number)."""
    hashed = pd.util.hash_array(index.astype(str).to_numpy(), hash_key=f"haven-{seed:010d}"[:16])
    return (hashed >> np.uint64(11)).astype(np.float64) / float(2 ** 53)


def _digest() -> str:
    h = hashlib.sha256()
    for name in codelists.FILES:
        h.update((codelists.FOLDER / f"{name}.csv").read_bytes())
    return h.hexdigest()[:16]


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def _has_history(con: duckdb.DuckDBPyConnection, at: dt.date) -> bool:
    first = con.execute(f"""SELECT count(*) FROM v_apc
        WHERE admission_date <= {_ts(add_months(at, -12))}""").fetchone()[0]
    return first > 0


def _subsample(X: pd.DataFrame, y: np.ndarray, limit: int | None, seed: int
               ) -> tuple[pd.DataFrame, np.ndarray]:
    if limit is None or len(X) <= limit:
        return X, y
    keep = person_fraction(X.index, seed + 7) < limit / len(X)
    return X[keep], y[keep]


def _fit_all(candidates: tuple[str, ...], X: pd.DataFrame, y: np.ndarray, seed: int
             ) -> dict[str, Model]:
    """Fit each candidate once; a blend reuses the fitted logistic and boosting models."""
    fitted: dict[str, Model] = {}
    for name in candidates:
        if name != "blend":
            fitted[name] = make(name).fit(X, y, seed)
    if "blend" in candidates:
        parts = [fitted.get(n) or make(n).fit(X, y, seed) for n in ("logistic", "boosting")]
        fitted["blend"] = Blend.of(parts)
    return fitted


def train(con: duckdb.DuckDBPyConnection, at: dt.date, seed: int = 0,
          candidates: tuple[str, ...] = ("rule", "logistic", "boosting", "blend"),
          calibration: str = "platt", max_train_persons: int | None = 400_000) -> ModelBundle:
    """Fit, choose and calibrate the candidates for a run at `at` (see the module docstring)."""
    t1 = add_months(at, -12)
    t0 = add_months(at, -24)
    # Conditions look back only as far as the training date's history reaches, at every date,
    # so a longer history at scoring time does not shift what "has diabetes" means.
    history = history_months(con, t1)
    lookback = history if history is not None and history < LIFETIME_MONTHS else None
    X1 = features_from(con, t1, lookback)
    y1 = outcomes_from(con, X1.index, t1)["emergency"].to_numpy()
    fraction = person_fraction(X1.index, seed)
    held = fraction < CALIBRATION_SHARE
    selection: dict[str, Any] = {}
    if _has_history(con, t0):
        X0 = features_from(con, t0, lookback)
        y0 = outcomes_from(con, X0.index, t0)["emergency"].to_numpy()
        Xs, ys = _subsample(X0, y0, max_train_persons, seed)
        selection["method"] = "backtest"
        selection["fit_at"], selection["validate_at"] = t0.isoformat(), t1.isoformat()
        Xv, yv = X1, y1
    else:
        Xs, ys = _subsample(X1[~held], y1[~held], max_train_persons, seed)
        selection["method"] = "holdout"
        Xv, yv = X1[held], y1[held]
    for name, model in _fit_all(candidates, Xs, ys, seed).items():
        selection[name] = _auc(yv, model.decision(Xv))
    scored = {n: selection[n] for n in candidates if not np.isnan(selection[n])}
    chosen = max(scored, key=scored.__getitem__) if scored else candidates[-1]

    Xf, yf = _subsample(X1[~held], y1[~held], max_train_persons, seed)
    models: dict[str, Model] = {}
    calibrators: dict[str, Calibrator] = {}
    metrics: dict[str, Any] = {"train_persons": int(len(Xf)), "calibration_persons":
                               int(held.sum()), "train_event_rate": float(y1.mean())}
    for name, model in _fit_all(candidates, Xf, yf, seed).items():
        decision = model.decision(X1[held])
        calibrator = Calibrator(calibration).fit(decision, y1[held])
        models[name], calibrators[name] = model, calibrator
        metrics[f"{name}_heldout_auroc"] = _auc(y1[held], decision)
    p_train = calibrators[chosen](models[chosen].decision(X1))
    return ModelBundle(
        version=MODEL_VERSION, chosen=chosen, models=models, calibrators=calibrators,
        features=list(NAMES), train_at=t1.isoformat(),
        train_window=(t1.isoformat(), add_months(t1, 12).isoformat()), selection=selection,
        thresholds=thresholds(p_train), metrics=metrics, seed=seed,
        codelists_digest=_digest(), lookback_months=lookback,
        extra={"candidates": list(CANDIDATES)})
