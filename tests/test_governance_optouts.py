"""Opt-outs by purpose: at landing, after landing (purge), at use, and the suppressed report."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow.parquet as pq

from factories import nhs_numbers, rows_for, write_extract
from governance import optouts, store
from governance.audit import SYSTEM
from governance.suppression import Rule, suppress, suppress_table
from linkage.landing import LandingContext, land_file

NUMBERS = nhs_numbers(40, seed=21)


def optout_rows(entries: list[tuple[int, str, str, str]]) -> list[dict[str, str]]:
    """(person index, type, effective date, withdrawn) -> optouts extract rows."""
    return [{"nhs_number": NUMBERS[i], "optout_type": t, "effective_date": d, "withdrawn": w}
            for i, t, d, w in entries]


def land_rows(landing, folder, source, count, sender="RR8"):
    rows = rows_for(source, count, seed=21)
    for i, row in enumerate(rows):
        row["nhs_number"] = NUMBERS[i]
        if "client_id" in row:  # each council's file differs (else it is a duplicate)
            row["client_id"] = f"{sender}-{i}"
    receipt = land_file(landing, write_extract(folder, source, rows, sender=sender))
    assert receipt.status == "landed"
    return receipt


def test_latest_row_wins_and_withdrawal_reincludes(haven, landing, inbox):
    land_file(landing, write_extract(inbox, "optouts", optout_rows([
        (0, "ndoo", "2023-01-01", "N"), (0, "ndoo", "2024-06-01", "Y"),
        (1, "type1", "2023-01-01", "N"), (2, "ndoo", "2027-01-01", "N")]), sender="X26"))
    before = optouts.active_optouts(haven.engine, dt.date(2024, 1, 1))
    after = optouts.active_optouts(haven.engine, dt.date(2024, 7, 1))
    assert sorted(before["optout_type"]) == ["ndoo", "type1"]
    assert sorted(after["optout_type"]) == ["type1"]  # person 0 opted back in; 2 not yet


def test_purpose_filter_follows_the_policy_table(haven, landing, inbox):
    land_file(landing, write_extract(inbox, "optouts", optout_rows([
        (0, "ndoo", "2023-01-01", "N"), (1, "type1", "2023-01-01", "N")]), sender="X26"))
    at = dt.date(2024, 1, 1)
    frame = pd.DataFrame({"person_id": [None, "x"], "sender": "RR8"})
    apc = pq.read_table(store.rows_path(haven.settings, land_rows(
        landing, inbox / "a", "apc", 3).extract_id)).to_pandas().assign(sender="RR8")
    events = pq.read_table(store.rows_path(haven.settings, land_rows(
        landing, inbox / "b", "gp_events", 3).extract_id)).to_pandas().assign(sender="0AR")
    commissioning = optouts.purpose_filter(haven.engine, "commissioning", at)
    case_finding = optouts.purpose_filter(haven.engine, "case_finding", at)
    assert commissioning(apc, "apc").tolist() == [False, True, True]  # ndoo: planning
    assert case_finding(apc, "apc").tolist() == [True, True, True]  # ndoo: not direct care
    assert commissioning(events, "gp_events").tolist() == [False, False, True]  # + type1
    assert case_finding(events, "gp_events").tolist() == [True, False, True]
    assert commissioning(frame, "apc").tolist() == [True, True]


def test_withdrawn_social_care_consent_is_not_landed_and_later_ones_are_purged(
        haven, landing, inbox):
    land_file(landing, write_extract(inbox, "optouts", optout_rows([
        (0, "consent_withdrawn", "2023-01-01", "N")]), sender="E08000035"))
    exclusion = optouts.landing_exclusion(haven.engine)

    guarded = LandingContext(haven.settings, haven.engine, haven.keys, haven.actor,
                             exclusion=exclusion)
    first = land_rows(guarded, inbox / "a", "social_care", 4, sender="E08000035")
    assert first.counts["excluded_by_optout"] == 1 and first.counts["landed"] == 3
    other = land_rows(guarded, inbox / "b", "social_care", 4, sender="E08000036")
    assert other.counts["excluded_by_optout"] == 0  # another council's data: not covered
    hospital = land_rows(guarded, inbox / "c", "apc", 4)
    assert hospital.counts["landed"] == 4
    # An objection registered after landing: person 1 withdraws consent from council 36.
    land_file(landing, write_extract(inbox / "d", "optouts", optout_rows([
        (1, "consent_withdrawn", "2024-01-01", "N")]), sender="E08000036"))
    removed = optouts.purge(haven.settings, haven.engine, dt.date(2024, 2, 1), SYSTEM)
    assert removed == {other.extract_id: 1}
    table = pq.read_table(store.rows_path(haven.settings, other.extract_id))
    assert table.num_rows == 3 and 2 not in table.column("row").to_pylist()


def test_report_is_suppressed_and_names_no_one(haven, landing, inbox):
    entries = ([(i, "ndoo", "2023-01-01", "N") for i in range(11)]
               + [(20, "type1", "2023-01-01", "N")]
               + [(30 + i, "consent_withdrawn", "2023-01-01", "N") for i in range(9)])
    land_file(landing, write_extract(inbox, "optouts", optout_rows(entries), sender="X26"))
    result = optouts.report(haven.engine, dt.date(2024, 1, 1))
    # 1 is suppressed; 9 too (secondary: else 1 = total - 10 - 9); 11 rounds to 10.
    assert result["by_type"] == {"consent_withdrawn": "*", "ndoo": 10, "type1": "*"}
    assert result["by_type_and_purpose"]["ndoo"]["direct_care"] == 0
    text = repr(result)
    assert not any(n in text for n in NUMBERS)


def test_suppression_rule_and_secondary_suppression():
    rule = Rule.load()
    assert [rule.show(n) for n in (0, 1, 7, 8, 12, 13)] == [0, "*", "*", 10, 10, 15]
    shown = suppress({"a": 3, "b": 120, "c": 41})
    assert shown["a"] == "*" and shown["c"] == "*" and shown["b"] == 120
    table = suppress_table(pd.DataFrame({"x": [3, 50, 60], "y": [20, 30, 12]},
                                        index=["r1", "r2", "r3"]))
    hidden = table == "*"
    assert (hidden.sum(axis=0) != 1).all() and (hidden.sum(axis=1) != 1).all()
