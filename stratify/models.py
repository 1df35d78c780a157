"""The three candidate models and their per-person contributions.

- `RuleBaseline`: transparent points (age 65+, 2+ A&E attendances in 6 months, 2+ long-term
  conditions, polypharmacy of 5+ medicines, cognitive impairment); risk = observed rate per
  points total in training. What many practices use today: the bar to beat.
- `Logistic`: logistic regression on scaled, log-transformed features, L2-regularised.
- `Boosting`: scikit-learn `HistGradientBoostingClassifier` with early stopping.
- `Blend`: the mean of the logistic and boosting log-odds.

Every model gives log-odds (`decision`) and per reason-group contributions in log-odds
(`contributions`): for the logistic model coefficient x (x - mean); for boosting and the rule the
change in log-odds when the group's features are set to their population baseline.
`Calibrator` maps log-odds to calibrated probabilities (Platt or isotonic), fitted on a held-out
slice of the training period.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from scipy import special
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from stratify.catalogue import BY_NAME, groups

EPS = 1e-6
BATCH_ROWS = 500_000  # perturbed rows predicted per call when working out contributions


def logit(p: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities, clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def expit(z: np.ndarray) -> np.ndarray:
    """The logistic function (scipy's: no overflow for very negative log-odds)."""
    return special.expit(np.asarray(z, dtype=float))


def baseline_values(X: pd.DataFrame) -> pd.Series:
    """Population baseline of each feature: 'no record' for activity and conditions, the median
    age, and 0.5 for sex; contributions measure moving a person from here to their values."""
    values = {name: BY_NAME[name].default for name in X.columns}
    if "age" in X.columns:
        values["age"] = float(np.nanmedian(X["age"].to_numpy())) if len(X) else 50.0
    if "sex_female" in X.columns:
        values["sex_female"] = 0.5
    return pd.Series(values, dtype="float64")


class Model(Protocol):
    """What every candidate offers."""

    name: str
    features: list[str]

    def fit(self, X: pd.DataFrame, y: np.ndarray, seed: int) -> Model: ...
    def decision(self, X: pd.DataFrame) -> np.ndarray: ...
    def contributions(self, X: pd.DataFrame) -> pd.DataFrame: ...


def _perturbation_contributions(model: Model, X: pd.DataFrame, baseline: pd.Series,
                                candidates: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per group: log-odds now minus log-odds with the group's features at their baseline.

    Rows already at the baseline contribute 0 and are not re-predicted, which keeps this fast
    for the many persons without, say, any A&E attendance. `candidates` (persons x groups,
    bool) limits the work to the groups worth checking for each person; others get 0.
    """
    full = model.decision(X)
    matrix = X.to_numpy(dtype=np.float32)
    position = {name: i for i, name in enumerate(X.columns)}
    out: dict[str, np.ndarray] = {}
    pending: list[tuple[str, np.ndarray, np.ndarray]] = []  # group, rows, moved values
    size = 0

    def flush() -> None:
        # One prediction call for many groups: far less overhead than one call per group.
        nonlocal pending, size
        if pending:
            moved = model.decision(pd.DataFrame(np.concatenate([m for _, _, m in pending]),
                                                columns=X.columns))
            start = 0
            for group, rows, block in pending:
                out[group][rows] = full[rows] - moved[start:start + len(block)]
                start += len(block)
        pending, size = [], 0

    for group, names in groups().items():
        columns = [position[n] for n in names if n in position]
        if not columns:
            continue
        base = baseline[[n for n in names if n in position]].to_numpy(dtype=np.float32)
        values = matrix[:, columns]
        differs = ~np.isclose(values, base).all(axis=1) & ~np.isnan(values).all(axis=1)
        if candidates is not None:
            differs &= candidates[group].to_numpy(dtype=bool) if group in candidates else False
        out[group] = np.zeros(len(X))
        rows = np.flatnonzero(differs)
        if len(rows):
            block = matrix[rows].copy()
            block[:, columns] = base
            pending.append((group, rows, block))
            size += len(rows)
            if size >= BATCH_ROWS:
                flush()
    flush()
    return pd.DataFrame(out, index=X.index)


@dataclass
class RuleBaseline:
    """Transparent points score; probability = training rate at each points total."""

    name: str = "rule"
    features: list[str] = field(default_factory=list)
    rates: dict[int, float] = field(default_factory=dict)
    baseline: pd.Series | None = None

    CRITERIA = ("age 65 or over", "2 or more A&E attendances in 6 months",
                "2 or more long-term conditions", "5 or more medicines in 6 months",
                "cognitive impairment")

    @staticmethod
    def points(X: pd.DataFrame) -> pd.DataFrame:
        """One 0/1 column per criterion (a criterion whose feature the model is not given, as
        A&E attendances in a reference-date-only comparison, scores 0)."""
        def column(name: str) -> pd.Series:
            return X[name] if name in X.columns else pd.Series(0.0, index=X.index)

        cognitive = (X.get("ltc_dementia", 0) > 0) | (X.get("ltc_cognitive_impairment", 0) > 0)
        return pd.DataFrame({
            "age": (column("age") >= 65),
            "ae_attendances": (column("ae_attendances_6m") >= 2),
            "ltc_count": (column("ltc_count") >= 2),
            "polypharmacy": (column("distinct_medicines_6m") >= 5),
            "cognitive": cognitive,
        }, index=X.index).astype(int)

    def fit(self, X: pd.DataFrame, y: np.ndarray, seed: int = 0) -> RuleBaseline:
        self.features = list(X.columns)
        total = self.points(X).sum(axis=1).to_numpy()
        y = np.asarray(y, dtype=float)
        prior = float(y.mean()) if len(y) else 0.5
        self.rates = {}
        for k in range(len(self.CRITERIA) + 1):
            hit = total == k
            # Shrink small cells towards the overall rate (2 pseudo-persons).
            self.rates[k] = float((y[hit].sum() + 2 * prior) / (hit.sum() + 2))
        self.baseline = baseline_values(X)
        return self

    def decision(self, X: pd.DataFrame) -> np.ndarray:
        total = self.points(X).sum(axis=1).to_numpy()
        rates = np.array([self.rates[k] for k in range(len(self.CRITERIA) + 1)])
        return logit(rates[total])

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        points = self.points(X)
        step = np.diff(logit(np.array(list(self.rates.values())))).mean() if self.rates else 1.0
        out = pd.DataFrame(0.0, index=X.index, columns=list(groups()))
        for column in ("age", "ae_attendances", "ltc_count", "polypharmacy"):
            out[column] = points[column] * step
        dementia = X.get("ltc_dementia", pd.Series(0, index=X.index)) > 0
        out["ltc_dementia"] = (points["cognitive"] * dementia) * step
        out["ltc_cognitive_impairment"] = (points["cognitive"] * ~dementia) * step
        return out


@dataclass
class Logistic:
    """L2-regularised logistic regression on log1p counts and standardised features."""

    name: str = "logistic"
    C: float = 0.3
    features: list[str] = field(default_factory=list)
    fill: pd.Series | None = None
    scaler: StandardScaler | None = None
    model: LogisticRegression | None = None

    def _design(self, X: pd.DataFrame) -> np.ndarray:
        """The model's inputs: each feature as float64, missing values filled with the
        training medians, counts and numbers log1p'd, and age past 65 appended. Made on
        one array (a frame's astype and fillna cost more than the model at a million
        persons), C-ordered as `np.column_stack` made it, so every product is the same."""
        assert self.fill is not None
        values = X[self.features].to_numpy(dtype=np.float64, copy=True)
        fill = self.fill.reindex(self.features).to_numpy(dtype=np.float64)
        missing = np.isnan(values)
        if missing.any():
            values[missing] = np.broadcast_to(fill, values.shape)[missing]
        logged = np.array([BY_NAME[name].kind in ("count", "number") for name in self.features])
        if logged.any():
            values[:, logged] = np.log1p(np.clip(values[:, logged], 0, None))
        columns = [values]
        if "age" in self.features:  # steeper risk in later life
            age = values[:, self.features.index("age")]  # not logged: age is no count
            columns.append(np.clip(age - 65, 0, None)[:, None])
        return np.ascontiguousarray(np.hstack(columns) if len(columns) > 1 else values)

    def fit(self, X: pd.DataFrame, y: np.ndarray, seed: int = 0) -> Logistic:
        self.features = list(X.columns)
        self.fill = X.astype("float64").median().fillna(0)
        design = self._design(X)
        self.scaler = StandardScaler().fit(design)
        self.model = LogisticRegression(C=self.C, solver="newton-cholesky", max_iter=200,
                                        random_state=seed)
        self.model.fit(self.scaler.transform(design), np.asarray(y))
        return self

    def decision(self, X: pd.DataFrame) -> np.ndarray:
        assert self.scaler is not None and self.model is not None
        return self.model.decision_function(self.scaler.transform(self._design(X)))

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """coefficient x (scaled value - training mean), summed over each reason group."""
        assert self.scaler is not None and self.model is not None
        z = self.scaler.transform(self._design(X)) * self.model.coef_[0]
        names = self.features + (["age"] if "age" in self.features else [])
        per_feature = pd.DataFrame(z, index=X.index, columns=range(len(names)))
        out = {}
        for group, members in groups().items():
            cols = [i for i, n in enumerate(names) if n in members]
            if cols:
                out[group] = per_feature[cols].sum(axis=1).to_numpy()
        return pd.DataFrame(out, index=X.index)


@dataclass
class Boosting:
    """Histogram gradient boosting; early stopping on an internal 10% split (seeded)."""

    name: str = "boosting"
    features: list[str] = field(default_factory=list)
    model: HistGradientBoostingClassifier | None = None
    baseline: pd.Series | None = None
    params: dict[str, float | int] = field(default_factory=lambda: {
        "learning_rate": 0.04, "max_iter": 600, "max_leaf_nodes": 15,
        "l2_regularization": 5.0, "n_iter_no_change": 25, "validation_fraction": 0.1})

    def fit(self, X: pd.DataFrame, y: np.ndarray, seed: int = 0) -> Boosting:
        self.features = list(X.columns)
        params = dict(self.params)
        # Leaves of at least 1 in 400 persons (40 to 400): small trees that generalise to
        # the next year rather than learn this year's noise.
        params.setdefault("min_samples_leaf", int(np.clip(len(X) // 400, 40, 400)))
        self.model = HistGradientBoostingClassifier(early_stopping=True, random_state=seed,
                                                    **params)
        self.model.fit(X[self.features], np.asarray(y))
        self.baseline = baseline_values(X)
        return self

    def decision(self, X: pd.DataFrame) -> np.ndarray:
        assert self.model is not None
        return self.model.decision_function(X[self.features])

    def contributions(self, X: pd.DataFrame, candidates: pd.DataFrame | None = None
                      ) -> pd.DataFrame:
        assert self.baseline is not None
        return _perturbation_contributions(self, X[self.features], self.baseline, candidates)


@dataclass
class Calibrator:
    """Log-odds -> probability, fitted on persons the model did not learn from.

    `platt`: logistic recalibration (slope and intercept on the log-odds); `isotonic`: monotone
    step function, interpolated.
    """

    method: str = "platt"
    slope: float = 1.0
    intercept: float = 0.0
    isotonic: IsotonicRegression | None = None

    def fit(self, decision: np.ndarray, y: np.ndarray) -> Calibrator:
        decision = np.asarray(decision, dtype=float).reshape(-1, 1)
        if self.method == "isotonic":
            self.isotonic = IsotonicRegression(out_of_bounds="clip", y_min=EPS, y_max=1 - EPS)
            self.isotonic.fit(decision[:, 0], y)
        else:
            fit = LogisticRegression(C=1e6, max_iter=1000).fit(decision, y)
            self.slope, self.intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
        return self

    def __call__(self, decision: np.ndarray) -> np.ndarray:
        decision = np.asarray(decision, dtype=float)
        if self.method == "isotonic" and self.isotonic is not None:
            return self.isotonic.predict(decision)
        return expit(self.slope * decision + self.intercept)


@dataclass
class Blend:
    """Average of the logistic and boosting log-odds: the linear model's steady trends plus the
    trees' thresholds and interactions. Built from already fitted components."""

    name: str = "blend"
    parts: list[Model] = field(default_factory=list)
    features: list[str] = field(default_factory=list)

    def fit(self, X: pd.DataFrame, y: np.ndarray, seed: int = 0) -> Blend:
        self.parts = [Logistic().fit(X, y, seed), Boosting().fit(X, y, seed)]
        self.features = list(X.columns)
        return self

    @classmethod
    def of(cls, parts: list[Model]) -> Blend:
        """A blend of fitted models (no refitting)."""
        return cls(parts=list(parts), features=list(parts[0].features))

    def decision(self, X: pd.DataFrame) -> np.ndarray:
        return np.mean([part.decision(X) for part in self.parts], axis=0)

    def contributions(self, X: pd.DataFrame, candidates: pd.DataFrame | None = None
                      ) -> pd.DataFrame:
        """The mean of the parts' contributions (each in log-odds, like the blend itself)."""
        frames = [part.contributions(X, candidates) if isinstance(part, Boosting)
                  else part.contributions(X) for part in self.parts]
        total = frames[0]
        for frame in frames[1:]:
            total = total.add(frame, fill_value=0.0)
        return total / len(frames)


CANDIDATES = {"rule": RuleBaseline, "logistic": Logistic, "boosting": Boosting, "blend": Blend}


def make(name: str) -> Model:
    """A fresh, unfitted candidate by name."""
    return CANDIDATES[name]()


def equal_to_earlier(models: dict[str, np.ndarray]) -> dict[str, str]:
    """Each model whose probabilities equal an earlier model's, to the first such one."""
    same: dict[str, str] = {}
    names = list(models)
    for i, name in enumerate(names):
        for other in names[:i]:
            if other not in same and np.array_equal(np.asarray(models[name], dtype=float),
                                                    np.asarray(models[other], dtype=float)):
                same[name] = other
                break
    return same
