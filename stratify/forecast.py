"""Demand and capacity: weekly series by locality, forecast with prediction intervals and
back-tested on the last year.

`weekly_series` counts, per week (Monday to Sunday) and locality (the person's practice's,
by the geography table handed in): emergency admissions of people aged 65+ on the day of
admission; discharges of people 65+ by where they went (`discharge_destination`, grouped in
DESTINATION_GROUPS: home, bedded care, care home, died, other), unless discharges by pathway
are handed in from the journeys analysis; and new reablement and home care packages
(social care `start_date`). `forecast` fits each series with a Poisson GLM (statsmodels:
log-linear trend and, with a year or more of history, annual Fourier terms), widens it for
overdispersion (negative binomial draws at the dispersion the fit shows) and draws the
prediction intervals from simulation over the parameters' uncertainty. `backtest` forecasts
12 weeks from origins every 4 weeks through the last 52 weeks, each fitted only on the weeks
before it, and states the error (MAE, MAPE where the week's count is not 0, WAPE) and how often
the intervals held the actual count. Methods: docs/impact.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stratify.sources import EMERGENCY_METHODS, prepare

UNKNOWN = "unknown"
OLD = 65
WEEK = 7
YEAR_WEEKS = 365.25 / 7
HARMONICS = 2
MIN_WEEKS = 26
LEVELS = (0.8, 0.95)
DRAWS = 1000
# HES discharge destination codes, grouped where a person went.
DESTINATION_GROUPS = {
    "home": ("19", "29"),
    "bedded_care": ("48", "49", "50", "51", "52", "53", "84", "87", "88"),
    "care_home": ("54", "65", "85"),
    "died": ("79",),
}


def week_of(dates: pd.Series) -> pd.Series:
    """The Monday starting each date's week."""
    days = pd.to_datetime(dates).dt.normalize()
    return days - pd.to_timedelta(days.dt.dayofweek, unit="D")


def _destination(codes: pd.Series) -> pd.Series:
    out = pd.Series("other", index=codes.index, dtype=object)
    for group, members in DESTINATION_GROUPS.items():
        out[codes.isin(members)] = group
    return out


def _persons(frames: dict[str, pd.DataFrame], locality_of: Mapping[str, str]) -> pd.DataFrame:
    """Per person: locality (from the latest GP registration's practice) and birth month."""
    gp = frames.get("gp_patients")
    if gp is None or not len(gp):
        return pd.DataFrame(columns=["locality", "born"], index=pd.Index([], name="person_key"))
    latest = gp.sort_values("registration_date").groupby("person_key").last()
    born = pd.to_datetime(latest["birth_ym"] + "-01", errors="coerce") \
        if "birth_ym" in latest else pd.Series(pd.NaT, index=latest.index)
    return pd.DataFrame({"locality": latest["gp_practice_code"].map(
        lambda p: locality_of.get(p, UNKNOWN) if isinstance(p, str) else UNKNOWN),
        "born": born}, index=latest.index)


def _aged(persons: pd.DataFrame, keys: pd.Series, on: pd.Series) -> np.ndarray:
    born = persons["born"].reindex(keys.to_numpy()).to_numpy()
    age = (pd.to_datetime(on).to_numpy() - born) / np.timedelta64(1, "D") / 365.25
    return np.asarray(age >= OLD)


def weekly_series(sources: dict[str, pd.DataFrame], locality_of: Mapping[str, str],
                  until: dt.date, pathways: pd.DataFrame | None = None) -> pd.DataFrame:
    """Weekly counts: series, locality, week (Monday), count; every week from each source's
    first to the last whole week before `until`, zeros included.

    `pathways` (optional): discharges as person_key, discharge_date and pathway (from the
    journeys analysis); when given, discharges are counted by pathway instead of by
    destination group."""
    frames = prepare(sources)
    persons = _persons(frames, locality_of)
    end = pd.Timestamp(until) - pd.Timedelta(days=pd.Timestamp(until).dayofweek)
    parts: list[pd.DataFrame] = []

    def add(name: pd.Series | str, keys: pd.Series, dates: pd.Series) -> None:
        frame = pd.DataFrame({"series": name, "person_key": keys.to_numpy(),
                              "week": week_of(dates).to_numpy()})
        frame["locality"] = persons["locality"].reindex(frame["person_key"]).fillna(
            UNKNOWN).to_numpy()
        parts.append(frame[frame["week"] < end])

    apc = frames.get("apc")
    if apc is not None:
        old_in = _aged(persons, apc["person_key"], apc["admission_date"])
        emergency = apc[apc["admission_method"].isin(EMERGENCY_METHODS).to_numpy() & old_in]
        add("emergency_admissions_65plus", emergency["person_key"], emergency["admission_date"])
        if pathways is None:
            done = apc[apc["discharge_date"].notna()]
            old_out = _aged(persons, done["person_key"], done["discharge_date"])
            done = done[old_out]
            add("discharges_" + _destination(done["discharge_destination"]),
                done["person_key"], done["discharge_date"])
    if pathways is not None and len(pathways):
        add("discharges_" + pathways["pathway"].astype(str), pathways["person_key"],
            pathways["discharge_date"])
    care = frames.get("social_care")
    if care is not None:
        for service in ("reablement", "home_care"):
            started = care[care["service_type"] == service]
            add(f"starts_{service}", started["person_key"], started["start_date"])
    columns = ["series", "locality", "week", "count"]
    events = pd.concat(parts, ignore_index=True).dropna(subset=["week"]) if parts else None
    if events is None or events.empty:
        return pd.DataFrame(columns=columns)
    counts = events.groupby(["series", "locality", "week"]).size().rename("count")
    filled = []
    for (series, locality), group in counts.groupby(level=["series", "locality"]):
        weeks = pd.date_range(group.index.get_level_values("week").min(),
                              end - pd.Timedelta(days=WEEK), freq="7D")
        values = group.droplevel(["series", "locality"]).reindex(weeks, fill_value=0)
        filled.append(pd.DataFrame({"series": series, "locality": locality, "week": weeks,
                                    "count": values.to_numpy().astype(int)}))
    return pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(columns=columns)


def _design(t: np.ndarray, seasonal: bool) -> np.ndarray:
    columns = [np.ones(len(t)), t / YEAR_WEEKS]
    if seasonal:
        for k in range(1, HARMONICS + 1):
            angle = 2 * np.pi * k * t / YEAR_WEEKS
            columns += [np.sin(angle), np.cos(angle)]
    return np.column_stack(columns)


@dataclass
class Fitted:
    """A fitted series: coefficients, their covariance and the overdispersion."""

    params: np.ndarray
    cov: np.ndarray
    alpha: float  # negative binomial: variance = mu + alpha * mu^2
    seasonal: bool
    weeks: int


def fit(counts: np.ndarray) -> Fitted:
    """Poisson GLM of weekly counts on trend (and annual Fourier terms with 52+ weeks)."""
    import statsmodels.api as sm

    t = np.arange(len(counts), dtype=float)
    seasonal = len(counts) >= YEAR_WEEKS
    x = _design(t, seasonal)
    model = sm.GLM(counts.astype(float), x, family=sm.families.Poisson())
    result = model.fit()
    mu = result.mu
    dispersion = float(result.pearson_chi2 / max(result.df_resid, 1))
    alpha = max(0.0, (dispersion - 1.0) / max(float(mu.mean()), 1e-9))
    cov = np.asarray(result.cov_params()) * max(dispersion, 1.0)
    return Fitted(np.asarray(result.params), cov, alpha, seasonal, len(counts))


def predict(model: Fitted, horizon: int, seed: int = 0) -> pd.DataFrame:
    """Mean and prediction intervals (LEVELS) for the `horizon` weeks after the fit's last:
    parameters drawn from their estimated distribution, counts from a negative binomial
    (Poisson when not overdispersed) around each draw."""
    rng = np.random.default_rng(seed)
    t = np.arange(model.weeks, model.weeks + horizon, dtype=float)
    x = _design(t, model.seasonal)
    mean = np.exp(x @ model.params)
    try:
        betas = rng.multivariate_normal(model.params, model.cov, size=DRAWS,
                                        check_valid="ignore")
    except np.linalg.LinAlgError:  # pragma: no cover - a degenerate covariance
        betas = np.repeat(model.params[None, :], DRAWS, axis=0)
    mu = np.exp(np.clip(betas @ x.T, -30, 30))
    if model.alpha > 0:
        shape = 1.0 / model.alpha
        draws = rng.poisson(rng.gamma(shape, mu / shape))
    else:
        draws = rng.poisson(mu)
    out = {"step": np.arange(1, horizon + 1), "mean": mean}
    for level in LEVELS:
        tail = (1 - level) / 2
        out[f"lo{int(level * 100)}"] = np.quantile(draws, tail, axis=0)
        out[f"hi{int(level * 100)}"] = np.quantile(draws, 1 - tail, axis=0)
    return pd.DataFrame(out)


def forecast(series: pd.DataFrame, weeks: int = 12, seed: int = 0) -> pd.DataFrame:
    """Each (series, locality) forecast `weeks` ahead from all its history: series, locality,
    week, mean, lo80, hi80, lo95, hi95. Series with fewer than MIN_WEEKS weeks are left out."""
    out = []
    for (name, locality), group in series.groupby(["series", "locality"], sort=True):
        counts = group.sort_values("week")["count"].to_numpy()
        if len(counts) < MIN_WEEKS:
            continue
        predicted = predict(fit(counts), weeks, seed)
        last = group["week"].max()
        predicted["week"] = [last + pd.Timedelta(days=WEEK * s) for s in predicted["step"]]
        predicted.insert(0, "locality", locality)
        predicted.insert(0, "series", name)
        out.append(predicted.drop(columns="step"))
    columns = ["series", "locality", "week", "mean", "lo80", "hi80", "lo95", "hi95"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def backtest(series: pd.DataFrame, weeks: int = 12, span: int = 52, every: int = 4,
             seed: int = 0) -> pd.DataFrame:
    """Forecasts from origins every `every` weeks through the last `span` weeks, each fitted
    on the weeks before its origin only, against what happened: series, locality, origin,
    step, actual, mean and the intervals (a forecast running past the data is cut short)."""
    out = []
    for (name, locality), group in series.groupby(["series", "locality"], sort=True):
        ordered = group.sort_values("week")
        counts = ordered["count"].to_numpy()
        weeks_of = ordered["week"].to_numpy()
        first = max(len(counts) - span, MIN_WEEKS)
        for origin in range(first, len(counts), every):
            horizon = min(weeks, len(counts) - origin)
            predicted = predict(fit(counts[:origin]), horizon, seed)
            predicted["actual"] = counts[origin:origin + horizon]
            predicted["origin"] = weeks_of[origin]
            predicted["series"], predicted["locality"] = name, locality
            out.append(predicted)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(
        columns=["series", "locality", "origin", "step", "actual", "mean", "lo80", "hi80",
                 "lo95", "hi95"])


def errors(backtested: pd.DataFrame, by: tuple[str, ...] = ("series",)) -> pd.DataFrame:
    """The back-test's error per `by`: forecasts, MAE, MAPE (weeks with a count above 0),
    WAPE (absolute error over actual, summed) and coverage of the 80% and 95% intervals."""
    data = backtested.copy()
    data["abs_error"] = (data["actual"] - data["mean"]).abs()
    data["ape"] = (data["abs_error"] / data["actual"]).where(data["actual"] > 0)
    for level in (80, 95):
        data[f"in{level}"] = (data["actual"] >= data[f"lo{level}"]) & (
            data["actual"] <= data[f"hi{level}"])
    grouped = data.groupby(list(by))
    table = pd.DataFrame({
        "forecasts": grouped.size(),
        "mae": grouped["abs_error"].mean(),
        "mape": grouped["ape"].mean(),
        "wape": grouped["abs_error"].sum() / grouped["actual"].sum().replace(0, np.nan),
        "coverage80": grouped["in80"].mean(),
        "coverage95": grouped["in95"].mean()})
    return table.reset_index()
