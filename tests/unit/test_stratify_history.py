"""Long-history features, reference-date features, and the same model whatever the keys."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

import numpy as np
import pandas as pd
import pytest

from factories import bench_score
from stratify.catalogue import BY_NAME, LONG_HISTORY, NAMES, history_years
from stratify.features import build_features
from stratify.scoring import score
from stratify.train import REFERENCE_FEATURES, draw, stable_order

AT = dt.date(2025, 4, 1)
D = dt.date


def _patients(*keys: str) -> pd.DataFrame:
    return pd.DataFrame({"extract_id": "gp1", "person_key": list(keys),
                         "birth_ym": ["1940-05"] * len(keys), "sex": ["2"] * len(keys),
                         "gp_practice_code": "A81001", "registration_date": D(2000, 1, 1)})


def _emergencies(person: str, *days: dt.date) -> pd.DataFrame:
    return pd.DataFrame({"extract_id": "apc1", "person_key": person,
                         "admission_date": list(days), "discharge_date": list(days),
                         "admission_method": "21", "discharge_destination": "19",
                         "primary_diagnosis": "J441", "secondary_diagnoses": None})


def test_history_window_is_whole_years_capped() -> None:
    assert history_years(None) == 5 and history_years(240) == 5
    assert history_years(24) == 2 and history_years(35) == 2 and history_years(5) == 1


def test_counts_per_year_years_with_an_admission_and_trend() -> None:
    apc = _emergencies("a", D(2025, 3, 1), D(2025, 1, 1),      # last year: 2
                       D(2022, 12, 1),                         # 24-36 months back
                       D(2021, 6, 1))                          # 4 years back
    sources = {"gp_patients": _patients("a", "b"), "apc": apc}
    full = build_features(sources, AT, lookback_months=None).loc["a"]
    assert full["emergency_admissions_12m"] == 2
    assert full["emergency_admissions_12_24m"] == 0
    assert full["emergency_admissions_24_36m"] == 1
    assert full["emergency_admissions_history"] == 4
    assert full["emergency_admission_years"] == 3
    # 2 last year against (4 - 2) over the 4 earlier years of a 5-year window
    assert full["emergency_admissions_trend"] == pytest.approx(2 - 2 / 4)
    # a 24-month window (a training date with two years of history) sees two years only,
    # at every date of the run, so training and scoring see alike
    short = build_features(sources, AT, lookback_months=24).loc["a"]
    assert short["emergency_admissions_24_36m"] == 0
    assert short["emergency_admissions_history"] == 2
    assert short["emergency_admission_years"] == 1
    assert short["emergency_admissions_trend"] == pytest.approx(2.0)
    # nothing recorded: every long-history feature at its default
    none = build_features(sources, AT, lookback_months=None).loc["b"]
    assert all(none[name] == BY_NAME[name].default for name in LONG_HISTORY)


def test_ae_years_and_change_in_medicines_and_social_care() -> None:
    ae = pd.DataFrame({"person_key": "a", "arrival_datetime": pd.to_datetime(
        ["2025-03-01 10:00", "2023-12-01 10:00", "2023-11-01 10:00", "2022-05-01 10:00"]),
        "arrival_mode": ["ambulance", "walk_in", "ambulance", "walk_in"],
        "discharge_status": "discharged"})
    meds = pd.DataFrame({"person_key": "a", "issue_date": [
        D(2025, 3, 1), D(2025, 2, 1), D(2025, 1, 1),           # last 6 months: 3 items, 2 drugs
        D(2024, 3, 1)],                                         # 12-18 months before: 1
        "bnf_code": ["0601022B0AAABAB", "0205051R0AAAAAA", "0601022B0AAABAB",
                     "0403030E0AAAAAA"]})
    care = pd.DataFrame({"person_key": "a", "service_type": ["home_care", "day_care",
                                                             "reablement"],
                         "start_date": [D(2023, 1, 1), D(2024, 12, 1), D(2023, 6, 1)],
                         "end_date": [None, None, D(2023, 8, 1)], "weekly_cost": 100.0})
    f = build_features({"gp_patients": _patients("a"), "ae": ae, "gp_medications": meds,
                        "social_care": care}, AT, lookback_months=None).loc["a"]
    assert f["ae_attendances_12m"] == 1 and f["ae_attendances_24m"] == 3
    assert f["ae_attendances_history"] == 4 and f["ae_years"] == 3
    assert f["ambulance_arrivals_history"] == 2
    assert f["ae_trend"] == pytest.approx(1 - 3 / 4)
    assert f["distinct_medicines_change_12m"] == 2 - 1
    assert f["medicine_issues_change_12m"] == 3 - 1
    # home care then and now, day care new: one more service than a year before
    assert f["sc_change_12m"] == 1 and f["sc_started_history"] == 3


def test_changes_read_well_and_reference_features_hold_no_history() -> None:
    trend = BY_NAME["emergency_admissions_trend"]
    assert trend.words(1.5) == "emergency admissions up by 1.5 a year"
    assert trend.words(-2.0) == "emergency admissions down by 2 a year"
    assert BY_NAME["emergency_admission_years"].words(3) == \
        "emergency admissions in 3 separate years"
    reference = set(REFERENCE_FEATURES)
    assert {"age", "sex_female", "ltc_count", "ltc_copd", "sc_active"} <= reference
    assert not reference & set(LONG_HISTORY)
    activity = [n for n in NAMES if n.startswith(("emergency_", "ae_", "op_", "days_since",
                                                   "ambulance", "gp_event", "community_"))]
    assert activity and not reference & set(activity)
    assert "in_hospital" not in reference and "hfrs" not in reference


def test_stable_order_follows_content_not_keys() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.integers(0, 3, 200).astype(np.float32),
                      "b": rng.random(200).astype(np.float32)},
                     index=[f"k{i}" for i in range(200)])
    X.loc["k5", "b"] = np.nan
    y = rng.integers(0, 2, 200)
    shuffle = rng.permutation(200)
    other = X.iloc[shuffle].set_axis([f"other{i}" for i in range(200)])
    first = X.iloc[stable_order(X, y)].to_numpy()
    second = other.iloc[stable_order(other, y[shuffle])].to_numpy()
    np.testing.assert_array_equal(first, second)
    assert draw(100, 0.2, 3, 1).sum() == 20
    np.testing.assert_array_equal(draw(100, 0.2, 3, 1), draw(100, 0.2, 3, 1))
    assert not np.array_equal(draw(100, 0.2, 3, 1), draw(100, 0.2, 4, 1))
    assert not np.array_equal(draw(100, 0.2, 3, 1), draw(100, 0.2, 3, 2))


def _keyed(sources: dict[str, pd.DataFrame], key: bytes
           ) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The sources under a person key made with `key` (as another data directory would)."""
    def pseudonym(person: str) -> str:
        return "P" + hmac.new(key, person.encode(), hashlib.sha256).hexdigest()[:20]

    persons = pd.unique(pd.concat([f["person_key"] for f in sources.values()]).astype(str))
    forward = {p: pseudonym(p) for p in persons}
    out = {name: frame.assign(person_key=frame["person_key"].astype(str).map(forward))
           for name, frame in sources.items()}
    return out, {k: p for p, k in forward.items()}


def test_the_same_data_under_other_keys_give_the_same_model() -> None:
    sources = bench_score().make_sources(800, seed=5)
    runs = []
    for _ in range(2):
        keyed, back = _keyed(sources, secrets.token_bytes(32))
        run = score(keyed, AT, seed=0)
        p = pd.Series(run.scores["probability"].to_numpy(),
                      index=run.scores["person_key"].map(back).to_numpy()).sort_index()
        runs.append((run, p))
    (one, p1), (two, p2) = runs
    assert p1.index.equals(p2.index) and len(p1) > 500
    np.testing.assert_array_equal(p1.to_numpy(), p2.to_numpy())
    assert one.metrics["training"] == two.metrics["training"]
    assert one.metrics["selection"] == two.metrics["selection"]
    assert one.thresholds == two.thresholds and one.model == two.model
    gain = one.metrics["training"]["history_gain"]
    assert {"auroc_model", "auroc_reference_only", "learner"} <= set(gain)
    assert 0.5 < gain["auroc_model"] <= 1 and 0.4 < gain["auroc_reference_only"] <= 1
    assert one.metrics["training"]["sampling"]["seed"] == 0
