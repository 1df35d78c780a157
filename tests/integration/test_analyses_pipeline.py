"""haven journeys|costs|segments end to end on a small landed world: each run reads only what
commissioning may use, writes its files under the layout, is recorded and audited; the API
serves the published tables to analysts and super users, the records to analysts only (without
a person whose opt-out arrived after the run), the unit cost table is changed by super users
only (checked, audited), and destroying an extract removes the analysis runs built on it."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from api_matrix import World, build_world, land_optout
from sqlalchemy import select

from cli.main import main
from factories import rows_for, write_extract
from governance import retention
from governance.schema import audit_log, runs
from linkage import person_index
from linkage.landing.land import LandingContext, land_file
from pipeline import analyses
from policies import POLICIES_DIR

AT = dt.date(2025, 4, 1)
PERSONS = 40  # the world's GP register (api_matrix.PERSONS), born 1940-1989


def _land(world: World, source: str, rows: list[dict], sender: str = "RR8") -> str:
    haven = world.haven
    path = write_extract(world.inbox / f"{source}-extra", source, rows, sender=sender)
    receipt = land_file(LandingContext(haven.settings, haven.engine, haven.keys, haven.actor),
                        path)
    assert receipt.status == "landed", receipt.reason
    return receipt.extract_id


@pytest.fixture
def world(haven, tmp_path) -> World:
    """The API world plus hospital spells for every registered person (discharged in the
    year before AT, some to a community hospital or care home, some dying) and council home
    care after some discharges."""
    built = build_world(haven, tmp_path)
    spells = rows_for("apc", PERSONS, seed=7)
    for i, row in enumerate(spells):
        row.update(admission_date=f"2024-{5 + i % 6:02d}-01",
                   discharge_date=f"2024-{5 + i % 6:02d}-{8 + i % 3:02d}",
                   discharge_destination=("19", "51", "85", "79", "19")[i % 5])
    care = rows_for("social_care", PERSONS, seed=7)
    for i, row in enumerate(care):
        row.update(start_date=f"2024-{5 + i % 6:02d}-12", service_type="reablement",
                   weekly_cost="" if i % 2 else "300")
    built.extra["apc"] = _land(built, "apc", spells)
    built.extra["social_care"] = _land(built, "social_care", care[::2], sender="E08000035")
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"))
    return built


def test_each_analysis_runs_as_a_governed_purpose(world: World) -> None:
    haven = world.haven
    lines: list[str] = []
    journeys = analyses.run_journeys(haven, AT, progress=lines.append)
    costs = analyses.run_costs(haven, 2024)
    segments = analyses.run_segments(haven, AT)
    assert journeys.rows > 0 and costs.rows == PERSONS      # alive on 1 April 2024
    assert segments.rows == PERSONS - PERSONS // 5           # those who died in hospital gone
    assert any("records and 7 published tables written to" in line for line in lines)
    _, shown = analyses.published(haven, "journeys")
    # at home at 91 days is flow_91d's at_home column, never a second table of the same
    # discharges under another name (one could show what the other hides)
    assert "at_home" in shown["flow_91d"].columns and "at_home_91d" not in shown
    pathways = journeys.summary["pathways"]
    assert pathways["pathway_2"] and pathways["pathway_3"] and pathways["died_in_hospital"]
    assert pathways["pathway_0"] + pathways["pathway_1"] > 0
    for result in (journeys, costs, segments):
        files = haven.settings.layout.analysis(result.run_id)
        assert files.records.exists() and files.published.exists()
        assert files.description.exists()
        records = pd.read_parquet(files.records)
        assert records["person_key"].str.fullmatch(r"P[0-9a-f]{20}").all()
        assert not {"nhs_number", "date_of_birth", "postcode"} & set(records.columns)
    with haven.engine.connect() as connection:
        found = {r.kind: r for r in connection.execute(select(runs)).all()}
        actions = [r.action for r in connection.execute(select(audit_log.c.action)).all()]
    assert world.extra["apc"] in found["journeys"].extract_ids
    assert found["costs"].summary["purpose"] == "commissioning"
    assert found["segments"].summary["optouts"]["policy"]  # what it applied is recorded
    assert {"journeys.run", "costs.run", "segments.run"} <= set(actions)
    # every spend figure shown sits beside a count shown
    _, tables = analyses.published(haven, "costs")
    by_tier = tables["spend_by_tier"]
    assert ((by_tier["persons"] == "*") == (by_tier["spend"] == "*")).all()
    assert "discharges" not in tables["spend_around_discharge"].columns  # journeys' figures
    assert costs.summary["by_setting"]["social_care"] > 0
    _, tables = analyses.published(haven, "segments")
    for unit in ("practice", "pcn"):
        persons, spend = tables[f"segment_by_{unit}"], tables[f"spend_12m_by_segment_{unit}"]
        assert ((persons == "*") == (spend == "*")).all().all(), unit
    assert costs.summary["by_setting"]["emergency_admissions"] > 0


def test_api_serves_tables_to_analysts_and_records_only_to_analysts(world: World) -> None:
    haven = world.haven
    assert world.call("analyst", "GET", "/analyses/journeys").status_code == 409
    analyses.run_journeys(haven, AT)
    answer = world.call("analyst", "GET", "/analyses/journeys")
    assert answer.status_code == 200
    body = answer.json()
    assert {"flow_91d", "pathway_by_month", "readmitted_30d"} <= set(body["tables"])
    cells = [c for t in body["tables"].values() for row in t["rows"] for c in row["cells"]]
    assert all(c == "*" or (isinstance(c, int) and c % 5 == 0) for c in cells)
    assert {"source": "discharge", "target": "pathway_2"} in [
        {k: link[k] for k in ("source", "target")} for link in body["sankey"]["links"]]
    assert world.call("super_user", "GET", "/analyses/journeys").status_code == 200
    for role in ("mdt_clinician", "ig_lead", "admin", "council_uploader"):
        assert world.call(role, "GET", "/analyses/journeys").status_code == 403, role
        assert world.call(role, "GET", "/analyses/journeys/records").status_code == 403, role
    rows = world.call("analyst", "GET", "/analyses/journeys/records?limit=5000").json()
    assert rows["total"] > 0 and all(i["person_key"].startswith("P") for i in rows["items"])
    one = world.call("analyst", "GET", "/analyses/journeys/tables/flow_91d")
    assert one.status_code == 200 and one.json()["dimension"] == "pathway"
    assert world.call("analyst", "GET", "/analyses/journeys/tables/nothing").status_code == 404


def test_an_optout_after_the_run_withholds_the_person_from_its_records(world: World) -> None:
    haven = world.haven
    analyses.run_segments(haven, AT)
    _, before = analyses.records(haven, "segments")
    person = sorted(before["person_key"])[0]
    land_optout(world, person)
    _, after = analyses.records(haven, "segments")
    assert person not in set(after["person_key"]) and len(after) == len(before) - 1
    rows = world.call("analyst", "GET", "/analyses/segments/records?limit=5000").json()
    assert person not in {i["person_key"] for i in rows["items"]}
    # and the next run leaves them out from the start
    analyses.run_segments(haven, AT)
    _, fresh = analyses.records(haven, "segments")
    assert person not in set(fresh["person_key"])


def test_super_users_change_unit_costs_checked_and_audited(world: World) -> None:
    haven = world.haven
    shipped = (POLICIES_DIR / "unit_costs.csv").read_text(encoding="utf-8")
    before = analyses.run_costs(haven, 2024).summary["by_setting"]["emergency_admissions"]
    doubled = shipped.replace("emergency_spell,1590,", "emergency_spell,3180,")
    refused = world.call("analyst", "PUT", "/analyses/unit-costs/table", content=doubled)
    assert refused.status_code == 403
    bad = world.call("super_user", "PUT", "/analyses/unit-costs/table",
                     content=shipped.replace("emergency_spell,1590,", "emergency_spell,x,"))
    assert bad.status_code == 400 and "row 1: cost is not a number" in bad.json()["detail"]
    changed = world.call("super_user", "PUT", "/analyses/unit-costs/table", content=doubled)
    assert changed.status_code == 200, changed.text
    shown = world.call("analyst", "GET", "/analyses/unit-costs/table").json()["content"]
    assert "emergency_spell,3180," in shown
    after = analyses.run_costs(haven, 2024).summary["by_setting"]["emergency_admissions"]
    assert after > before
    with haven.engine.connect() as connection:
        audited = connection.execute(select(audit_log.c.action, audit_log.c.resource).where(
            audit_log.c.action == "policy_table.change")).all()
    assert ("policy_table.change", "policy/unit_costs.csv") in audited


def test_destroying_an_extract_removes_the_analysis_runs_built_on_it(world: World) -> None:
    haven = world.haven
    result = analyses.run_journeys(haven, AT)
    folder = haven.settings.layout.analysis(result.run_id).folder
    assert folder.exists()
    voided = retention.void_runs(haven.settings, haven.engine, [world.extra["apc"]])
    assert voided["runs_voided"] >= 1 and not folder.exists()
    with pytest.raises(analyses.NoAnalysisRun):
        analyses.published(haven, "journeys")


def test_cli_commands_print_what_they_did(world: World, capsys) -> None:
    settings = world.haven.settings
    environ = {"HAVEN_HOME": str(settings.home), "HAVEN_DATABASE_URL": settings.database_url,
               **settings.key_env}
    assert main(["journeys", "--at", "2025-04-01"], environ) == 0
    out = capsys.readouterr().out
    assert "journeys run journeys-2025-04-01-" in out and "flow_91d" in out
    assert main(["segments", "--at", "2025-04-01"], environ) == 0
    assert "segment_shares" in capsys.readouterr().out
    assert main(["costs", "--year", "2024"], environ) == 0
    assert "spend_by_tier" in capsys.readouterr().out
    assert main(["journeys", "--at", "April"], environ) == 2
    assert main(["costs", "--year", "24"], environ) == 2


# Columns of published tables that are not counts, and how each is made safe.
SPEND = {"spend"}                                   # rounded to 1,000 pounds beside a count
FROM_SHOWN = {"spend_per_person", "share_of_persons", "share_of_spend"}  # ratios of shown
COARSE = {"mean_spend_year_before", "mean_spend_year_after"}  # no count beside them


def _number(value: object) -> float | None:
    return None if value == "*" else float(str(value))


def test_no_ratio_mean_or_share_shown_narrows_a_count(world: World) -> None:
    """Promise (F6): every ratio, mean and share in a published analysis table is worked out
    from published figures only, or rounded coarsely with no count beside it, so none
    narrows a count rounded to 5 to fewer than the 5 values the rounding leaves. Checked over
    every published table of the three analyses on this generated world."""
    haven = world.haven
    analyses.run_all(haven, AT)
    checked = 0
    for kind in analyses.KINDS:
        _, tables = analyses.published(haven, kind)
        for name, table in tables.items():
            columns = set(map(str, table.columns))
            if name == "top_spenders":  # over the area, no count shown beside it
                assert columns == {"share_of_spend"}
                for value in table["share_of_spend"]:
                    assert round(float(value), 2) == float(value), value
                    checked += 1
                continue
            if name == "spend_by_setting":  # money only, to 1,000 pounds
                assert all(int(v) % 1000 == 0 for v in table["spend"])
                continue
            if not columns & (SPEND | FROM_SHOWN | COARSE):
                continue  # a count table: checked by the publication's own tests
            assert columns <= {"persons"} | SPEND | FROM_SHOWN | COARSE, (name, columns)
            for row, values in table.iterrows():
                if "spend_per_person" in columns:
                    persons, spend = _number(values["persons"]), _number(values["spend"])
                    shown = _number(values["spend_per_person"])
                    expected = None if persons is None or spend is None or not persons \
                        else round(spend / persons)
                    assert shown == expected, (name, row)
                    checked += 1
                for column in COARSE & columns:
                    shown = _number(values[column])
                    assert shown is None or shown % analyses.MEAN_ROUNDING == 0, (name, row)
                    checked += 1
            if name == "segment_shares":
                persons = tables["segment_by_pcn"]["total"]
                spend = tables["spend_12m_by_segment_pcn"]["total"]
                for segment, values in table.iterrows():
                    for column, shown_of in (("share_of_persons", persons),
                                             ("share_of_spend", spend)):
                        part, whole = _number(shown_of[segment]), _number(shown_of["total"])
                        expected = None if part is None or not whole else round(
                            part / whole, 3)
                        assert _number(values[column]) == expected, (segment, column)
                        checked += 1
    assert checked > 10  # the checks ran over real rows


def test_published_analysis_tables_do_not_move_with_a_late_opt_out(world: World) -> None:
    """Promise (F1 for the analyses): the published tables of an analysis are those written
    when it ran (the opt-outs in force then applied); an opt-out landing later changes none
    of them, nor any figure of the API's answer, until the next run."""
    haven = world.haven
    analyses.run_all(haven, AT)
    before = {kind: world.call("analyst", "GET", f"/analyses/{kind}").content
              for kind in analyses.KINDS}
    _, records = analyses.records(haven, "costs")
    person = sorted(records["person_key"])[0]
    land_optout(world, person)
    after = {kind: world.call("analyst", "GET", f"/analyses/{kind}").content
             for kind in analyses.KINDS}
    assert after == before
    _, records = analyses.records(haven, "costs")
    assert person not in set(records["person_key"])  # record level: honoured at once


def test_the_published_answer_shows_no_figure_of_the_run_summary(world: World) -> None:
    """The run summary holds exact counts (persons per pathway, per segment) and ratios of
    them; the published answer shows only when and what the run covered."""
    haven = world.haven
    journeys = analyses.run_journeys(haven, AT)
    assert journeys.summary["pathways"]  # the exact figures are in the run's record
    for kind in analyses.KINDS[:1]:
        summary = world.call("analyst", "GET", f"/analyses/{kind}").json()["summary"]
        assert not {"pathways", "discharges", "ascof_2b_at_home_91d", "persons",
                    "segments", "spend", "optouts"} & set(summary)
        assert summary["at"] == AT.isoformat()
