"""stratify.vulnerable: each flag on small hand-made records, and counts by postcode sector."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from stratify import vulnerable

AT = dt.date(2025, 1, 1)
T = pd.Timestamp


def _key(i: int) -> str:
    return f"P{i:020x}"


def _gp(rows: list[tuple[int, str, str | None]]) -> pd.DataFrame:
    return pd.DataFrame({"person_key": [_key(i) for i, _, _ in rows],
                         "birth_ym": [born for _, born, _ in rows],
                         "sex": "1", "gp_practice_code": "B86001",
                         "registration_date": T("2010-01-01"),
                         "postcode_sector": [sector for _, _, sector in rows]})


def test_each_flag_from_its_own_record() -> None:
    gp = _gp([(1, "1940-01", "LS1 4"), (2, "1950-01", "LS1 4"), (3, "1945-01", "LS2 7"),
              (4, "1930-01", None), (5, "2015-01", "LS1 4"), (6, "1940-01", "LS1 4"),
              (7, "1940-01", "LS1 4"), (8, "1940-01", "LS2 7")])
    meds = pd.DataFrame({"person_key": [_key(2), _key(7)],
                         "issue_date": [T("2024-10-01"), T("2023-06-01")],  # 7: too long ago
                         "bnf_code": ["0306000A0AAAAAA", "0306000A0AAAAAA"]})
    events = pd.DataFrame({
        "person_key": [_key(3), _key(4), _key(8), _key(8), _key(5)],
        "event_date": [T("2024-05-01"), T("2020-01-01"), T("2020-01-01"), T("2024-01-01"),
                       T("2024-05-01")],
        "code_system": ["icd10", "snomed", "snomed", "snomed", "icd10"],
        "code": ["Z992", "105529008", "105529008", "160734000", "Z992"],
        "event_type": "diagnosis", "value": None})
    care = pd.DataFrame({"person_key": [_key(6), _key(7)], "service_type": ["home_care"] * 2,
                         "start_date": [T("2024-01-01"), T("2023-01-01")],
                         "end_date": [None, T("2024-06-01")], "weekly_cost": None})
    deaths = pd.DataFrame({"person_key": [_key(6)], "date_of_death": [T("2025-02-01")]})
    out = vulnerable.vulnerable_persons(
        {"gp_patients": gp, "gp_medications": meds, "gp_events": events,
         "social_care": care, "deaths": deaths}, AT, frail={_key(1)})
    flagged = {key: [f for f in vulnerable.FLAGS if row[f]] for key, row in out.iterrows()}
    assert flagged == {_key(1): ["frailty"], _key(2): ["oxygen"], _key(3): ["dialysis"],
                       _key(4): ["lives_alone"], _key(6): ["home_care"]}
    # 5 is a child; 7's oxygen and care ended; 8 lives with family since; 6 died after AT.
    assert out.loc[_key(4), "postcode_sector"] == vulnerable.UNKNOWN


def test_the_dead_and_the_unregistered_are_not_counted() -> None:
    gp = _gp([(1, "1940-01", "LS1 4")])
    apc = pd.DataFrame({"person_key": [_key(1)], "admission_date": [T("2024-03-01")],
                        "discharge_date": [T("2024-03-05")], "admission_method": ["21"],
                        "discharge_destination": ["79"], "primary_diagnosis": ["Z992"],
                        "secondary_diagnoses": [None]})
    assert vulnerable.vulnerable_persons({"gp_patients": gp, "apc": apc}, AT,
                                         frail={_key(1)}).empty
    assert vulnerable.vulnerable_persons({}, AT, frail={_key(1)}).empty


def test_hospital_diagnoses_count_for_dialysis() -> None:
    gp = _gp([(1, "1940-01", "LS1 4")])
    apc = pd.DataFrame({"person_key": [_key(1)], "admission_date": [T("2024-03-01")],
                        "discharge_date": [T("2024-03-05")], "admission_method": ["21"],
                        "discharge_destination": ["19"], "primary_diagnosis": ["N185"],
                        "secondary_diagnoses": ["I10;Z992"]})
    out = vulnerable.vulnerable_persons({"gp_patients": gp, "apc": apc}, AT, frail=set())
    assert out.loc[_key(1), "dialysis"] and out.loc[_key(1), "flags"] == 1


def test_counts_by_sector_count_each_flag_and_any_once_per_person() -> None:
    persons = pd.DataFrame({"postcode_sector": ["LS1 4", "LS1 4", "LS2 7"],
                            "frailty": [True, True, False], "home_care": [True, False, True],
                            "oxygen": False, "dialysis": False, "lives_alone": False},
                           index=[_key(1), _key(2), _key(3)])
    table = vulnerable.counts_by_sector(persons, sectors=["LS9 9"])
    assert table.loc["LS1 4"].to_dict() == {"frailty": 2, "home_care": 1, "oxygen": 0,
                                            "dialysis": 0, "lives_alone": 0, "any": 2}
    assert table.loc["LS9 9", "any"] == 0 and table.loc["LS2 7", "any"] == 1
    assert vulnerable.counts_by_sector(persons.iloc[:0]).empty
