"""The bootstrap spread of a model's figures (stratify.bootstrap): what a report's intervals
rest on, so a reader can tell a real difference between models from noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stratify.bootstrap import TOP, _Ranked, _resamples, bootstrap_intervals
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


def _ppv_over_the_whole_ranking(r: _Ranked, w: np.ndarray) -> float:
    """PPV in the top 5% as the sum over every person of the ranking (no prefix)."""
    k = np.ceil(TOP * w.sum())
    ws = w[r.desc]
    taken = np.clip(k - (np.cumsum(ws) - ws), 0, ws)
    return float((taken * r.y[r.desc]).sum() / k)


def test_ppv_read_from_the_top_of_the_ranking_is_the_whole_rankings():
    """PPV reads a prefix of the ranking, doubled until enough persons were drawn: equal to
    the sum over all, to the bit, also when the top of the ranking was hardly drawn (the
    prefix must grow) and with ties."""
    rng = np.random.default_rng(21)
    n = 60_000
    p = np.round(rng.beta(1, 6, n), 3)  # ties
    y = (rng.random(n) < p).astype(float)
    r = _Ranked(y, p)
    draws = list(_resamples(n, 4, seed=5))
    sparse = np.ones(n)
    sparse[r.desc[: n // 2]] = 0.0  # nobody of the top half drawn: the prefix must grow
    sparse[r.desc[-5:]] = 2.0
    for w in [*draws, sparse, np.ones(n)]:
        assert r.ppv(w) == _ppv_over_the_whole_ranking(r, w)
    assert r.ppv(sparse) != r.ppv(np.ones(n))


def test_auroc_and_slope_are_those_of_scikit_learn_and_statsmodels_on_the_resample():
    """A resample's AUROC is scikit-learn's with the counts as weights; its calibration
    slope is statsmodels' logistic fit of the outcome on logit(p) with the counts as
    frequency weights."""
    import statsmodels.api as sm
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(22)
    n = 20_000
    p = np.clip(np.round(rng.beta(1, 7, n), 3), 0.001, 0.999)
    y = (rng.random(n) < np.clip(1.3 * p, 0, 1)).astype(float)
    r = _Ranked(y, p)
    for w in _resamples(n, 3, seed=6):
        assert r.auroc(w) == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
        fit = sm.GLM(y, sm.add_constant(r.z), family=sm.families.Binomial(),
                     freq_weights=w).fit(tol=1e-12)
        assert r.slope(w) == pytest.approx(fit.params[1], abs=1e-8)
