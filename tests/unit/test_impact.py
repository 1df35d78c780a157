"""stratify.impact: the cohort file's checks, matching and balance, and difference in
differences that recovers an injected effect (and finds none where none was injected)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from stratify import impact

START = dt.date(2024, 4, 1)


def _key(i: int) -> str:
    return f"P{i:020x}"


def _world(persons: int = 800, cohort: int = 120, removed: float = 0.0, seed: int = 1
           ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, pd.DataFrame, float]:
    """Persons with a frailty level that drives admissions; the cohort is drawn from the
    frailer (selection on prior use, as an MDT would choose). After the start, `removed` of
    the cohort's emergency admissions are taken away. Returns sources, the cohort, the
    covariates and the true effect per cohort member."""
    rng = np.random.default_rng(seed)
    keys = [_key(i) for i in range(persons)]
    frailty = rng.gamma(2.0, 0.5, persons)
    age = rng.integers(65, 95, persons)
    sex = rng.choice(["1", "2"], persons)
    weights = frailty / frailty.sum()
    chosen = rng.choice(persons, cohort, replace=False, p=weights)
    in_cohort = np.zeros(persons, dtype=bool)
    in_cohort[chosen] = True
    start = pd.Timestamp(START)
    rows, removed_count = [], 0
    for i in range(persons):
        for period, offset in (("before", -365), ("after", 0)):
            n = rng.poisson(frailty[i] * 1.2)
            days = rng.integers(0, 365, n)
            for d in days:
                if period == "after" and in_cohort[i] and rng.random() < removed:
                    removed_count += 1
                    continue
                admitted = start + pd.Timedelta(days=int(offset + d))
                rows.append({"person_key": keys[i], "admission_date": admitted,
                             "discharge_date": admitted + pd.Timedelta(days=3),
                             "admission_method": "21", "discharge_destination": "19"})
    apc = pd.DataFrame(rows)
    ae = apc.loc[apc.index % 2 == 0, ["person_key"]].assign(
        arrival_datetime=apc["admission_date"] - pd.Timedelta(hours=3))
    sources = {"apc": apc, "ae": ae}
    prior = apc[apc["admission_date"] < start].groupby("person_key").size()
    covariates = pd.DataFrame({
        "start": start, "age": age, "sex": sex,
        "segment": np.where(frailty > 1.5, "frailty", "stable_chronic"),
        "prior_admissions": prior.reindex(keys).fillna(0).to_numpy(),
        "risk": 1 - np.exp(-frailty)}, index=pd.Index(keys, name="person_key"))
    cohort_frame = pd.DataFrame({"person_key": [keys[i] for i in chosen], "start": START})
    return sources, cohort_frame, covariates, -removed_count / cohort


def test_injected_effect_is_recovered_within_its_interval() -> None:
    sources, cohort, covariates, truth = _world(removed=0.5)
    result = impact.evaluate(sources, cohort, covariates, outcomes=("emergency_admissions",))
    row = result.estimates.set_index("outcome").loc["emergency_admissions"]
    assert truth < -0.3  # the injected effect is large enough to matter
    assert row["ci_low"] <= truth <= row["ci_high"]
    assert row["ci_high"] < 0  # and the method sees it
    assert result.matched > 0.9 * len(cohort)


def test_no_effect_gives_an_interval_covering_zero() -> None:
    sources, cohort, covariates, truth = _world(removed=0.0, seed=2)
    assert truth == 0
    result = impact.evaluate(sources, cohort, covariates)
    for row in result.estimates.itertuples():
        assert row.ci_low <= 0 <= row.ci_high, row.outcome


def test_matching_balances_a_selected_cohort_and_says_so() -> None:
    _, cohort, covariates, _ = _world(seed=3)
    matched = impact.match(covariates, cohort)
    balance = matched.balance.set_index("covariate")
    assert balance.loc["prior_admissions", "smd_before"] > 0.3  # chosen on prior use
    assert balance["smd_after"].abs().max() <= impact.SMD_LIMIT
    assert matched.balanced and "were balanced" in matched.statement
    assert not set(matched.pairs["control"]) & set(cohort["person_key"])


def test_groups_that_cannot_be_balanced_are_named_plainly() -> None:
    keys = [_key(i) for i in range(60)]
    covariates = pd.DataFrame({"start": pd.Timestamp(START),
                               "age": [90] * 10 + [20] * 50},
                              index=pd.Index(keys, name="person_key"))
    cohort = pd.DataFrame({"person_key": keys[:10], "start": START})
    matched = impact.match(covariates, cohort)
    assert not matched.balanced
    assert "could NOT be balanced" in matched.statement


def test_outcome_windows_count_before_and_after_and_price_spend() -> None:
    start = pd.Timestamp(START)
    apc = pd.DataFrame({"person_key": [_key(1)] * 3,
                        "admission_date": [start - pd.Timedelta(days=10), start,
                                           start + pd.Timedelta(days=400)],
                        "discharge_date": [start - pd.Timedelta(days=8),
                                           start + pd.Timedelta(days=5), pd.NaT],
                        "admission_method": ["21", "11", "2A"]})
    care = pd.DataFrame({"person_key": [_key(1)], "service_type": ["home_care"],
                         "start_date": [start - pd.Timedelta(days=7)],
                         "end_date": [start + pd.Timedelta(days=14)], "weekly_cost": [None]})
    people = pd.DataFrame({"person_key": [_key(1)], "start": [START]})
    costs = impact.UnitCosts()
    out = impact.outcome_windows({"apc": apc, "social_care": care}, people, 12, costs)
    before = out[out["period"] == "before"].iloc[0]
    after = out[out["period"] == "after"].iloc[0]
    assert (before["emergency_admissions"], after["emergency_admissions"]) == (1, 0)
    assert before["emergency_bed_days"] == 2
    assert before["spend"] == costs.emergency_admission + 2 * costs.bed_day \
        + costs.social_care_week
    assert after["spend"] == costs.elective_admission + 5 * costs.bed_day \
        + 2 * costs.social_care_week
    assert before["ae_attendances"] == after["ae_attendances"] == 0


@pytest.mark.parametrize(("text", "message"), [
    ("key,start\n", "header"),
    ("person_key,start_date\n", "no rows"),
    ("person_key,start_date\nP0001,2024-01-01\n", "row 1: person_key"),
    (f"person_key,start_date\n{_key(1)},2024-13-01\n", "row 1: start_date"),
    (f"person_key,start_date\n{_key(1)},2024-01-01\n{_key(2)}\n", "row 2: must have 2"),
    (f"person_key,start_date\n{_key(1)},2024-01-01\n{_key(2)},2024-01-01\n"
     f"{_key(1)},2024-02-01\n", "row 3: person_key repeats row 1"),
    (f"person_key,start_date\n{_key(1)},2024-01-01\n{_key(9)},2024-01-01\n",
     "row 2: person_key is not a person"),
])
def test_a_bad_cohort_is_refused_naming_the_row_never_the_value(text: str,
                                                               message: str) -> None:
    with pytest.raises(impact.CohortError, match=message) as caught:
        impact.read_cohort(text, known={_key(1), _key(2)})
    assert _key(9) not in str(caught.value) and "P0001" not in str(caught.value)


def test_a_good_cohort_is_read() -> None:
    frame = impact.read_cohort(f"person_key,start_date\n{_key(1)},2024-01-01\n\n",
                               known={_key(1)})
    assert frame.to_dict("records") == [{"person_key": _key(1), "start": dt.date(2024, 1, 1)}]


def test_an_unknown_outcome_is_refused() -> None:
    sources, cohort, covariates, _ = _world(persons=100, cohort=10)
    with pytest.raises(ValueError, match="outcome"):
        impact.evaluate(sources, cohort, covariates, outcomes=("happiness",))


def test_a_pricer_prices_spend_in_each_window_it_is_given() -> None:
    seen: list[pd.DataFrame] = []

    def pricer(windows: pd.DataFrame) -> pd.DataFrame:
        seen.append(windows)
        days = (pd.to_datetime(windows["end"]) - pd.to_datetime(windows["start"])).dt.days
        return pd.DataFrame({"window": windows["window"], "total": days.astype(float)})

    people = pd.DataFrame({"person_key": [_key(1), _key(2)], "start": [START, START]})
    out = impact.outcome_windows({}, people, 12, pricer=pricer)
    assert set(out.loc[out["period"] == "before", "spend"]) == {366.0}  # 2023-04-01 to start
    assert set(out.loc[out["period"] == "after", "spend"]) == {365.0}
    assert len(seen[0]) == 4 and seen[0]["window"].is_unique


def test_cohort_members_absent_at_their_start_are_counted_and_said() -> None:
    _, cohort, covariates, _ = _world(persons=300, cohort=30, seed=8)
    gone = cohort["person_key"].iloc[:3]
    matched = impact.match(covariates.drop(index=gone), cohort)
    assert matched.absent == 3
    assert "3 of 30 cohort members were not alive and registered" in matched.statement
    assert not set(gone) & set(matched.pairs["person_key"])


def test_covariates_carry_the_serving_models_risk_at_each_start() -> None:
    from pipeline.impact import covariates_at

    keys = [_key(i) for i in range(12)]
    gp = pd.DataFrame({"person_key": keys, "birth_ym": "1940-01", "sex": "2",
                       "gp_practice_code": "B86001",
                       "registration_date": pd.Timestamp("2010-01-01")})

    class Model:
        version, chosen, lookback_months = "v1", "rule", None

        def probabilities(self, features: pd.DataFrame) -> dict[str, np.ndarray]:
            return {"rule": np.linspace(0.1, 0.9, len(features))}

    starts = [dt.date(2024, 1, 1), dt.date(2024, 7, 1)]
    frame, used = covariates_at({"gp_patients": gp}, starts, Model())
    assert used["risk"] == "score run model v1/rule"
    assert len(frame) == 24 and set(frame["start"]) == {pd.Timestamp(d) for d in starts}
    assert frame["risk"].between(0.1, 0.9).all() and frame["segment"].notna().all()
    assert frame.loc[frame["start"] == pd.Timestamp(starts[1]), "age"].eq(84).all()
    _, none = covariates_at({"gp_patients": gp}, starts[:1], None)
    assert none["risk"].startswith("none")


def test_an_evaluation_over_fewer_matched_than_the_rule_allows_is_refused() -> None:
    """Promise (F7): the means an evaluation shows are over the matched cohort and the
    comparison group, so each must hold at least the small-number threshold (8), whatever the
    size of the cohort submitted: a cohort of 8 with 7 matched is refused, plainly."""
    sources, cohort, covariates, _ = _world(persons=200, cohort=8, seed=4)
    whole = impact.evaluate(sources, cohort, covariates, outcomes=("emergency_admissions",),
                            ratio=2, at_least=8)
    assert whole.matched >= 8 and whole.comparison >= 8
    gone = cohort["person_key"].iat[0]  # not alive and registered at their start
    with pytest.raises(impact.GroupsTooSmall) as refused:
        impact.evaluate(sources, cohort, covariates.drop(index=gone),
                        outcomes=("emergency_admissions",), ratio=2, at_least=8)
    message = str(refused.value)
    assert "7 of 8 cohort members were matched" in message and "at least 8" in message
    assert not any(k in message for k in covariates.index)  # no person key in the refusal
    # the comparison group is held to the same rule: one control for the whole cohort
    few = pd.concat([covariates.loc[cohort["person_key"]], covariates.drop(
        index=cohort["person_key"]).iloc[:1]])
    with pytest.raises(impact.GroupsTooSmall, match="comparison persons"):
        impact.evaluate(sources, cohort, few, outcomes=("emergency_admissions",), at_least=8)
