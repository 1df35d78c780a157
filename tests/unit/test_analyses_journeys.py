"""Journeys after discharge (stratify.journeys): each rule of docs/analyses.md on small
hand-made journeys, the awkward ones included (readmitted before any service starts, two
discharges within 30 days, a service starting before the discharge, death in hospital)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from stratify.journeys import discharge_journeys

START, END, THROUGH = dt.date(2024, 4, 1), dt.date(2025, 4, 1), dt.date(2026, 3, 31)


def spell(person: str, admitted: str, discharged: str | None, method: str = "21",
          destination: str = "19", born: str = "1940-01") -> dict:
    return {"person_key": person, "admission_date": admitted, "discharge_date": discharged,
            "admission_method": method, "discharge_destination": destination,
            "birth_ym": born}


def world(spells: list[dict], social: list[tuple] = (), community: list[tuple] = (),
          deaths: list[tuple] = ()) -> dict[str, pd.DataFrame]:
    """Sources from hand-made rows: social (person, type, start, end), community (person,
    service, date), deaths (person, date)."""
    people = sorted({s["person_key"] for s in spells})
    out = {"apc": pd.DataFrame(spells),
           "gp_patients": pd.DataFrame({"person_key": people, "registration_date": "2000-01-01",
                                        "gp_practice_code": "A81001",
                                        "birth_ym": [next(s["birth_ym"] for s in spells
                                                          if s["person_key"] == p)
                                                     for p in people]})}
    if social:
        out["social_care"] = pd.DataFrame(social, columns=["person_key", "service_type",
                                                           "start_date", "end_date"])
    if community:
        out["community"] = pd.DataFrame(community, columns=["person_key", "service",
                                                            "contact_date"])
    if deaths:
        out["deaths"] = pd.DataFrame(deaths, columns=["person_key", "date_of_death"])
    return out


def journeys(sources: dict[str, pd.DataFrame], through: dt.date = THROUGH) -> pd.DataFrame:
    return discharge_journeys(sources, START, END, through=through)


def one(sources: dict[str, pd.DataFrame], **kw) -> pd.Series:
    found = journeys(sources, **kw)
    assert len(found) == 1
    return found.iloc[0]


def test_home_with_no_new_support_is_pathway_0_and_at_home_at_91_days() -> None:
    row = one(world([spell("A", "2024-05-01", "2024-05-10")]))
    assert row["pathway"] == "pathway_0"
    assert row["at_home_91d"] and row["outcome_91d"] == "at_home"
    assert not row["readmitted_30d"] and not row["readmitted_91d"]
    assert not row["died_91d"] and not row["long_term_care_12m"]
    assert row["age_band"] == "75-84" and row["length_of_stay"] == 9
    assert row["month"] == "2024-05" and row["gp_practice_code"] == "A81001"


def test_only_people_65_and_over_in_the_period_and_not_day_cases_or_maternity() -> None:
    found = journeys(world([
        spell("young", "2024-05-01", "2024-05-10", born="1970-01"),
        spell("before", "2024-03-01", "2024-03-10"),
        spell("daycase", "2024-06-01", "2024-06-01", method="11"),
        spell("elective", "2024-06-01", "2024-06-03", method="11"),
        spell("open", "2025-03-01", None),
        spell("turned65", "2024-06-01", "2024-06-05", born="1959-05"),
    ]))
    assert sorted(found["person_key"]) == ["elective", "turned65"]


def test_reablement_within_14_days_is_pathway_1_and_after_15_days_is_not() -> None:
    found = journeys(world(
        [spell("in", "2024-05-01", "2024-05-10"), spell("late", "2024-05-01", "2024-05-10")],
        social=[("in", "reablement", "2024-05-24", "2024-06-20"),
                ("late", "reablement", "2024-05-25", "2024-06-20")])).set_index("person_key")
    assert found.loc["in", "pathway"] == "pathway_1"
    assert found.loc["in", "days_to_support"] == 14
    assert found.loc["in", "support"] == "social_care_reablement"
    assert found.loc["late", "pathway"] == "pathway_0"


def test_community_reablement_is_new_support_but_an_ongoing_service_is_not() -> None:
    found = journeys(world(
        [spell("new", "2024-05-01", "2024-05-10"), spell("old", "2024-05-01", "2024-05-10")],
        community=[("new", "reablement", "2024-05-12"),
                   ("old", "district_nursing", "2024-04-20"),
                   ("old", "district_nursing", "2024-05-12")])).set_index("person_key")
    assert found.loc["new", "pathway"] == "pathway_1"
    assert found.loc["new", "support"] == "community_reablement"
    assert found.loc["old", "pathway"] == "pathway_0"


def test_care_package_running_before_admission_is_existing_support_pathway_0() -> None:
    row = one(world([spell("A", "2024-05-01", "2024-05-10")],
                    social=[("A", "home_care", "2023-01-01", None)]))
    assert row["pathway"] == "pathway_0" and row["existing_support"]


def test_a_service_that_starts_before_the_discharge_counts_for_it() -> None:
    row = one(world([spell("A", "2024-05-01", "2024-05-10")],
                    social=[("A", "home_care", "2024-05-08", None)]))
    assert row["pathway"] == "pathway_1"
    assert row["support_before_discharge"] and row["days_to_support"] == -2
    assert not row["existing_support"]


def test_community_hospital_or_intermediate_care_bed_is_pathway_2() -> None:
    found = journeys(world([spell("nhs", "2024-05-01", "2024-05-10", destination="51"),
                            spell("private", "2024-05-01", "2024-05-10", destination="87")],
                           social=[("nhs", "home_care", "2024-05-12", None)]))
    assert set(found["pathway"]) == {"pathway_2"}


def test_care_home_destination_or_placement_is_pathway_3_and_long_term_care() -> None:
    found = journeys(world(
        [spell("dest", "2024-05-01", "2024-05-10", destination="85"),
         spell("placed", "2024-05-01", "2024-05-10")],
        social=[("placed", "nursing", "2024-05-15", None)])).set_index("person_key")
    assert found.loc["dest", "pathway"] == "pathway_3"
    assert found.loc["placed", "pathway"] == "pathway_3"
    assert found["long_term_care_12m"].all()
    assert (found["outcome_91d"] == "care_home").all() and not found["at_home_91d"].any()


def test_care_home_resident_returning_to_their_care_home_is_pathway_0() -> None:
    row = one(world([spell("A", "2024-05-01", "2024-05-10", destination="54")],
                    social=[("A", "residential", "2022-01-01", None)]))
    assert row["pathway"] == "pathway_0" and row["existing_support"]
    assert pd.isna(row["long_term_care_12m"])  # already in long-term care
    assert not row["at_home_91d"]


def test_other_destinations_are_other() -> None:
    row = one(world([spell("A", "2024-05-01", "2024-05-10", destination="38")]))
    assert row["pathway"] == "other"


def test_death_in_hospital_is_its_own_pathway_with_no_outcomes() -> None:
    found = journeys(world([spell("coded", "2024-05-01", "2024-05-10", destination="79"),
                            spell("registered", "2024-05-01", "2024-05-10")],
                           deaths=[("registered", "2024-05-10")]))
    assert set(found["pathway"]) == {"died_in_hospital"}
    assert set(found["outcome_91d"]) == {"died"}
    for column in ("readmitted_30d", "at_home_91d", "long_term_care_12m", "died_91d"):
        assert found[column].isna().all(), column


def test_readmitted_before_any_service_starts() -> None:
    """The service starting after the readmission belongs to the second discharge: the first
    went home with nothing and came back."""
    found = journeys(world(
        [spell("A", "2024-05-01", "2024-05-10"), spell("A", "2024-05-13", "2024-05-20")],
        social=[("A", "reablement", "2024-05-21", "2024-06-10")]))
    first, second = found.iloc[0], found.iloc[1]
    assert first["pathway"] == "pathway_0" and first["readmitted_before_support"]
    assert first["readmitted_30d"]
    assert second["pathway"] == "pathway_1" and not second["readmitted_before_support"]
    assert not second["readmitted_30d"]


def test_two_discharges_within_30_days_are_two_journeys() -> None:
    found = journeys(world([spell("A", "2024-05-01", "2024-05-05"),
                            spell("A", "2024-05-20", "2024-05-25"),
                            spell("A", "2024-08-01", "2024-08-03", method="11")]))
    assert len(found) == 3
    assert found["readmitted_30d"].tolist() == [True, False, False]
    # an elective admission is not a readmission; the second was 15 days after the first
    assert found["readmitted_91d"].tolist() == [True, False, False]


def test_readmission_day_29_counts_day_30_does_not() -> None:
    found = journeys(world([spell("A", "2024-05-01", "2024-05-10"),
                            spell("A", "2024-06-08", "2024-06-09"),
                            spell("B", "2024-05-01", "2024-05-10"),
                            spell("B", "2024-06-09", "2024-06-10")]))
    first = found.groupby("person_key").first()
    assert first.loc["A", "readmitted_30d"] and not first.loc["B", "readmitted_30d"]
    assert first.loc["B", "readmitted_91d"]


def test_in_hospital_on_day_91_and_death_after_discharge() -> None:
    found = journeys(world(
        [spell("inside", "2024-05-01", "2024-05-10"),
         spell("inside", "2024-08-05", "2024-08-20"),
         spell("dies", "2024-05-01", "2024-05-10")],
        deaths=[("dies", "2024-07-01")])).groupby("person_key").first()
    assert found.loc["inside", "outcome_91d"] == "in_hospital"
    assert not found.loc["inside", "at_home_91d"]
    assert found.loc["dies", "outcome_91d"] == "died" and found.loc["dies", "died_91d"]
    assert not found.loc["dies", "at_home_91d"]


def test_outcomes_past_the_data_are_unknown_not_no() -> None:
    row = one(world([spell("A", "2025-03-01", "2025-03-10")]), through=dt.date(2025, 5, 1))
    assert row["readmitted_30d"] is False or row["readmitted_30d"] == False  # noqa: E712
    assert pd.isna(row["readmitted_91d"]) and pd.isna(row["at_home_91d"])
    assert row["outcome_91d"] == "not_yet_known" and pd.isna(row["long_term_care_12m"])


def test_period_must_move_forward() -> None:
    with pytest.raises(ValueError, match="end must be after"):
        discharge_journeys({}, END, START)
