"""The bootstrap spread of a model's figures (stratify.bootstrap): what a report's intervals
rest on, so a reader can tell a real difference between models from noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stratify.bootstrap import bootstrap_intervals
from stratify.evaluate import metrics


def _population(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Outcomes drawn from known probabilities; a sharp model and a blurred one."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.01, 0.6, n)
    y = (rng.random(n) < p).astype(int)
    blurred = np.clip(p + rng.normal(0, 0.15, n), 0.005, 0.995)
    return y, {"chosen": p, "blurred": blurred, "coarse": np.round(p, 1).clip(0.05)}


def _table(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index(["model", "figure"])


def test_estimates_are_the_evaluation_figures_and_inside_their_intervals() -> None:
    y, models = _population(3000, 1)
    spread, _ = bootstrap_intervals(y, models, resamples=100, seed=0)
    table = _table(spread)
    for name, p in models.items():
        plain = metrics(y, p)  # the figures the report's tables show
        for figure in ("auroc", "calibration_slope", "ppv_top5"):
            row = table.loc[(name, figure)]
            # (the slope: exact Newton steps here, sklearn's lbfgs to its tolerance there)
            tolerance = 1e-3 if figure == "calibration_slope" else 1e-9
            assert row["estimate"] == pytest.approx(plain[figure], abs=tolerance)
            assert row["lo"] <= row["estimate"] <= row["hi"]
            assert row["hi"] - row["lo"] > 0 and row["sd"] > 0


def test_intervals_narrow_with_more_data() -> None:
    small_y, small = _population(400, 2)
    large_y, large = _population(8000, 2)
    narrow = _table(bootstrap_intervals(large_y, large, resamples=100, seed=0)[0])
    wide = _table(bootstrap_intervals(small_y, small, resamples=100, seed=0)[0])
    width = lambda t: t["hi"] - t["lo"]  # noqa: E731
    assert (width(narrow) < width(wide)).all()
    # about 1/sqrt(20) as wide for 20 times the persons; well under half in every cell
    assert (width(narrow) < 0.5 * width(wide)).all()


def test_deterministic_given_the_seed_and_different_with_another() -> None:
    y, models = _population(1500, 3)
    first = bootstrap_intervals(y, models, resamples=50, seed=7)
    again = bootstrap_intervals(y, models, resamples=50, seed=7)
    other = bootstrap_intervals(y, models, resamples=50, seed=8)
    pd.testing.assert_frame_equal(first[0], again[0])
    pd.testing.assert_frame_equal(first[1], again[1])
    assert not np.allclose(first[0]["lo"], other[0]["lo"])
    np.testing.assert_allclose(first[0]["estimate"], other[0]["estimate"])


def test_differences_tell_a_real_gap_from_noise() -> None:
    """Paired resamples: a blurred copy of the model is worse in (nearly) every resample; a
    model against an identical copy of itself is left out (no difference to tell)."""
    y, models = _population(4000, 4)
    models["copy"] = models["chosen"].copy()
    _, differences = bootstrap_intervals(y, models, resamples=100, seed=0)
    assert set(differences["model"]) == {"blurred", "coarse"}
    auroc = differences.set_index(["model", "figure"]).loc[("blurred", "auroc")]
    assert auroc["hi"] < 0 and auroc["share_better"] < 0.05
    assert auroc["lo"] <= auroc["estimate"] <= auroc["hi"]
    # the same model on a re-drawn sample of outcomes is not told apart from itself
    rng = np.random.default_rng(9)
    noise = {"chosen": models["chosen"],
             "jitter": np.clip(models["chosen"] * np.exp(rng.normal(0, 0.01, len(y))),
                               0.005, 0.995)}
    _, close = bootstrap_intervals(y, noise, resamples=100, seed=0)
    row = close.set_index(["model", "figure"]).loc[("jitter", "auroc")]
    assert row["lo"] < 0 < row["hi"]


def test_bad_input_is_refused_by_name() -> None:
    y, models = _population(100, 5)
    with pytest.raises(ValueError, match=r"models\['blurred'\]: 99 probabilities for 100"):
        bootstrap_intervals(y, {**models, "blurred": models["blurred"][:99]}, resamples=10)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_intervals(y, models, resamples=1)


def test_no_events_gives_no_figure_rather_than_a_false_one() -> None:
    y = np.zeros(200, dtype=int)
    spread, _ = bootstrap_intervals(y, {"chosen": np.linspace(0.01, 0.5, 200)}, resamples=10)
    table = _table(spread)
    assert np.isnan(table.loc[("chosen", "auroc"), "estimate"])
    assert np.isnan(table.loc[("chosen", "calibration_slope"), "lo"])
    assert table.loc[("chosen", "ppv_top5"), "estimate"] == 0.0
