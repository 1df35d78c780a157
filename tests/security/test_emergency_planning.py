"""Emergency planning (issue 14 part 6): the promises listed in docs/threat-model.md, each tried
as an attacker would, through the API and against governance directly, on synthetic 999-range
data. A planner sees suppressed counts only; a responder re-identifies only during an incident
an IG lead declared or approved (an admin alone opens nothing), only if its organisation is
named, only its sectors, never after it ends or expires; an opt-out is honoured by what it
covers (a council's withdrawal removes that council's rows, a whole-person objection holds back
that person only, counted); a reason holding an identifier is refused; every attempt is audited
without an NHS number."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator

import pandas as pd
import pytest
from api_matrix import PERSONS, World, build_world
from sqlalchemy import select

from api.config import ApiConfig
from api.users import add_user
from factories import rows_for, write_extract
from governance import incidents, optouts
from governance.audit import SYSTEM, Actor
from governance.policy_tables import add_months, policy_text, set_policy
from governance.reidentify import Refused
from governance.schema import audit_log
from linkage import person_index
from linkage.landing.land import LandingContext, land_file
from pipeline import incidents as pipeline_incidents
from pipeline.person_keys import person_ids_of

AT = dt.date(2025, 1, 1)
IG = Actor("ivy", "ig_lead", "X26", "governance")
RESPONDER = Actor("rex", "responder", "X26", "emergency_planning")
REASON = "flood: welfare visits to vulnerable residents"
ORGS = ["X26"]  # the world's responder's organisation


@pytest.fixture
def world(haven, tmp_path) -> Iterator[World]:
    """The API world, with every person's home care landed too (so all 40 adults are
    vulnerable), a planner and a responder, and the counts made."""
    found = build_world(haven, tmp_path, ApiConfig(refresh_seconds=0, token_cache_seconds=0))
    care = write_extract(tmp_path / "care", "social_care", rows_for("social_care", PERSONS, 7),
                         sender="E08000035")
    landing = LandingContext(haven.settings, haven.engine, haven.keys, haven.actor)
    assert land_file(landing, care).status == "landed"
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"))
    for role in ("planner", "responder"):
        found.tokens[role] = add_user(haven.engine, SYSTEM, role, "X26", [role],
                                      ("planner", "responder"))
    pipeline_incidents.vulnerable(haven, AT)
    files = haven.settings.layout.impact_outputs(pipeline_incidents.VULNERABLE)[-1]
    listed = pd.read_parquet(files.table("persons"))
    found.extra["sector"] = dict(zip(listed["person_key"], listed["postcode_sector"],
                                     strict=True))
    yield found


def _entries(world: World, action: str) -> list[dict]:
    with world.haven.engine.connect() as connection:
        return [dict(r) for r in connection.execute(
            select(audit_log).where(audit_log.c.action == action).order_by(audit_log.c.seq))
            .mappings()]


def _no_numbers(world: World) -> None:
    with world.haven.engine.connect() as connection:
        text = " ".join(str(tuple(r)) for r in connection.execute(select(audit_log)))
    digits = re.sub(r"\D", " ", text).split()
    assert not set(world.nhs.values()) & set(digits)


def _declare(world: World, sectors: list[str], role: str = "ig_lead") -> dict:
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    response = world.call(role, "POST", "/incidents",
                          json={"reason": REASON, "sectors": sectors, "organisations": ORGS,
                                "expires_at": expires})
    assert response.status_code == 201, response.text
    return response.json()


def test_planner_counts_are_suppressed_and_name_nobody(world: World) -> None:
    """Promise: a planner sees counts of vulnerable adults by postcode sector only as
    published (1-7 hidden, others rounded to 5, no hidden cell recoverable from its total),
    never a person key or NHS number, and has no route to a list."""
    response = world.call("planner", "GET", "/emergency/vulnerable")
    assert response.status_code == 200, response.text
    body = response.json()
    cells = [row[c] for row in body["sectors"] for c in ("home_care", "any", "frailty")]
    assert "*" in cells  # 40 persons over many sectors: small counts exist and are hidden
    assert all(c == "*" or (isinstance(c, int) and c % 5 == 0) for c in cells)
    assert body["totals"]["any"] == 40 and body["totals"]["home_care"] == 40
    shown = [row["any"] for row in body["sectors"]]
    assert sum(1 for c in shown if c == "*") != 1  # never one hidden cell beside its total
    assert not re.search(r"P[0-9a-f]{20}", response.text)
    assert not set(world.nhs.values()) & set(re.findall(r"\d{10}", response.text))
    # A planner has no way to a list: the responder's route refuses them.
    refused = world.call("planner", "POST", "/incidents/INC-20250101-abcdef12/reidentify",
                         json={"reason": REASON})
    assert refused.status_code == 403


def test_responder_outside_an_incident_is_refused_and_audited(world: World) -> None:
    """Promise: outside a declared incident a responder re-identifies no one; the attempt
    is audited as a refused re-identification."""
    response = world.call("responder", "POST", "/incidents/INC-20250101-abcdef12/reidentify",
                          json={"reason": REASON})
    assert response.status_code == 404
    assert "no incident" in response.json()["detail"]
    entry = _entries(world, "reidentify")[-1]
    assert entry["outcome"] == "refused" and entry["detail"]["rule"] == "incident"
    assert entry["detail"]["via"] == "incident"


@pytest.mark.parametrize("role", ["analyst", "super_user", "mdt_clinician", "responder",
                                  "planner", "council_uploader"])
def test_declaration_by_a_wrong_role_is_refused_and_audited(world: World, role: str) -> None:
    """Promise: only an IG lead or an admin declares an incident; anyone else is refused
    (Casbin) and the refusal audited, and no incident exists afterwards."""
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    response = world.call(role, "POST", "/incidents",
                          json={"reason": REASON, "sectors": ["LS1 1"], "organisations": ORGS,
                                "expires_at": expires})
    assert response.status_code == 403
    denied = [e for e in _entries(world, "incident.create") if e["outcome"] == "denied"]
    assert denied and denied[-1]["role"] == role
    assert incidents.listed(world.haven.engine) == []


def test_governance_refuses_a_declaration_by_any_other_role(world: World) -> None:
    """Promise: governance refuses a declaration by any other role even if a rule were
    added, and audits it with the reason's category, never its text."""
    engine = world.haven.engine
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    with pytest.raises(Refused) as caught:
        incidents.declare(engine, RESPONDER, REASON, ["LS1 1"], ORGS, until)
    assert caught.value.rule == "role"
    entry = _entries(world, "incident.declare")[-1]
    assert (entry["outcome"], entry["detail"]["rule"], entry["role"]) == (
        "refused", "role", "responder")
    assert REASON not in str(entry["detail"])  # the category and length, never the text


def test_responder_during_an_incident_gets_its_sectors_only(world: World) -> None:
    """Promise: during an incident a responder re-identifies the vulnerable adults of its
    sectors and no one else; naming one person outside refuses the whole request; the audit
    holds no NHS number."""
    sector = world.extra["sector"]
    chosen = sorted(set(sector.values()))[:2]
    incident = _declare(world, [s.lower() for s in chosen])  # written as people write them
    assert incident["sectors"] == chosen and incident["in_force"]
    path = f"/incidents/{incident['incident_id']}/reidentify"
    response = world.call("responder", "POST", path, json={"reason": REASON})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    inside = sorted(k for k, s in sector.items() if s in chosen)
    assert sorted(i["person_key"] for i in items) == inside and inside
    assert all(i["nhs_number"] == world.nhs[i["person_key"]] for i in items)
    assert all(i["flags"] and i["postcode_sector"] in chosen for i in items)
    outside = next(k for k, s in sector.items() if s not in chosen)
    refused = world.call("responder", "POST", path,
                         json={"reason": REASON, "person_keys": [inside[0], outside]})
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith("1 of 2 persons do not live")
    rules = [e["detail"]["rule"] for e in _entries(world, "reidentify")]
    assert rules[-2:] == ["ok", "sector"]
    # The other roles may not ask, even during an incident.
    for role in ("analyst", "mdt_clinician", "ig_lead", "admin"):
        assert world.call(role, "POST", path, json={"reason": REASON}).status_code == 403
    _no_numbers(world)


def test_after_the_end_or_expiry_a_list_is_refused(world: World) -> None:
    """Promise: once an incident is ended or has expired its list is refused."""
    sector = world.extra["sector"]
    chosen = sorted(set(sector.values()))[:1]
    incident = _declare(world, chosen, role="admin")
    path = f"/incidents/{incident['incident_id']}"
    assert world.call("ig_lead", "POST", f"{path}/approve").status_code == 200
    assert world.call("responder", "POST", f"{path}/reidentify",
                      json={"reason": REASON}).status_code == 200
    ended = world.call("ig_lead", "POST", f"{path}/end")
    assert ended.status_code == 200 and not ended.json()["in_force"]
    assert world.call("ig_lead", "POST", f"{path}/end").status_code == 404  # once
    response = world.call("responder", "POST", f"{path}/reidentify", json={"reason": REASON})
    assert response.status_code == 404
    listed = world.call("responder", "GET", "/incidents").json()["items"]
    assert [i["in_force"] for i in listed] == [False] and listed[0]["ended_by"] == "ig-lead"
    # Expiry: the same request a moment after the declared expiry.
    engine, keys = world.haven.engine, world.haven.keys
    until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    live = incidents.declare(engine, IG, REASON, chosen, ORGS, until)
    ids = person_ids_of(world.haven.settings, [k for k, s in sector.items() if s in chosen])
    pids = sorted(p for found in ids.values() for p in found)
    assert incidents.reidentify(engine, keys, RESPONDER, live.incident_id, pids, REASON,
                                lambda _p: chosen[0], now=until - dt.timedelta(seconds=1)
                                ).numbers
    with pytest.raises(Refused) as caught:
        incidents.reidentify(engine, keys, RESPONDER, live.incident_id, pids, REASON,
                             lambda _p: chosen[0], now=until)
    assert caught.value.rule == "incident"
    assert incidents.get(engine, live.incident_id).status(until) == "expired"
    _no_numbers(world)


def test_governance_rules_each_refuse_and_are_audited(world: World) -> None:
    """Promise: a declaration needs a reason, real postcode sectors and an expiry within 14
    days; a re-identification needs the emergency_planning purpose, a reason, an incident
    in force and persons the vault holds; each refusal is audited by rule, and a path
    parameter that is not an incident id never reaches the audit resource."""
    engine, keys = world.haven.engine, world.haven.keys
    now = dt.datetime.now(dt.UTC)
    soon = now + dt.timedelta(days=1)
    for sectors, until, reason, rule in (
            (["LS1 1"], soon, "short", "reason"),
            (["not a sector"], soon, REASON, "sectors"),
            ([], soon, REASON, "sectors"),
            ([f"LS{i} {j}" for i in range(1, 30) for j in range(10)], soon, REASON, "sectors"),
            (["LS1 1"], now + dt.timedelta(days=incidents.MAX_DAYS + 1), REASON, "expiry"),
            (["LS1 1"], now - dt.timedelta(seconds=1), REASON, "expiry")):
        with pytest.raises(Refused) as caught:
            incidents.declare(engine, IG, reason, sectors, ORGS, until, now=now)
        assert caught.value.rule == rule
    naive = soon.replace(tzinfo=None)  # a time without a zone is taken as UTC
    live = incidents.declare(engine, IG, REASON, ["LS1 1"], ORGS, naive)
    assert incidents.get(engine, live.incident_id).in_force(now)
    assert incidents.get(engine, "INC-20000101-00000000") is None
    with pytest.raises(Refused, match="only an IG lead"):
        incidents.end(engine, RESPONDER, live.incident_id)
    with pytest.raises(Refused) as caught:
        incidents.end(engine, IG, "INC-20000101-00000000")
    assert caught.value.rule == "incident"
    analyst = Actor("ana", "analyst", "X26", "commissioning")
    fake = "f" * 64  # in the sector, but no one the vault holds
    for who, pids, reason, incident_id, rule in (
            (analyst, [fake], REASON, live.incident_id, "purpose"),
            (RESPONDER, [fake], "short", live.incident_id, "reason"),
            (RESPONDER, [fake], REASON, "../etc", "incident"),
            (RESPONDER, [], REASON, live.incident_id, "empty"),
            (RESPONDER, [fake], REASON, live.incident_id, "not_found")):
        with pytest.raises(Refused) as caught:
            incidents.reidentify(engine, keys, who, incident_id, pids, reason,
                                 lambda _p: "LS1 1")
        assert caught.value.rule == rule
    resources = [e["resource"] for e in _entries(world, "reidentify")]
    assert "incidents/-" in resources and not any(".." in r for r in resources)
    refused = [e["detail"]["rule"] for e in _entries(world, "incident.declare")
               if e["outcome"] == "refused"]
    assert refused == ["reason", "sectors", "sectors", "sectors", "expiry", "expiry"]


def _land_optout(world: World, key: str, kind: str, sender: str) -> None:
    """An opt-out of `kind` for one of the world's persons, sent by `sender`, lands."""
    optout = rows_for("optouts", 1, seed=3)[0]
    optout.update(nhs_number=world.nhs[key], optout_type=kind)
    path = write_extract(world.inbox / f"optout-{kind}-{sender}-{key}", "optouts", [optout],
                         sender=sender)
    haven = world.haven
    receipt = land_file(LandingContext(haven.settings, haven.engine, haven.keys, haven.actor),
                        path)
    assert receipt.status == "landed" and not receipt.rejected_rows, receipt.reason


def _listed(world: World, incident_id: str) -> dict:
    response = world.call("responder", "POST", f"/incidents/{incident_id}/reidentify",
                          json={"reason": REASON})
    assert response.status_code == 200, response.text
    return response.json()


def _recompute(world: World) -> None:
    """`haven emergency vulnerable` again. Output ids are per second (pipeline/impact.py
    `output_id`: two in one second with the same date collide), so wait for the next."""
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    while dt.datetime.now(dt.UTC).replace(microsecond=0) == started:
        time.sleep(0.05)
    pipeline_incidents.vulnerable(world.haven, AT)


def _persons(world: World) -> pd.DataFrame:
    files = world.haven.settings.layout.impact_outputs(pipeline_incidents.VULNERABLE)[-1]
    return pd.read_parquet(files.table("persons")).set_index("person_key")


def test_a_council_withdrawal_for_a_non_client_changes_no_list(world: World) -> None:
    """Promise (red-team F2): a council's withdrawn consent covers that council's social care
    data only. Attack: a second council (not the person's) sends a withdrawal for someone on
    an incident's list, then the list is asked for. Before the fix the whole list was refused
    ("1 of n persons have an opt-out"); now only that person is held back until the counts
    are recomputed (red-team R4: failing closed, the list cannot have honoured an opt-out
    received after it was made), and after recomputing the list is as before."""
    sector = world.extra["sector"]
    chosen = sorted(set(sector.values()))[:2]
    incident = _declare(world, chosen)
    before = _listed(world, incident["incident_id"])
    assert len(before["items"]) >= 2
    target = before["items"][0]["person_key"]
    _land_optout(world, target, "consent_withdrawn", "E08000036")  # not their council
    stale = _listed(world, incident["incident_id"])
    assert stale["items"] == before["items"][1:]
    assert (stale["held_back_by_opt_out"], stale["held_back_since_counts"]) == (1, 1)
    _recompute(world)  # the list recomputed through the filter
    after = _listed(world, incident["incident_id"])
    assert after["items"] == before["items"] and after["held_back_by_opt_out"] == 0
    assert "note" not in after and after["held_back_since_counts"] == 0


def test_a_withdrawal_removes_only_the_councils_rows_from_the_flags(world: World) -> None:
    """Promise (F2): the list is computed through the emergency_planning row filter, so a
    person whose only flag came from the social care data their council's withdrawal covers
    is not on it at all, and nobody else is touched."""
    persons = _persons(world)
    only_care = sorted(persons.index[(persons["flags"] == 1) & persons["home_care"]])
    assert only_care  # the world gives everyone home care; some have no other flag
    target = only_care[0]
    _land_optout(world, target, "consent_withdrawn", "E08000035")  # their own council
    _recompute(world)
    after = _persons(world)
    assert target not in after.index
    assert sorted(after.index) == sorted(set(persons.index) - {target})
    home = persons.loc[target, "postcode_sector"]
    other = next(s for s in sorted(set(after["postcode_sector"])) if s != home)
    incident = _declare(world, [home, other])
    listed = _listed(world, incident["incident_id"])
    keys = sorted(i["person_key"] for i in listed["items"])
    assert keys == sorted(after.index[after["postcode_sector"].isin([home, other])])
    assert target not in keys and listed["held_back_by_opt_out"] == 0


def test_a_withdrawal_after_the_counts_run_holds_the_person_back_at_once(world: World
                                                                           ) -> None:
    """Promise (red-team R4): an opt-out received after the counts were made holds that person
    back at once, counted with the others held back, with a note to recompute; never located
    by a list that ignored it. Attack: the person's own council withdraws consent for someone
    flagged only by its home care, and the responder asks for the list before anyone reruns
    `haven emergency vulnerable` (before the fix: returned with flag home_care). Counts made
    before the register time was recorded hold back anyone with an opt-out at all."""
    persons = _persons(world)
    only_care = sorted(persons.index[(persons["flags"] == 1) & persons["home_care"]])
    target = only_care[0]
    home = persons.loc[target, "postcode_sector"]
    other = next(s for s in sorted(set(persons["postcode_sector"])) if s != home)
    incident = _declare(world, [home, other])
    before = _listed(world, incident["incident_id"])
    assert target in [i["person_key"] for i in before["items"]] and len(before["items"]) > 1
    assert before["held_back_since_counts"] == 0 and "note" not in before
    _land_optout(world, target, "consent_withdrawn", "E08000035")  # their own council
    stale = _listed(world, incident["incident_id"])
    keys = [i["person_key"] for i in stale["items"]]
    assert keys == [k for k in (i["person_key"] for i in before["items"]) if k != target]
    assert (stale["held_back_by_opt_out"], stale["held_back_since_counts"]) == (1, 1)
    assert stale["note"] == f"1 {incidents.RECOMPUTE}"
    assert world.nhs[target] not in str(stale)
    entry = _entries(world, "reidentify")[-1]
    assert (entry["detail"]["held_back"], entry["detail"]["held_back_since"]) == (1, 1)
    # Governance alone: the same, and a register read after the opt-out holds no one back.
    engine, keys_ = world.haven.engine, world.haven.keys
    pids = person_ids_of(world.haven.settings, [target])[target]
    now = dt.datetime.now(dt.UTC)
    made = now - dt.timedelta(hours=1)
    assert incidents.received_since(engine, pids, made, now) == set(pids)
    assert incidents.received_since(engine, pids, now, now) == set()
    assert incidents.received_since(engine, [], made, now) == set()
    # Received before the counts but in force only since: held back as well.
    from governance.schema import optouts as register
    with engine.begin() as connection:
        extract = connection.execute(select(register.c.extract_id).where(
            register.c.person_id.in_(pids))).scalars().first()
        connection.execute(register.insert().values(
            person_id="later", optout_type="ndoo", effective_date=now.date()
            + dt.timedelta(days=10), withdrawn=False, sender="X26", extract_id=extract,
            row=999))
    assert incidents.received_since(engine, ["later"], now, now) == set()  # not yet
    assert incidents.received_since(engine, ["later"], now, now + dt.timedelta(days=10)) \
        == {"later"}
    found = incidents.reidentify(engine, keys_, RESPONDER, incident["incident_id"], pids,
                                 REASON, lambda _p: home, since=made)
    assert (found.numbers, found.held_back, found.held_back_since) == ({}, 1, 1)
    # Counts without the register time (made before it was recorded): fail closed.
    files = world.haven.settings.layout.impact_outputs(pipeline_incidents.VULNERABLE)[-1]
    summary = json.loads(files.result.read_text(encoding="utf-8"))
    assert pipeline_incidents._read_at(summary) == dt.datetime.fromisoformat(
        summary["register_read_at"])
    assert pipeline_incidents._read_at({}) == dt.datetime.min.replace(tzinfo=dt.UTC)
    # Recomputed: the withdrawal is honoured by the list itself, no one is held back.
    _recompute(world)
    after = _listed(world, incident["incident_id"])
    assert target not in [i["person_key"] for i in after["items"]]
    assert (after["held_back_by_opt_out"], after["held_back_since_counts"]) == (0, 0)
    _no_numbers(world)


def test_a_whole_person_objection_holds_back_that_person_only(world: World) -> None:
    """Promise (F2): a whole-person opt-out covering emergency planning (an IG lead adds the
    row; none by default) holds back that person only: the others are listed, the person is
    counted once for the whole incident (no per-sector figure to locate them by) and never
    named. The governance rule answers the same without the pipeline."""
    engine, keys = world.haven.engine, world.haven.keys
    table = policy_text(optouts.POLICY, engine)
    optouts.set_purposes(engine, table + "ndoo,emergency_planning,*,all\n", IG)
    sector = world.extra["sector"]
    chosen = sorted(set(sector.values()))[:3]
    inside = sorted(k for k, s in sector.items() if s in chosen)
    target = inside[0]
    _land_optout(world, target, "ndoo", "X26")
    incident = _declare(world, chosen)
    body = _listed(world, incident["incident_id"])
    assert sorted(i["person_key"] for i in body["items"]) == inside[1:]
    assert body["held_back_by_opt_out"] == 1
    assert set(body) == {"incident_id", "counts_id", "items", "held_back_by_opt_out",
                         "held_back_since_counts", "without_nhs_number", "note"}
    assert world.nhs[target] not in str(body)
    entry = _entries(world, "reidentify")[-1]
    assert (entry["outcome"], entry["detail"]["held_back"], entry["n_records"]) == (
        "allowed", 1, len(inside) - 1)
    # Asking for the objector alone: answered with no one, counted, never refused.
    pids = person_ids_of(world.haven.settings, [target])[target]
    alone = incidents.reidentify(engine, keys, RESPONDER, incident["incident_id"], pids,
                                 REASON, lambda _p: sector[target])
    assert (alone.numbers, alone.held_back) == ({}, 1)
    _no_numbers(world)


def test_an_admin_alone_opens_no_list(world: World) -> None:
    """Promise (red-team F3): an admin cannot widen access to person-level data alone. Attack:
    an admin declares an incident and a responder asks for its list at once: refused (the
    incident is pending); the admin cannot approve it; an IG lead other than the declarer
    approves, and only then is the list answered. Every refusal is audited."""
    sector = world.extra["sector"]
    chosen = sorted(set(sector.values()))[:1]
    incident = _declare(world, chosen, role="admin")
    assert (incident["status"], incident["in_force"]) == ("pending", False)
    path = f"/incidents/{incident['incident_id']}"
    refused = world.call("responder", "POST", f"{path}/reidentify", json={"reason": REASON})
    assert refused.status_code == 404
    assert _entries(world, "reidentify")[-1]["detail"]["rule"] == "incident"
    assert world.call("admin", "POST", f"{path}/approve").status_code == 403
    assert _entries(world, "incident.approve")[-1]["detail"]["rule"] == "role"
    approved = world.call("ig_lead", "POST", f"{path}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "in_force"
    assert approved.json()["approved_by"] == "ig-lead"
    assert world.call("ig_lead", "POST", f"{path}/approve").status_code == 404  # once
    assert _listed(world, incident["incident_id"])["items"]
    # The declarer may not approve their own, whatever roles they hold.
    engine = world.haven.engine
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    own = incidents.declare(engine, Actor("ada", "admin", "X26", "administration"), REASON,
                            chosen, ORGS, until)
    with pytest.raises(Refused) as caught:
        incidents.approve(engine, Actor("ada", "ig_lead", "X26", "governance"),
                          own.incident_id)
    assert caught.value.rule == "two_person"
    assert not incidents.get(engine, own.incident_id).in_force(dt.datetime.now(dt.UTC))
    # An IG lead's own declaration is in force at once (the governance authority).
    assert _declare(world, chosen)["status"] == "in_force"


def test_a_responder_of_another_organisation_is_refused(world: World) -> None:
    """Promise (F3): an incident names its responding organisations; a responder of any
    other organisation is refused (the Casbin rule lets any responder ask) and audited."""
    world.tokens["responder_elsewhere"] = add_user(
        world.haven.engine, SYSTEM, "rita", "RR8", ["responder"], ("planner", "responder"))
    sector = world.extra["sector"]
    incident = _declare(world, sorted(set(sector.values()))[:1])
    assert incident["organisations"] == ORGS
    path = f"/incidents/{incident['incident_id']}/reidentify"
    refused = world.call("responder_elsewhere", "POST", path, json={"reason": REASON})
    assert refused.status_code == 403
    assert "other responding organisations" in refused.json()["detail"]
    entry = _entries(world, "reidentify")[-1]
    assert (entry["outcome"], entry["detail"]["rule"], entry["org"]) == (
        "refused", "organisation", "RR8")
    assert world.call("responder", "POST", path, json={"reason": REASON}).status_code == 200


def test_sectors_and_concurrent_incidents_are_capped(world: World) -> None:
    """Promise (F3): an incident covers at most `max_sectors` postcode sectors and at most
    `max_concurrent` incidents are in force or pending at once (policies/incidents.json, an
    IG lead may change it, checked). Attack: an admin declares every sector (the red team's
    "routine check of the list"): refused with a 422 naming the field; incidents one per
    sector stop at the cap."""
    sector = world.extra["sector"]
    every = sorted(set(sector.values()))
    cap = incidents.limits(world.haven.engine)
    assert len(every) > cap["max_sectors"] or cap["max_sectors"] <= 20
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    many = [f"LS{i} {j}" for i in range(1, 4) for j in range(10)]  # 30 sectors
    response = world.call("admin", "POST", "/incidents",
                          json={"reason": "routine check of the list", "sectors": many,
                                "organisations": ORGS, "expires_at": expires})
    assert response.status_code == 422 and "sectors: at most 20" in response.json()["detail"]
    for one in every[:cap["max_concurrent"]]:
        _declare(world, [one])
    fourth = world.call("ig_lead", "POST", "/incidents",
                        json={"reason": REASON, "sectors": [every[-1]], "organisations": ORGS,
                              "expires_at": expires})
    assert fourth.status_code == 403 and "at most 3 incidents" in fourth.json()["detail"]
    assert [e["detail"]["rule"] for e in _entries(world, "incident.declare")
            if e["outcome"] == "refused"] == ["sectors", "concurrent"]
    first = incidents.listed(world.haven.engine)[-1]
    incidents.end(world.haven.engine, IG, first.incident_id)  # ending one frees a place
    _declare(world, [every[-1]])
    # An IG lead may lower the caps; a table that is not usable is refused, naming the field.
    engine = world.haven.engine
    set_policy(engine, "incidents.json", '{"max_sectors": 1, "max_concurrent": 3, '
               '"max_organisations": 1, "max_days": 2}', IG)
    assert incidents.limits(engine)["max_sectors"] == 1
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    for sectors, orgs, rule in ((every[:2], ORGS, "sectors"), (every[:1], ["X26", "RR8"],
                                                              "organisations"),
                                (every[:1], ["not an ods code"], "organisations"),
                                (every[:1], [], "organisations")):
        with pytest.raises(Refused) as caught:
            incidents.declare(engine, IG, REASON, sectors, orgs, until)
        assert caught.value.rule == rule
    for bad, field in (('{"max_sectors": 0, "max_concurrent": 1, "max_organisations": 1, '
                        '"max_days": 1}', "max_sectors"),
                       ('{"max_sectors": 1, "max_concurrent": true, "max_organisations": 1, '
                        '"max_days": 1}', "max_concurrent"),
                       ('{"max_sectors": 1, "max_concurrent": 1, "max_organisations": 1, '
                        '"max_days": 15}', "max_days"),
                       ('{"max_sectors": 21, "max_concurrent": 1, "max_organisations": 1, '
                        '"max_days": 1}', "max_sectors"),
                       ('[1]', "JSON object")):
        with pytest.raises(ValueError, match=field):
            set_policy(engine, "incidents.json", bad, IG)


def test_an_ig_lead_cannot_raise_incident_limits_alone(world: World) -> None:
    """Promise (red-team R1): the shipped incident limits are ceilings in code; an IG lead may
    lower any of them, never raise one. Attack: the red team's PUT of
    {"max_sectors":200,"max_concurrent":1000,"max_organisations":50,"max_days":14} (then an
    incident of every sector): 422 naming the limit, nothing stored, every sector refused;
    each limit raised by one alone is refused too."""
    shipped = incidents.limits()
    assert shipped == incidents.CEILINGS  # the shipped table is at the ceilings
    attack = ('{"max_sectors": 200, "max_concurrent": 1000, "max_organisations": 50, '
              '"max_days": 14}')
    response = world.call("ig_lead", "PUT", "/policy-tables/incidents.json",
                          json={"content": attack})
    assert response.status_code == 422 and "max_sectors must be at most 20" in response.text
    engine = world.haven.engine
    assert incidents.limits(engine) == shipped  # nothing stored
    every = sorted(set(world.extra["sector"].values()))
    assert len(every) > shipped["max_sectors"]
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    whole = world.call("ig_lead", "POST", "/incidents",
                       json={"reason": REASON, "sectors": every, "organisations": ORGS,
                             "expires_at": expires})
    assert whole.status_code == 422 and incidents.listed(engine) == []
    for name, ceiling in incidents.CEILINGS.items():
        raised = {**shipped, name: ceiling + 1}
        with pytest.raises(ValueError, match=f"{name} must be at most {ceiling}"):
            set_policy(engine, "incidents.json", json.dumps(raised), IG)
    lowered = {name: 1 for name in incidents.CEILINGS}
    set_policy(engine, "incidents.json", json.dumps(lowered), IG)
    assert incidents.limits(engine) == lowered


def test_live_incidents_cover_at_most_N_sectors_together(world: World) -> None:
    """Promise (red-team R1): live incidents (in force or pending) cover at most
    `max_total_sectors` distinct postcode sectors together (20 shipped), so three incidents
    of 20 sectors cannot make 60. Attack: a second and third incident of new sectors after
    one of 20: refused (`total_sectors`, audited); a sector already live is not counted
    twice; ending the first frees its sectors."""
    engine = world.haven.engine
    cap = incidents.limits(engine)["max_total_sectors"]
    assert cap == 20
    pool = [f"LS{i} {j}" for i in range(1, 5) for j in range(10)]  # 40 distinct sectors
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    first = incidents.declare(engine, IG, REASON, pool[:cap], ORGS, until)
    for sectors in (pool[cap:cap + 1], pool[cap:2 * cap]):
        with pytest.raises(Refused) as caught:
            incidents.declare(engine, IG, REASON, sectors, ORGS, until)
        assert caught.value.rule == "total_sectors"
    admin = Actor("ada", "admin", "X26", "administration")
    with pytest.raises(Refused) as caught:  # a pending one counts as live too
        incidents.declare(engine, admin, REASON, pool[cap:cap + 1], ORGS, until)
    assert caught.value.rule == "total_sectors"
    incidents.declare(engine, IG, REASON, pool[:2], ORGS, until)  # the same sectors again
    assert [e["detail"]["rule"] for e in _entries(world, "incident.declare")
            if e["outcome"] == "refused"] == ["total_sectors"] * 3
    incidents.end(engine, IG, first.incident_id)
    pending = incidents.declare(engine, admin, REASON, pool[cap:2 * cap - 2], ORGS, until)
    assert pending.status(dt.datetime.now(dt.UTC)) == "pending"
    with pytest.raises(Refused) as caught:  # 2 + 18 live: one more sector is too many
        incidents.declare(engine, IG, REASON, pool[-1:], ORGS, until)
    assert caught.value.rule == "total_sectors"
    live = [i for i in incidents.listed(engine) if i.live(dt.datetime.now(dt.UTC))]
    assert len(set().union(*(i.sectors for i in live))) == cap


def test_a_reason_holding_an_nhs_number_is_refused(world: World) -> None:
    """Promise (red-team F10, R5): an incident's reason, which every responder reads, holds no
    identifier however grouped. Attack: the red team's reason "Mrs X <NHS number> LS3 3TG
    needs oxygen", the number in pairs, 4-3-3, digit by digit, glued to letters: 422,
    the error names the field and never the value, nothing is stored, the audit holds no
    number."""
    number = sorted(world.nhs.values())[0]
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    forms = (number, f"{number[:3]} {number[3:6]} {number[6:]}",
             " ".join(number[i:i + 2] for i in range(0, 10, 2)),  # red-team R5's forms
             f"{number[:4]} {number[4:7]} {number[7:]}", " ".join(number),
             f"ref {number}abcdef")
    for written in forms:
        response = world.call("ig_lead", "POST", "/incidents",
                              json={"reason": f"Mrs X {written} LS3 3TG needs oxygen",
                                    "sectors": ["LS3 3"], "organisations": ORGS,
                                    "expires_at": expires})
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith("reason: holds something shaped like")
        assert number[:6] not in response.text
    assert incidents.listed(world.haven.engine) == []
    assert [e["detail"]["rule"] for e in _entries(world, "incident.declare")] == \
        ["reason"] * len(forms)
    _no_numbers(world)
    declared = incidents.declare(world.haven.engine, IG, "flood from 2026-12-04 12:30, "
                                 "ticket 123456789012", ["LS3 3"], ORGS,
                                 dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert declared.status(dt.datetime.now(dt.UTC)) == "in_force"  # no false refusal


def test_an_incidents_reason_is_destroyed_after_its_period(world: World) -> None:
    """Promise (red-team F10): an ended or expired incident's reason is destroyed after its
    retention period (`incidents` in policies/retention.csv), with destroy-all and on its own
    when no extract is due; the destruction certificate measures what is left. Attack: the
    red team's `haven retention run --as-of 2040-01-01`, after which the table still held the
    reason."""
    from governance import retention
    from governance.schema import incidents as incidents_table
    from governance.schema import policy_overrides
    from pipeline import govern

    engine = world.haven.engine
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    ended = incidents.declare(engine, IG, REASON, ["LS1 1"], ORGS, until)
    incidents.end(engine, IG, ended.incident_id)
    incidents.declare(engine, IG, "power cut: check on oxygen users", ["LS2 1"], ORGS, until)
    today = dt.datetime.now(dt.UTC).date()
    assert incidents.reasons_due(engine, today + dt.timedelta(days=30)) == []  # in its period
    months = incidents.retain_months(engine)
    assert months == 12
    assert incidents.reasons_due(engine, add_months(today, months) + dt.timedelta(days=1)) \
        == [ended.incident_id]  # the one in force is not due yet
    certificate = govern.destroy_expired(world.haven, dt.date(2040, 1, 1))
    assert certificate.extract_ids  # destroy-all: every extract went too
    assert certificate.counts["incident_reasons_removed"] == 2
    assert certificate.remaining["incident_reasons"] == 0
    with engine.connect() as connection:
        rows = connection.execute(select(incidents_table)).mappings().all()
    assert len(rows) == 2 and {r["reason"] for r in rows} == {""}  # the record stays
    assert REASON not in str([dict(r) for r in rows])
    # No extract left to destroy: the reasons still go (audited), a dry run changes nothing.
    later = incidents.declare(engine, IG, REASON, ["LS3 1"], ORGS, until)
    incidents.end(engine, IG, later.incident_id)
    assert govern.destroy_expired(world.haven, dt.date(2040, 1, 1), dry_run=True
                                  ).extract_ids == []
    assert incidents.get(engine, later.incident_id).reason == REASON
    retention.run(world.haven.settings, engine, IG, dt.date(2040, 1, 1))
    assert incidents.get(engine, later.incident_id).reason == ""
    entry = _entries(world, "incident.destroy_reasons")[-1]
    assert entry["n_records"] == 1 and REASON not in str(entry["detail"])
    assert incidents.destroy_reasons(engine, IG, dt.date(2040, 1, 1)) == 0  # nothing left
    # An IG lead's retention table from before the row: the shipped period applies.
    shipped = policy_text("retention.csv")
    with engine.begin() as connection:
        connection.execute(policy_overrides.insert().values(
            name="retention.csv", changed_by="ivy", changed_at=dt.datetime.now(dt.UTC),
            content="\n".join(line for line in shipped.splitlines()
                              if not line.startswith("incidents,"))))
    assert incidents.retain_months(engine) == months
