"""stratify.forecast: weekly series by locality from landed rows, forecasts whose intervals
hold what a known process produces, and a back-test that states its error."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from stratify import forecast


def _key(i: int) -> str:
    return f"P{i:020x}"


def test_weekly_series_counts_old_peoples_admissions_by_locality_and_week() -> None:
    monday = pd.Timestamp("2024-01-01")  # a Monday
    gp = pd.DataFrame({"person_key": [_key(1), _key(2), _key(3)],
                       "birth_ym": ["1940-01", "1990-01", "1950-06"],
                       "sex": ["1", "2", "1"], "gp_practice_code": ["A1", "A1", "B2"],
                       "registration_date": [pd.Timestamp("2000-01-01")] * 3})
    apc = pd.DataFrame({
        "person_key": [_key(1), _key(2), _key(3), _key(3), _key(1)],
        "admission_date": [monday, monday, monday + pd.Timedelta(days=6),
                           monday + pd.Timedelta(days=7), monday + pd.Timedelta(days=8)],
        "discharge_date": [monday + pd.Timedelta(days=2), None, None, None,
                           monday + pd.Timedelta(days=9)],
        "admission_method": ["21", "21", "2A", "11", "21"],
        "discharge_destination": ["19", None, None, None, "54"]})
    care = pd.DataFrame({"person_key": [_key(2)], "service_type": ["reablement"],
                         "start_date": [monday + pd.Timedelta(days=1)], "end_date": [None],
                         "weekly_cost": [None]})
    out = forecast.weekly_series({"gp_patients": gp, "apc": apc, "social_care": care},
                                 {"A1": "North", "B2": "South"}, dt.date(2024, 1, 17))
    got = {(r.series, r.locality, r.week.date().isoformat()): r.count
           for r in out.itertuples()}
    assert got[("emergency_admissions_65plus", "North", "2024-01-01")] == 1  # aged 34 left out
    assert got[("emergency_admissions_65plus", "South", "2024-01-01")] == 1
    assert got[("emergency_admissions_65plus", "North", "2024-01-08")] == 1
    assert got[("emergency_admissions_65plus", "South", "2024-01-08")] == 0  # elective
    assert got[("discharges_home", "North", "2024-01-01")] == 1
    assert got[("discharges_care_home", "North", "2024-01-08")] == 1
    assert got[("starts_reablement", "North", "2024-01-01")] == 1
    assert max(r.week for r in out.itertuples()) < pd.Timestamp("2024-01-15")  # whole weeks


def _known_process(weeks: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(weeks)
    mu = 40 * np.exp(0.1 * t / 52) * (1 + 0.25 * np.sin(2 * np.pi * t / (365.25 / 7)))
    start = pd.Timestamp("2021-01-04")
    return pd.DataFrame({"series": "emergency_admissions_65plus", "locality": "North",
                         "week": [start + pd.Timedelta(weeks=int(i)) for i in t],
                         "count": rng.poisson(mu)})


def test_backtest_states_its_error_and_intervals_hold_about_their_level() -> None:
    series = _known_process(160, seed=4)
    tested = forecast.backtest(series)
    table = forecast.errors(tested).iloc[0]
    assert table["forecasts"] == len(tested) > 100
    assert 0.85 <= table["coverage95"] <= 1.0
    assert 0.65 <= table["coverage80"] <= 0.95
    assert table["mape"] < 0.2  # Poisson noise around 40 a week is about 16%
    assert table["mae"] < 8
    assert tested["origin"].min() >= series["week"].iloc[-52]


def test_forecast_runs_ahead_with_ordered_intervals_and_skips_short_series() -> None:
    series = pd.concat([_known_process(120, seed=5),
                        _known_process(10, seed=6).assign(locality="South")])
    out = forecast.forecast(series, weeks=12)
    assert set(out["locality"]) == {"North"}
    assert len(out) == 12
    assert (out["lo95"] <= out["lo80"]).all() and (out["lo80"] <= out["mean"]).all()
    assert (out["mean"] <= out["hi80"]).all() and (out["hi80"] <= out["hi95"]).all()
    assert out["week"].min() == series.loc[series["locality"] == "North", "week"].max() \
        + pd.Timedelta(weeks=1)


def test_overdispersed_counts_get_wider_intervals() -> None:
    rng = np.random.default_rng(7)
    base = _known_process(120, seed=7)
    wild = base.assign(count=rng.poisson(rng.gamma(2.0, base["count"] / 2.0)))
    calm = forecast.predict(forecast.fit(base["count"].to_numpy()), 4)
    noisy = forecast.predict(forecast.fit(wild["count"].to_numpy()), 4)
    assert ((noisy["hi95"] - noisy["lo95"]) > (calm["hi95"] - calm["lo95"])).all()
