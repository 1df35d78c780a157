"""IG leads: the audit log (every request in it, search, export, verify), destruction
certificates, retention, opt-out counts and policy tables; and no patient-level data for IG
leads or admins."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from api_matrix import OWN_PRACTICE, World, build_world, land_optout
from sqlalchemy import func, insert, select, text, update

from api.exports import FORMULA_START
from governance import audit
from governance.audit import Actor
from governance.schema import audit_log, destruction_certificates, extracts


@pytest.fixture
def backend() -> str:
    """SQLite only: the access matrix runs these endpoints on PostgreSQL too."""
    return ""


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path)


def entries(world: World) -> int:
    with world.haven.engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(audit_log))


def test_every_request_is_audited_allowed_or_not(world: World) -> None:
    before = entries(world)
    calls = [("analyst", "GET", "/risk/persons"), ("analyst", "GET", "/audit"),
             (None, "GET", "/whoami"), ("mdt_clinician", "GET", "/no/such/route"),
             ("analyst", "GET", "/risk/persons?limit=0"), (None, "GET", "/health")]
    for role, method, path in calls:
        world.call(role, method, path)
    with world.haven.engine.connect() as connection:
        rows = connection.execute(select(audit_log).where(audit_log.c.seq > before)
                                  .order_by(audit_log.c.seq)).mappings().all()
    assert [(r["outcome"], r["detail"]["status"]) for r in rows] == [
        ("ok", 200), ("denied", 403), ("unauthenticated", 401), ("not_found", 404),
        ("refused", 422), ("ok", 200)]
    first = rows[0]
    assert (first["actor"], first["role"], first["org"], first["purpose"], first["action"],
            first["resource"], first["n_records"]) == (
        "analyst", "analyst", "X26", "commissioning", "risk_list.read", "/risk/persons", 40)


def test_no_identifier_reaches_the_audit_log(world: World) -> None:
    own = world.keys_in(OWN_PRACTICE)
    world.call("mdt_clinician", "POST", "/reidentify",
               json={"person_keys": own[:2], "reason": "care_planning"})
    world.call("mdt_clinician", "POST", "/reverse-lookup",
               json={"nhs_numbers": [world.nhs[k] for k in own], "reason": "mdt_review"})
    world.call("mdt_clinician", "GET", f"/persons/{world.nhs[own[0]]}")
    exported = world.call("ig_lead", "GET", "/audit/export?format=jsonl").text
    # Every entry, the export's own included: it is written before the first byte leaves.
    assert exported.count("\n") == entries(world)
    for number in world.nhs.values():
        assert number not in exported
    assert '"person_keys"' in exported


def test_audit_search_pages_and_filters(world: World) -> None:
    for _ in range(3):
        world.call("analyst", "GET", "/aggregates?by=tier")
    page = world.call("ig_lead", "GET", "/audit?action=aggregate.read&limit=2").json()
    assert len(page["items"]) == 2 and page["next_after"] == page["items"][-1]["seq"]
    rest = world.call("ig_lead", "GET",
                      f"/audit?action=aggregate.read&after={page['next_after']}").json()
    assert len(rest["items"]) == 1 and rest["next_after"] is None
    assert all(i["actor"] == "analyst" for i in page["items"] + rest["items"])
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert world.call("ig_lead", "GET", "/audit", params={"since": later}).json()["items"] == []


def test_audit_export_csv_is_neutralised(world: World) -> None:
    # A user name cannot carry a formula into the log: the user-name rule refuses it first.
    refused = world.call("admin", "POST", "/users", json={"user_id": "=cmd", "org": "X26",
                                                          "roles": ["analyst"]})
    assert refused.status_code == 422
    # Every text field of an entry written directly starts with a character a spreadsheet
    # would run as a formula.
    formulas = {"actor": "=1+2", "role": "+role", "org": "-org", "purpose": "@purpose",
                "action": '=HYPERLINK("http://example.invalid","x")', "resource": "-2+3",
                "outcome": "\tok"}
    detail = {"note": "=SUM(A1:A9)"}
    seq = audit.log(world.haven.engine,
                    Actor(formulas["actor"], formulas["role"], formulas["org"],
                          formulas["purpose"]),
                    formulas["action"], formulas["resource"], outcome=formulas["outcome"],
                    n_records=3, detail=detail)

    text = world.call("ig_lead", "GET", "/audit/export?format=csv").text
    rows = {int(r["seq"]): r for r in csv.DictReader(io.StringIO(text))}
    row = rows[seq]
    assert {name: row[name] for name in formulas} == \
        {name: "'" + value for name, value in formulas.items()}
    assert row["n_records"] == "3"
    assert json.loads(row["detail"]) == detail  # a JSON object cell cannot start a formula
    assert all(not v.startswith(FORMULA_START) for r in rows.values() for v in r.values())

    lines = world.call("ig_lead", "GET", "/audit/export?format=jsonl").text.splitlines()
    entry = next(e for e in map(json.loads, lines) if e["seq"] == seq)
    assert {name: entry[name] for name in formulas} == formulas
    assert entry["n_records"] == 3 and entry["detail"] == detail


def test_audit_verify_finds_tampering(world: World) -> None:
    good = world.call("ig_lead", "GET", "/audit/verify").json()
    assert good["ok"] and good["finding"] is None
    with world.haven.engine.begin() as connection:  # someone with the database file
        connection.execute(text("DROP TRIGGER audit_log_no_update"))
        connection.execute(update(audit_log).where(audit_log.c.seq == 2)
                           .values(n_records=999))
    bad = world.call("ig_lead", "GET", "/audit/verify").json()
    assert not bad["ok"] and bad["finding"] == {"seq": 2, "problem": "modified"}


def test_destruction_certificates_and_retention(world: World) -> None:
    with world.haven.engine.begin() as connection:
        connection.execute(insert(destruction_certificates).values(
            certificate_id="dc-test-1", at=dt.datetime.now(dt.UTC), actor="haven",
            schedule="retention", extract_ids=["x"], counts={"rows": 3},
            manifest_digest="0" * 64, audit_seq=1))
        connection.execute(update(extracts).values(retention_date=dt.date(2020, 1, 1)))
    listed = world.call("ig_lead", "GET", "/destruction-certificates").json()["items"]
    assert [c["certificate_id"] for c in listed] == ["dc-test-1"]
    assert world.call("ig_lead", "GET", "/destruction-certificates/dc-test-1").json()[
        "counts"] == {"rows": 3}
    assert world.call("ig_lead", "GET", "/destruction-certificates/nope").status_code == 404
    due = world.call("ig_lead", "POST", "/retention/run", json={"dry_run": True}).json()
    assert [d["source"] for d in due["due"]] == ["gp_patients"]
    assert world.call("analyst", "GET", "/risk/persons").status_code == 200
    export = world.call("super_user", "POST", "/exports", json={"recipient": "RR8"}).json()
    real = world.call("ig_lead", "POST", "/retention/run", json={"dry_run": False}).json()
    certificate = real["result"]["certificate_id"]
    assert real["due"] == due["due"] and real["result"]["counts"]["runs_voided"] == 1
    listed = world.call("ig_lead", "GET", "/destruction-certificates").json()["items"]
    assert certificate in [c["certificate_id"] for c in listed]
    # Everything made from the destroyed register goes with it: the run and its export.
    assert world.call("analyst", "GET", "/risk/persons").status_code == 409
    assert world.call("super_user", "GET", f"/exports/{export['export_id']}").status_code == 404


def test_optout_report_counts_without_persons(world: World) -> None:
    own = world.keys_in(OWN_PRACTICE)
    land_optout(world, own[0], "ndoo")
    land_optout(world, own[1], "type1")
    world.call("mdt_clinician", "GET", f"/practices/{OWN_PRACTICE}/case-finding")
    report = world.call("ig_lead", "GET", "/optouts/report").json()
    assert report["by_type"] == {"consent_withdrawn": 0, "ndoo": "*", "type1": "*"}
    assert report["withheld_from_current_runs"] == {
        "commissioning": {"run_id": world.run_id, "persons": 2},
        "case_finding": {"run_id": world.run_id, "persons": 1}}
    assert not any(k in json.dumps(report) for k in own)


def test_policy_tables_are_read_and_changed_with_an_audit_entry(world: World) -> None:
    names = [t["name"] for t in world.call("ig_lead", "GET", "/policy-tables").json()["items"]]
    assert "retention.csv" in names and "casbin_policy.csv" not in names
    shipped = world.call("ig_lead", "GET", "/policy-tables/retention.csv").json()
    assert shipped["overridden"] is False and "apc,36" in shipped["content"]
    changed = shipped["content"].replace("apc,36,", "apc,48,")
    response = world.call("ig_lead", "PUT", "/policy-tables/retention.csv",
                          json={"content": changed})
    assert response.status_code == 200
    again = world.call("ig_lead", "GET", "/policy-tables/retention.csv").json()
    assert again["overridden"] and "apc,48," in again["content"]
    wrong = world.call("ig_lead", "PUT", "/policy-tables/retention.csv",
                       json={"content": "nope,columns\n1,2\n"})
    assert wrong.status_code == 422
    assert world.call("ig_lead", "GET", "/policy-tables/casbin_policy.csv").status_code == 404
    assert world.call("admin", "PUT", "/policy-tables/retention.csv",
                      json={"content": changed}).status_code == 403
    with world.haven.engine.connect() as connection:
        changes = connection.execute(select(audit_log.c.actor, audit_log.c.resource).where(
            audit_log.c.action == "policy_table.change")).all()
    assert changes == [("ig-lead", "policy/retention.csv")]
    restored = world.call("ig_lead", "DELETE", "/policy-tables/retention.csv").json()
    assert restored["overridden"] is False and restored["content"] == shipped["content"]


@pytest.mark.parametrize("role", ["ig_lead", "admin", "council_uploader"])
def test_no_patient_level_data_for_oversight_roles(world: World, role: str) -> None:
    key = world.keys_in(OWN_PRACTICE)[0]
    for method, path in (("GET", "/risk/persons"), ("GET", f"/persons/{key}"),
                         ("GET", f"/persons/{key}/fhir"), ("GET", "/aggregates?by=tier"),
                         ("GET", f"/practices/{OWN_PRACTICE}/case-finding")):
        assert world.call(role, method, path).status_code == 403, (role, path)
    for purpose in ("commissioning", "case_finding"):
        assert world.call(role, "GET", "/risk/persons", purpose=purpose).status_code == 403


def test_the_unit_cost_table_is_changed_only_through_the_super_users_route(world: World
                                                                           ) -> None:
    """Promise: only super users change the unit costs (issue #14); the IG lead's general
    policy-table route refuses it, naming the route (red team F8: it was accepted)."""
    shown = world.call("ig_lead", "GET", "/policy-tables/unit_costs.csv").json()
    edited = shown["content"] + "# an IG lead's edit\n"
    for method, body in (("PUT", {"json": {"content": edited}}), ("DELETE", {})):
        refused = world.call("ig_lead", method, "/policy-tables/unit_costs.csv", **body)
        assert refused.status_code == 403, refused.text
        assert "/analyses/unit-costs/table" in refused.text
    with world.haven.engine.connect() as connection:
        changes = connection.execute(select(audit_log.c.resource).where(
            audit_log.c.action == "policy_table.change")).all()
    assert changes == []
    assert world.call("ig_lead", "GET", "/policy-tables/unit_costs.csv").json()[
        "overridden"] is False
