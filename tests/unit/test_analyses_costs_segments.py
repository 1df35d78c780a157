"""Cost per person (stratify.costs) and Bridges to Health segments (stratify.segments) on small
hand-made records: each pricing rule, the unit cost table's checks, and each segment rule with
the order of the segment table."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from policies import POLICIES_DIR
from stratify import costs as costs_module
from stratify.costs import (
    UNITS,
    around_discharges,
    parse_unit_costs,
    person_costs,
    spend_in_windows,
    top_share,
)
from stratify.segments import SEGMENTS, assign_segments, parse_segments, segment_rules

SHIPPED = (POLICIES_DIR / "unit_costs.csv").read_text(encoding="utf-8")
UNIT = {u: 0.0 for u in UNITS} | {
    "emergency_spell": 1000.0, "elective_spell": 3000.0, "day_case": 500.0,
    "other_spell": 700.0, "excess_bed_day": 100.0, "trim_point": 5.0, "ae_attendance": 150.0,
    "outpatient_attendance": 120.0, "prescription_item": 10.0, "community_reablement": 40.0,
    "social_care_home_care": 70.0, "social_care_equipment": 200.0}


def apc(person: str, admitted: str, discharged: str | None, method: str) -> dict:
    return {"person_key": person, "admission_date": admitted, "discharge_date": discharged,
            "admission_method": method, "discharge_destination": "19"}


def sources() -> dict[str, pd.DataFrame]:
    return {
        "apc": pd.DataFrame([
            apc("A", "2024-05-01", "2024-05-09", "21"),   # 8 days: 1000 + 3 x 100
            apc("A", "2024-06-01", "2024-06-01", "11"),   # day case 500
            apc("A", "2024-07-01", "2024-07-03", "12"),   # elective 3000
            apc("A", "2024-08-01", "2024-08-02", "31"),   # other (maternity) 700
            apc("A", "2025-04-01", "2025-04-02", "21"),   # next year: not counted
        ]),
        "ae": pd.DataFrame({"person_key": ["A", "B"],
                            "arrival_datetime": ["2024-05-01T10:00", "2024-03-31T23:00"],
                            "discharge_status": "admitted"}),
        "op": pd.DataFrame({"person_key": "A", "appointment_date": "2024-09-01",
                            "attendance_status": ["5", "6", "3"]}),
        "community": pd.DataFrame({"person_key": "B", "contact_date": "2024-10-01",
                                   "service": ["reablement", "reablement"]}),
        "gp_medications": pd.DataFrame({"person_key": "B", "issue_date": "2024-10-01",
                                        "bnf_code": "0212000AAAAAAAA"}, index=[0]),
        "social_care": pd.DataFrame([
            # own weekly cost, 14 days inside the year: 2 weeks x 210
            {"person_key": "B", "service_type": "home_care", "start_date": "2025-03-18",
             "end_date": None, "weekly_cost": 210.0},
            # no weekly cost: the unit cost, whole year from 2024-04-01 to 2024-04-07 = 1 week
            {"person_key": "C", "service_type": "home_care", "start_date": "2023-01-01",
             "end_date": "2024-04-07", "weekly_cost": None},
            {"person_key": "C", "service_type": "equipment", "start_date": "2024-04-02",
             "end_date": None, "weekly_cost": None},
        ]),
        "gp_patients": pd.DataFrame({"person_key": ["A", "B", "C", "D"],
                                     "registration_date": "2000-01-01",
                                     "gp_practice_code": "A81001", "birth_ym": "1950-01"}),
    }


def test_each_setting_priced_by_its_rule() -> None:
    costs = person_costs(sources(), 2024, UNIT)
    assert list(costs.index) == ["A", "B", "C", "D"]
    a, b, c = costs.loc["A"], costs.loc["B"], costs.loc["C"]
    assert a["emergency_admissions"] == 1300.0
    assert a["elective_admissions"] == 3500.0
    assert a["other_admissions"] == 700.0
    assert a["ae"] == 150.0 and b["ae"] == 0.0          # B's attendance was the year before
    assert a["outpatients"] == 240.0                    # the DNA is not priced
    assert b["community"] == 80.0 and b["prescribing"] == 10.0
    assert b["social_care"] == pytest.approx(420.0)     # its own weekly cost, two weeks
    assert c["social_care"] == pytest.approx(70.0 + 200.0)
    assert costs.loc["D", "total"] == 0.0
    assert a["total"] == pytest.approx(1300 + 3500 + 700 + 150 + 240)


def test_windows_priced_a_part_at_a_time_equal_one_query(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    # A whole population's year is one window per person: priced a part at a time (bounded
    # memory), the figures must be the single query's, every window in its place.
    whole = person_costs(sources(), 2024, UNIT)
    monkeypatch.setattr(costs_module, "WINDOWS_PER_QUERY", 1)
    parted = person_costs(sources(), 2024, UNIT)
    assert whole["total"].sum() > 0
    pd.testing.assert_frame_equal(parted, whole)
    empty = spend_in_windows(sources(), pd.DataFrame(
        {"window": [], "person_key": [], "start": [], "end": []}), UNIT)
    assert empty.empty and list(empty.columns)[-1] == "total"


def test_windows_and_spend_before_and_after_a_discharge() -> None:
    journeys = pd.DataFrame({"person_key": ["A"], "admission_date": [dt.date(2024, 6, 1)],
                             "discharge_date": [dt.date(2024, 6, 1)]})
    around = around_discharges(sources(), journeys, UNIT, days=91)
    assert around.loc[0, "spend_before"] == 1300.0 + 150.0     # May's admission and A&E
    assert around.loc[0, "spend_after"] == 3000.0 + 700.0      # July and August, not June 1
    with pytest.raises(ValueError, match="windows lack end"):
        spend_in_windows(sources(), pd.DataFrame({"window": [1], "person_key": ["A"],
                                                  "start": ["2024-01-01"]}), UNIT)


def test_top_share() -> None:
    spend = pd.Series([100.0] + [0.0] * 98 + [0.0])
    assert top_share(spend, 0.01) == 1.0
    assert top_share(pd.Series([1.0, 1.0, 1.0, 1.0]), 0.5) == 0.5
    assert top_share(pd.Series([], dtype=float), 0.05) == 0.0
    with pytest.raises(ValueError):
        top_share(spend, 0)


def test_shipped_unit_costs_name_a_source_and_price_year_for_every_unit() -> None:
    table = parse_unit_costs(SHIPPED)
    assert set(table) == set(UNITS) and table["emergency_spell"] > 0


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace("emergency_spell,1590", "emergency_spell,abc"), "row 1: cost is not"),
    (lambda t: t.replace("emergency_spell,1590", "emergency_spell,-5"), "row 1: cost must be"),
    (lambda t: t.replace("emergency_spell,", "emergency_spel,", 1), "row 1: unknown unit"),
    (lambda t: t + "day_case,1,spell,x,2024/25,\n", "day_case given twice"),
    (lambda t: t.replace(",2016/17,admission methods 21", ",,admission methods 21"),
     "row 1: price_year is missing"),
    (lambda t: "\n".join(line for line in t.splitlines()
                         if not line.startswith("ae_attendance")), "no row for ae_attendance"),
    (lambda t: t.replace("unit,cost,per", "unit,price,per"), "header must be"),
])
def test_a_bad_unit_cost_table_is_refused_by_row_and_field(change, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_unit_costs(change(SHIPPED))


def test_financial_year_is_checked() -> None:
    with pytest.raises(ValueError, match="four-digit year"):
        person_costs(sources(), 24, UNIT)


# ---------------------------------------------------------------------------- segments
def features(**columns) -> pd.DataFrame:
    base = {"age": 70.0, "emergency_admissions_12m": 0.0, "ae_attendances_12m": 0.0,
            "hfrs": 0.0, "ltc_count": 0.0, "sc_care_home": 0.0,
            **{f"ltc_{c}": 0.0 for c in ("cancer", "dementia", "heart_failure", "copd", "ckd",
                                         "liver_disease", "smi", "stroke", "parkinsons")}}
    base.update(columns)
    return pd.DataFrame({k: [v] for k, v in base.items()}, index=pd.Index(["P"]))


@pytest.mark.parametrize(("columns", "expected"), [
    ({"ltc_cancer": 1, "ltc_count": 1, "emergency_admissions_12m": 1}, "end_of_life"),
    ({"ltc_cancer": 1, "ltc_count": 1}, "stable_chronic"),
    ({"ltc_dementia": 1, "ltc_count": 1}, "frailty"),
    ({"hfrs": 5.0}, "frailty"),
    ({"hfrs": 4.9, "ae_attendances_12m": 1}, "acutely_ill"),
    ({"sc_care_home": 1}, "frailty"),
    ({"ltc_dementia": 1, "ltc_count": 1, "age": 60.0}, "stable_chronic"),
    ({"ltc_copd": 1, "ltc_count": 1, "emergency_admissions_12m": 2}, "limited_reserve"),
    ({"ltc_copd": 1, "ltc_count": 1}, "stable_chronic"),
    ({"ltc_stroke": 1, "ltc_count": 1}, "serious_stable"),
    ({"ltc_count": 4}, "serious_stable"),
    ({"age": 0.0}, "maternal_infant"),
    ({"emergency_admissions_12m": 1}, "acutely_ill"),
    ({}, "healthy"),
])
def test_each_segment_rule(columns, expected) -> None:
    rules = segment_rules(features(**columns), pd.Series(dtype=bool))
    order = parse_segments((POLICIES_DIR / "segments.csv").read_text(encoding="utf-8"))
    assert next(name for name in order if rules[name][0]) == expected


def test_maternity_admission_in_the_last_year_and_everyone_in_one_segment() -> None:
    data = sources()
    data["apc"] = pd.concat([data["apc"], pd.DataFrame([
        apc("B", "2024-12-01", "2024-12-03", "31")])], ignore_index=True)
    data["gp_patients"]["birth_ym"] = "1995-01"
    found = assign_segments(data, dt.date(2025, 4, 1)).set_index("person_key")
    assert found.loc["B", "segment"] == "maternal_infant"
    assert found.loc["D", "segment"] == "healthy"
    assert found.loc["A", "segment"] == "maternal_infant"   # method 31 in August 2024
    assert found["segment"].isin(SEGMENTS).all() and found.index.is_unique


def test_the_table_orders_the_rules() -> None:
    data = sources()
    order = list(SEGMENTS)
    order.remove("healthy")
    first = assign_segments(data, dt.date(2025, 4, 1), order=["healthy", *order])
    assert set(first["segment"]) == {"healthy"}
    with pytest.raises(ValueError, match="every segment once"):
        assign_segments(data, dt.date(2025, 4, 1), order=order)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace("8,healthy", "8,well"), "row 8: unknown segment"),
    (lambda t: t.replace("8,healthy", "x,healthy"), "row 8: priority is not"),
    (lambda t: t.replace("8,healthy", "7,healthy"), "share a priority"),
    (lambda t: t.replace("7,acutely_ill", "7,healthy"), "healthy given twice"),
    (lambda t: t.replace("priority,segment", "rank,segment"), "header must be"),
])
def test_a_bad_segment_table_is_refused(change, message) -> None:
    shipped = (POLICIES_DIR / "segments.csv").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        parse_segments(change(shipped))
