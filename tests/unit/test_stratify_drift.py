"""Drift maths (stratify/drift.py) on hand-made numbers: each figure worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from stratify import drift

POLICY = {"feature_psi": 0.25, "source_share_points": 5.0, "score_psi": 0.1,
          "tier_churn_share": 0.2, "match_rate_drop_points": 2.0,
          "probabilistic_share_points": 5.0, "min_auroc": 0.7, "calibration_slope": [0.8, 1.2]}


def test_psi_of_identical_distributions_is_zero():
    values = pd.Series(np.arange(1000) % 37, dtype=float)
    assert drift.psi(values, values.sample(frac=1, random_state=1)) == pytest.approx(0.0)
    assert drift.psi_from_shares([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0)


def test_psi_of_a_known_shift_equals_the_hand_computed_value():
    # Two bins, 50/50 then 25/75: (0.25-0.5)ln(0.5) + (0.75-0.5)ln(1.5).
    by_hand = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert drift.psi_from_shares([50, 50], [25, 75]) == pytest.approx(by_hand)
    before = pd.Series(["a"] * 50 + ["b"] * 50)
    after = pd.Series(["a"] * 25 + ["b"] * 75)
    assert drift.psi(before, after) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(0.2747, abs=1e-4)


def test_psi_bins_a_numeric_variable_by_the_earlier_months_deciles():
    before = pd.Series(np.arange(100, dtype=float))  # deciles: 10 equal bins of 10
    after = pd.Series(np.arange(100, dtype=float) + 10)  # first bin empty, last bin doubled
    e, a = drift.bin_counts(before, after)
    assert list(e) == [10] * 10
    assert list(a) == [0, 10, 10, 10, 10, 10, 10, 10, 10, 20]
    by_hand = (drift.EPSILON - 0.1) * math.log(drift.EPSILON / 0.1) \
        + (0.2 - 0.1) * math.log(0.2 / 0.1)
    assert drift.psi(before, after) == pytest.approx(by_hand)


def test_psi_counts_missing_values_as_a_bin_and_refuses_bad_shares():
    e, a = drift.bin_counts(pd.Series([1.0, None, 2.0, 2.0]), pd.Series([1.0, 1.0, None, None]))
    assert list(e) == [1, 1, 2] and list(a) == [2, 2, 0]  # (missing), 1.0, 2.0
    with pytest.raises(ValueError, match="2 expected bins but 3"):
        drift.psi_from_shares([1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="no persons"):
        drift.psi_from_shares([0, 0], [1, 1])


def test_feature_psi_ranks_features_and_names_a_missing_one():
    before = pd.DataFrame({"x": [0] * 50 + [1] * 50, "y": [1, 2] * 50})
    after = pd.DataFrame({"x": [0] * 25 + [1] * 75, "y": [1, 2] * 50})
    table = drift.feature_psi(before, after)
    assert list(table["feature"]) == ["x", "y"]
    assert table.loc[0, "psi"] == pytest.approx(0.2747, abs=1e-4)
    assert table.loc[1, "psi"] == pytest.approx(0.0)
    assert table.loc[0, "mean_after"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="'z'"):
        drift.feature_psi(before, after, ["x", "z"])


def test_source_shares_count_each_person_once_per_source():
    shares = drift.source_shares(pd.Series(["apc;gp_events", "gp_events", "", "apc;apc"]))
    assert shares == {"apc": 0.5, "gp_events": 0.5}
    assert drift.source_shares(pd.Series([], dtype=object)) == {}
    changes = drift.share_changes({"apc": 0.5}, {"apc": 0.4, "ae": 0.1})
    assert changes["apc"]["change_points"] == pytest.approx(-10.0)
    assert changes["ae"] == {"before": 0.0, "after": 0.1, "change_points": pytest.approx(10.0)}


def test_tier_churn_counts_who_moved_and_why():
    before = pd.DataFrame({"person_key": ["a", "b", "c", "d", "e"],
                           "tier": ["low", "low", "high", "very_high", "moderate"]})
    after = pd.DataFrame({"person_key": ["a", "b", "c", "d", "f"],
                          "tier": ["high", "low", "moderate", "very_high", "low"],
                          "reason_group_1": ["frailty", "age", "activity", "age", "age"]})
    churn = drift.tier_churn(before, after)
    assert churn["in_both"] == 4 and churn["moved"] == 2 and churn["moved_share"] == 0.5
    assert (churn["up"], churn["down"], churn["new"], churn["gone"]) == (1, 1, 1, 1)
    assert churn["moves"] == {"low->high": 1, "high->moderate": 1}
    assert churn["up_by_reason"] == {"frailty": 1}
    assert churn["down_by_reason"] == {"activity": 1}
    plain = drift.tier_churn(before, after.drop(columns="reason_group_1"))
    assert plain["up_by_reason"] == {} and plain["moved"] == 2
    nobody = drift.tier_churn(before.iloc[:0], after)
    assert nobody["moved_share"] == 0.0 and nobody["new"] == 5


def test_score_distribution_reports_psi_and_tier_shares():
    before = pd.DataFrame({"probability": np.linspace(0, 1, 100),
                           "tier": ["low"] * 50 + ["high"] * 50})
    same = drift.score_distribution(before, before)
    assert same["psi_probability"] == pytest.approx(0.0)
    assert same["after"]["tier_shares"]["high"] == 0.5
    after = before.assign(tier=["low"] * 25 + ["high"] * 75)
    assert drift.score_distribution(before, after)["psi_tier"] == pytest.approx(0.2747,
                                                                                abs=1e-4)


def test_linkage_figures_and_changes():
    before = {"apc": {"nhs_number": 90, "probabilistic": 5, "unlinked": 5}}
    after = {"apc": {"nhs_number": 80, "probabilistic": 10, "unlinked": 10},
             "ae": {"unlinked": 0}}
    figures = drift.linkage_figures(before)
    assert figures["apc"]["match_rate"] == pytest.approx(0.95)
    assert figures["apc"]["probabilistic_share"] == pytest.approx(5 / 95)
    changes = drift.linkage_changes(before, after)
    assert changes["apc"]["match_rate_change_points"] == pytest.approx(-5.0)
    assert changes["apc"]["probabilistic_change_points"] == pytest.approx(100 * (10 / 90
                                                                                 - 5 / 95))
    assert math.isnan(changes["ae"]["match_rate_after"])


def test_performance_on_outcomes():
    y = np.array([0, 0, 1, 1])
    found = drift.performance(y, np.array([0.1, 0.2, 0.3, 0.4]))
    assert found["auroc"] == pytest.approx(1.0) and found["events"] == 2
    assert math.isnan(drift.performance(np.zeros(3), np.ones(3) / 2)["auroc"])
    with pytest.raises(ValueError, match="3 outcomes but 2"):
        drift.performance(np.zeros(3), np.zeros(2))


def test_warnings_name_each_figure_past_its_threshold_and_flag_retraining():
    figures = {
        "feature_psi": [{"feature": "x", "psi": 0.3}, {"feature": "y", "psi": 0.01}],
        "source_shares": {"apc": {"change_points": -6.0}, "ae": {"change_points": 1.0}},
        "score_distribution": {"psi_probability": 0.2},
        "tier_churn": {"moved_share": 0.25},
        "linkage": {"apc": {"match_rate_change_points": -3.0,
                            "probabilistic_change_points": 6.0}},
        "performance": {"auroc": 0.65, "calibration_slope": 1.5},
    }
    found = {(w["check"], w["subject"]): w for w in drift.warnings(figures, POLICY)}
    assert set(found) == {("feature_psi", "x"), ("source_share", "apc"),
                          ("score_psi", "probability"), ("tier_churn", "tiers"),
                          ("match_rate", "apc"), ("probabilistic_share", "apc"),
                          ("auroc", "model"), ("calibration_slope", "model")}
    assert found[("auroc", "model")]["retrain"] and not found[("feature_psi", "x")]["retrain"]
    calm = {"performance": {"auroc": float("nan"), "calibration_slope": 0.5}}
    assert [w["check"] for w in drift.warnings(calm, POLICY)] == ["calibration_slope"]
    assert drift.warnings({}, POLICY) == []
    assert drift.warnings({"performance": {"status": "awaiting outcomes"}}, POLICY) == []
