"""Opt-outs by purpose: at landing, after landing (purge), at use, and the suppressed report."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from cli.main import main
from factories import nhs_numbers, rows_for, write_extract
from governance import optouts
from governance.audit import SYSTEM
from governance.schema import audit_log, extracts
from governance.suppression import Rule, suppress, suppress_table
from linkage.landing.land import LandingContext, land_file

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
    apc = pq.read_table(haven.settings.layout.rows(land_rows(
        landing, inbox / "a", "apc", 3).extract_id)).to_pandas().assign(sender="RR8")
    events = pq.read_table(haven.settings.layout.rows(land_rows(
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
    table = pq.read_table(haven.settings.layout.rows(other.extract_id))
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


def land_optouts(landing, folder, entries, sender):
    receipt = land_file(landing, write_extract(folder, "optouts", optout_rows(entries),
                                               sender=sender))
    assert receipt.status == "landed"
    return receipt


def ids_of(haven, receipt) -> list[str]:
    return pq.read_table(haven.settings.layout.rows(receipt.extract_id)).column(
        "person_id").to_pylist()


def test_which_register_row_is_in_force(haven, landing, inbox):
    land_optouts(landing, inbox / "a", [
        (0, "ndoo", "2023-01-01", "N"), (0, "ndoo", "2023-01-01", "Y"),  # same day: objection
        (1, "ndoo", "2023-01-01", "N"),
        (2, "consent_withdrawn", "2023-01-01", "N")], sender="E08000035")
    land_optouts(landing, inbox / "b", [
        (1, "ndoo", "2024-01-01", "Y"),  # a national type: any sender's later row decides
        (2, "consent_withdrawn", "2024-01-01", "Y")], sender="E08000036")  # another council
    live = optouts.active_optouts(haven.engine, dt.date(2024, 6, 1))
    ids = ids_of(haven, land_rows(landing, inbox / "c", "apc", 3))
    found = {(ids.index(p), t, s) for p, t, s in
             zip(live["person_id"], live["optout_type"], live["sender"], strict=True)}
    assert found == {(0, "ndoo", "E08000035"), (2, "consent_withdrawn", "E08000035")}
    at = dt.date(2024, 6, 1)
    assert optouts.excluded(haven.engine, ids, "commissioning", "apc", "RR8", at).tolist() == [
        True, False, False]
    # Council 35's social care data stays excluded; council 36's is not covered; sender unknown:
    # the objection covers it whoever sent it.
    for sender, expected in (("E08000035", [False, False, True]),
                             ("E08000036", [False, False, False]),
                             (None, [False, False, True])):
        assert optouts.excluded(haven.engine, ids, "direct_care", "social_care", sender,
                                at).tolist() == expected
    assert optouts.opted_out(haven.engine, ids, "direct_care", at).tolist() == [
        False, False, True]
    with pytest.raises(ValueError, match="unknown purpose"):
        optouts.excluded(haven.engine, ids, "marketing", "apc", None, at)


def test_the_register_itself_is_never_excluded(haven, landing, inbox):
    from policies import POLICIES_DIR

    shipped = (POLICIES_DIR / "optout_purposes.csv").read_text(encoding="utf-8")
    everything = shipped + "".join(f"ndoo,{p},*,all\n" for p in optouts.PURPOSES)
    optouts.set_purposes(haven.engine, everything, SYSTEM)
    guarded = LandingContext(haven.settings, haven.engine, haven.keys, haven.actor,
                             exclusion=optouts.landing_exclusion(haven.engine))
    register = land_optouts(guarded, inbox / "a", [(0, "ndoo", "2020-01-01", "N")],
                            sender="X26")
    # The exclusion sees the register change at once: person 0's hospital rows are not kept ...
    apc = land_rows(guarded, inbox / "b", "apc", 3)
    assert apc.counts["excluded_by_optout"] == 1 and apc.counts["landed"] == 2
    # ... but their later withdrawal is, as is every register row.
    back = land_optouts(guarded, inbox / "c", [(0, "ndoo", "2021-01-01", "Y")], sender="X26")
    assert back.counts["landed"] == 1 and back.counts["excluded_by_optout"] == 0
    assert optouts.active_optouts(haven.engine, dt.date(2022, 1, 1)).empty
    assert not any(rule.covers("optouts") for rule in optouts.coverage(haven.engine))
    # Between objection and withdrawal, a batch whose sender is not given is judged the same.
    early = optouts.landing_exclusion(haven.engine, today=dt.date(2020, 6, 1))
    batch = pa.table({"person_id": [ids_of(haven, register)[0], None]})
    assert early(batch, "apc").tolist() == [True, False]


def test_purge_rewrites_counts_and_tells_dependents(haven, landing, inbox):
    care = land_rows(landing, inbox / "a", "social_care", 5, sender="E08000035")
    land_optouts(landing, inbox / "b", [(1, "consent_withdrawn", "2024-01-01", "N"),
                                        (3, "consent_withdrawn", "2024-01-01", "N")],
                 sender="E08000035")
    told = []

    def index(rows: dict[str, list[int]]) -> dict[str, int]:
        told.append(rows)
        return {"index_rows_removed": sum(len(r) for r in rows.values())}

    before = optouts.purge(haven.settings, haven.engine, dt.date(2023, 12, 31), SYSTEM, [index])
    assert before == {} and told == []  # not in force yet
    assert optouts.purge(haven.settings, haven.engine, dt.date(2024, 1, 1), SYSTEM,
                         [index]) == {care.extract_id: 2}
    assert told == [{care.extract_id: [2, 4]}]  # persons 1 and 3: data rows 2 and 4
    assert optouts.purge(haven.settings, haven.engine, dt.date(2024, 1, 1)) == {}
    with haven.engine.connect() as connection:
        row = connection.execute(select(extracts.c.rows_landed, extracts.c.counts).where(
            extracts.c.extract_id == care.extract_id)).one()
        details = connection.execute(select(audit_log.c.detail).where(
            audit_log.c.action == "optouts.purge").order_by(audit_log.c.seq)).scalars().all()
    assert row.rows_landed == 3 and row.counts["purged_by_optout"] == 2
    assert [d.get("index_rows_removed") for d in details] == [None, 2, None]


def test_report_figures_agree_wherever_they_appear(haven, landing, inbox):
    entries = ([(i, "ndoo", "2023-01-01", "N") for i in range(24)]
               + [(24 + i, "type1", "2023-01-01", "N") for i in range(12)]
               + [(i, "consent_withdrawn", "2023-01-01", "N") for i in range(3)])
    land_optouts(landing, inbox, entries, sender="X26")
    result = optouts.optouts_report(haven.engine, dt.date(2024, 1, 1))
    by_type = result["by_type"]
    assert by_type == {"consent_withdrawn": "*", "ndoo": 25, "type1": "*"}  # 12: secondary
    for kind, row in result["by_type_and_purpose"].items():
        for purpose, shown in row.items():
            covers = kind in result["types_by_purpose"][purpose]
            assert shown == (by_type[kind] if covers else 0)
    # Direct care: consent withdrawals alone; the rest depend on a suppressed type.
    assert result["by_purpose"] == {"commissioning": "*", "case_finding": "*",
                                    "research": "*", "direct_care": "*",
                                    "emergency_planning": "*"}
    assert result["rule"]["suppressed"] == "1-7"
    land_optouts(landing, inbox / "more", [(36 + i, "type1", "2023-01-01", "N")
                                           for i in range(4)]
                 + [(30 + i, "consent_withdrawn", "2023-01-01", "N") for i in range(10)],
                 sender="X27")
    shown = optouts.optouts_report(haven.engine, dt.date(2024, 1, 1))
    assert shown["by_type"] == {"consent_withdrawn": 15, "ndoo": 25, "type1": 15}
    # Distinct persons: research (ndoo or type1) 24 + 16; commissioning adds no one (the 13
    # consent withdrawals all have another type); case finding: 16 type1 and 3 more.
    assert shown["by_purpose"] == {"commissioning": 40, "case_finding": 20, "research": 40,
                                   "direct_care": 15, "emergency_planning": 15}


def test_optouts_commands(haven, landing, inbox, capsys):
    land_rows(landing, inbox / "a", "social_care", 3, sender="E08000035")
    land_optouts(landing, inbox / "b", [(0, "consent_withdrawn", "2024-01-01", "N")],
                 sender="E08000035")
    env = {"HAVEN_HOME": str(haven.settings.home),
           "HAVEN_DATABASE_URL": haven.settings.database_url, **haven.settings.key_env}
    assert main(["optouts", "report", "--as-of", "2024-02-01"], env) == 0
    assert '"consent_withdrawn": "*"' in capsys.readouterr().out
    assert main(["optouts", "purge", "--as-of", "2024-02-01"], env) == 0
    assert "removed 1 rows from 1 extracts" in capsys.readouterr().out
    assert main(["optouts", "purge", "--as-of", "2024"], env) == 2
