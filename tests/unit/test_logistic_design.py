"""The logistic model's design matrix made on one array equals the frame-by-frame one it
replaced (written out here), value for value and in the same memory order, so its decisions
and contributions are the same to the bit."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stratify.catalogue import BY_NAME, NAMES
from stratify.models import Logistic


def _design_before(model: Logistic, X: pd.DataFrame) -> np.ndarray:
    frame = X[model.features].astype("float64").fillna(model.fill)
    columns = []
    for name in model.features:
        values = frame[name].to_numpy()
        if BY_NAME[name].kind in ("count", "number"):
            values = np.log1p(np.clip(values, 0, None))
        columns.append(values)
    if "age" in model.features:
        columns.append(np.clip(frame["age"].to_numpy() - 65, 0, None))
    return np.column_stack(columns)


def _features(rng: np.random.Generator, n: int) -> pd.DataFrame:
    X = pd.DataFrame({name: rng.poisson(1.5, n).astype(np.float32) for name in NAMES})
    X["age"] = rng.integers(0, 100, n).astype(np.float32)
    for name in NAMES[::3]:
        X.loc[rng.random(n) < 0.2, name] = np.nan
    X.loc[rng.random(n) < 0.1, "age"] = np.nan
    X[NAMES[1]] = -X[NAMES[1]]  # negative counts are clipped before log1p
    return X


def test_the_design_is_the_frame_by_frame_one_and_so_are_the_decisions():
    rng = np.random.default_rng(3)
    X, y = _features(rng, 3000), (rng.random(3000) < 0.2).astype(int)
    model = Logistic().fit(X, y)
    later = _features(np.random.default_rng(4), 1000)
    got, want = model._design(later), _design_before(model, later)
    assert got.shape == want.shape == (1000, len(NAMES) + 1)
    assert got.flags["C_CONTIGUOUS"] and got.dtype == want.dtype
    assert np.array_equal(got, want)
    assert not np.isnan(got).any()  # every missing value filled
    decided = model.model.decision_function(model.scaler.transform(want))
    assert np.array_equal(model.decision(later), decided)
    assert any(BY_NAME[n].kind in ("count", "number") for n in NAMES)


def test_a_model_without_age_has_no_age_column():
    rng = np.random.default_rng(5)
    X = _features(rng, 500).drop(columns=["age"])
    model = Logistic().fit(X, (rng.random(500) < 0.3).astype(int))
    assert np.array_equal(model._design(X), _design_before(model, X))
    assert model._design(X).shape[1] == X.shape[1]
