"""Features on small hand-built frames: windows, population, scores, no look-ahead."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from stratify.catalogue import FEATURES, NAMES, features_markdown
from stratify.features import build_features

AT = dt.date(2025, 4, 1)
D = dt.date


def patients(*keys: str, registered: dt.date = D(2000, 1, 1)) -> pd.DataFrame:
    return pd.DataFrame({"extract_id": "gp1", "person_key": list(keys),
                         "birth_ym": ["1940-05"] * len(keys), "sex": ["2"] * len(keys),
                         "gp_practice_code": "A81001", "registration_date": registered})


def spells(rows: list[tuple]) -> pd.DataFrame:
    """rows: (person, admitted, discharged, method, primary, secondary)."""
    frame = pd.DataFrame(rows, columns=["person_key", "admission_date", "discharge_date",
                                        "admission_method", "primary_diagnosis",
                                        "secondary_diagnoses"])
    frame["discharge_destination"] = "19"
    frame["extract_id"] = "apc1"
    return frame


def test_columns_match_the_catalogue_and_docs_are_current() -> None:
    features = build_features({"gp_patients": patients("a")}, AT)
    assert list(features.columns) == NAMES
    assert features.index.name == "person_key"
    assert len({f.name for f in FEATURES}) == len(FEATURES)
    written = (Path(__file__).parents[2] / "stratify" / "FEATURES.md").read_text()
    assert written == features_markdown(), "run stratify.catalogue.write_features_md()"


def test_window_boundaries() -> None:
    apc = spells([
        ("a", D(2025, 4, 1), D(2025, 4, 3), "21", "J441", None),    # on `at`: excluded
        ("a", D(2024, 4, 1), D(2024, 4, 5), "2A", "J441", None),    # exactly 12 months: in
        ("a", D(2024, 3, 31), D(2024, 4, 2), "22", "J441", None),   # a day more: 24m only
        ("a", D(2024, 10, 1), D(2024, 10, 2), "11", "M179", None),  # elective
        ("a", D(2023, 3, 31), D(2023, 4, 2), "21", "J441", None),   # beyond 24 months
    ])
    f = build_features({"gp_patients": patients("a"), "apc": apc}, AT).loc["a"]
    assert f["emergency_admissions_6m"] == 0
    assert f["emergency_admissions_12m"] == 1
    assert f["emergency_admissions_24m"] == 2
    assert f["elective_admissions_12m"] == 1
    assert f["days_since_emergency_admission"] == 365
    assert f["emergency_bed_days_12m"] == 4
    assert f["in_hospital"] == 0
    assert f["age"] == 84 and f["sex_female"] == 1


def test_ae_outpatients_medicines_community_windows() -> None:
    ae = pd.DataFrame({"person_key": "a", "arrival_datetime": pd.to_datetime(
        ["2025-03-31 23:59", "2025-04-01 00:00", "2024-10-01 10:00", "2024-09-30 10:00"]),
        "arrival_mode": ["ambulance", "ambulance", "walk_in", "ambulance"],
        "discharge_status": "discharged"})
    op = pd.DataFrame({"person_key": "a", "appointment_date": [D(2025, 1, 1), D(2025, 2, 1),
                                                               D(2025, 3, 1), D(2025, 4, 1)],
                       "attendance_status": ["5", "3", "6", "5"],
                       "treatment_function_code": ["300", "300", "320", "330"]})
    meds = pd.DataFrame({"person_key": "a", "issue_date": [D(2025, 3, 1), D(2025, 2, 1),
                                                           D(2025, 1, 1), D(2024, 9, 30),
                                                           D(2025, 4, 1)],
                         "bnf_code": ["0601022B0AAABAB", "0601022B0AAACAC", "0205051R0AAAAAA",
                                      "0403030E0AAAAAA", "0407010H0AAAAAA"]})
    community = pd.DataFrame({"person_key": "a", "contact_date": [D(2024, 6, 1), D(2024, 3, 1)],
                              "service": ["district_nursing", "therapy"]})
    f = build_features({"gp_patients": patients("a"), "ae": ae, "op": op,
                        "gp_medications": meds, "community": community}, AT).loc["a"]
    assert f["ae_attendances_6m"] == 2 and f["ae_attendances_12m"] == 3
    assert f["ambulance_arrivals_6m"] == 1 and f["ambulance_arrivals_12m"] == 2
    assert f["days_since_ae"] == 1
    assert f["op_attendances_12m"] == 2 and f["op_dna_12m"] == 1
    assert f["op_specialties_12m"] == 2
    # two metformin issues are one substance; the 2024-09-30 and on-`at` issues fall outside
    assert f["distinct_medicines_6m"] == 2 and f["medicine_issues_6m"] == 3
    assert f["bnf_0601_6m"] == 1 and f["bnf_0205_6m"] == 1 and f["bnf_0403_6m"] == 0
    assert f["community_district_nursing_12m"] == 1 and f["community_therapy_12m"] == 0


def test_population_registration_and_death() -> None:
    gp = pd.concat([patients("alive", "died_before", "died_on_at"),
                    patients("registered_later", registered=D(2025, 4, 2))])
    deaths = pd.DataFrame({"person_key": ["died_before", "died_on_at"],
                           "date_of_death": [D(2025, 3, 31), D(2025, 4, 1)]})
    apc = spells([("alive", D(2024, 5, 1), D(2024, 5, 3), "21", "I500", None)])
    features = build_features({"gp_patients": gp, "deaths": deaths, "apc": apc}, AT)
    assert sorted(features.index) == ["alive", "died_on_at"]
    # without registrations, anyone with a record before `at` stands in
    assert list(build_features({"apc": apc}, AT).index) == ["alive"]


def test_hfrs_counts_each_three_character_code_once() -> None:
    apc = spells([
        ("a", D(2024, 1, 1), D(2024, 1, 3), "21", "R296", "W19;N390"),
        ("a", D(2024, 6, 1), D(2024, 6, 3), "21", "R290", "W190;N39"),   # same 3-char codes
        ("a", D(2023, 3, 1), D(2023, 3, 3), "21", "F000", None),         # > 2 years before
        ("a", D(2025, 4, 1), D(2025, 4, 2), "21", "F000", None),         # on `at`
    ])
    f = build_features({"gp_patients": patients("a"), "apc": apc}, AT).loc["a"]
    assert f["hfrs"] == pytest.approx(3.6 + 3.2 + 3.2)


def test_charlson_hierarchy_and_conditions() -> None:
    apc = spells([("a", D(2024, 1, 1), D(2024, 1, 3), "21", "E112", "E119;C780;C509;I10")])
    events = pd.DataFrame({"person_key": ["a", "a", "a"], "event_date": [D(2021, 4, 1),
                                                                         D(2023, 6, 1),
                                                                         D(2025, 4, 1)],
                           "code_system": ["snomed", "icd10", "snomed"],
                           "code": ["84114007", "I48X", "52448006"], "event_type": "diagnosis",
                           "value": None})
    f = build_features({"gp_patients": patients("a"), "apc": apc, "gp_events": events},
                       AT).loc["a"]
    # diabetes with complication (2) replaces uncomplicated; metastatic (6) replaces cancer;
    # heart failure from SNOMED is not an ICD-10 code, so Charlson sees 2 + 6 only
    assert f["charlson_index"] == 8
    assert f["ltc_diabetes"] == 1 and f["ltc_cancer"] == 1 and f["ltc_hypertension"] == 1
    assert f["ltc_heart_failure"] == 1 and f["ltc_af"] == 1
    assert f["ltc_dementia"] == 0  # recorded on `at`
    assert f["ltc_heart_failure_years"] == pytest.approx(4.0, abs=0.01)
    assert f["ltc_count"] == 5
    limited = build_features({"gp_patients": patients("a"), "apc": apc, "gp_events": events},
                             AT, lookback_months=24).loc["a"]
    assert limited["ltc_heart_failure"] == 0 and limited["ltc_af"] == 1


def test_social_care_active_at_reference_date() -> None:
    care = pd.DataFrame({"person_key": ["a", "a", "b"],
                         "service_type": ["home_care", "residential", "nursing"],
                         "start_date": [D(2024, 1, 1), D(2020, 1, 1), D(2025, 4, 1)],
                         "end_date": [None, D(2025, 3, 31), None],
                         "weekly_cost": [250.0, 900.0, 1200.0]})
    f = build_features({"gp_patients": patients("a", "b"), "social_care": care}, AT)
    assert f.loc["a", "sc_active"] == 1 and f.loc["a", "sc_home_care"] == 1
    assert f.loc["a", "sc_care_home"] == 0 and f.loc["a", "sc_weekly_cost"] == 250
    assert f.loc["b", "sc_known"] == 0 and f.loc["b", "sc_active"] == 0


def test_nothing_on_or_after_the_reference_date_changes_features() -> None:
    base = {"gp_patients": patients("a", "b"),
            "apc": spells([("a", D(2024, 5, 1), D(2024, 5, 9), "21", "I500", "N183")])}
    future = dict(base)
    future["apc"] = pd.concat([base["apc"], spells([
        ("a", D(2025, 4, 1), None, "21", "F000", "E119"),
        ("b", D(2025, 9, 1), D(2025, 9, 2), "21", "C780", None)])])
    future["ae"] = pd.DataFrame({"person_key": ["a"], "arrival_datetime": [
        pd.Timestamp("2025-04-01 00:00")], "arrival_mode": "ambulance",
        "discharge_status": "admitted"})
    future["social_care"] = pd.DataFrame({"person_key": ["b"], "service_type": "home_care",
                                          "start_date": [D(2025, 4, 1)], "end_date": [None],
                                          "weekly_cost": [100.0]})
    pd.testing.assert_frame_equal(build_features(base, AT), build_features(future, AT))


def test_accepts_strings_and_datetimes_alike() -> None:
    apc = spells([("a", "2024-05-01", "2024-05-03", "21", "I500", None)])
    as_dates = spells([("a", D(2024, 5, 1), D(2024, 5, 3), "21", "I500", None)])
    pd.testing.assert_frame_equal(
        build_features({"gp_patients": patients("a"), "apc": apc}, AT),
        build_features({"gp_patients": patients("a"), "apc": as_dates}, AT))
