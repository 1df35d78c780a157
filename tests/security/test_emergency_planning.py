"""Emergency planning (issue 14 part 6): the promises listed in docs/threat-model.md, each tried
as an attacker would, through the API and against governance directly, on synthetic 999-range
data. A planner sees suppressed counts only; a responder re-identifies only during an incident
an IG lead or admin declared, only its sectors, never after it ends or expires; every attempt
is audited without an NHS number."""

from __future__ import annotations

import datetime as dt
import re
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
                          json={"reason": REASON, "sectors": sectors, "expires_at": expires})
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
                          json={"reason": REASON, "sectors": ["LS1 1"], "expires_at": expires})
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
        incidents.declare(engine, RESPONDER, REASON, ["LS1 1"], until)
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
    live = incidents.declare(engine, IG, REASON, chosen, until)
    ids = person_ids_of(world.haven.settings, [k for k, s in sector.items() if s in chosen])
    pids = sorted(p for found in ids.values() for p in found)
    assert incidents.reidentify(engine, keys, RESPONDER, live.incident_id, pids, REASON,
                                lambda _p: chosen[0], now=until - dt.timedelta(seconds=1))
    with pytest.raises(Refused) as caught:
        incidents.reidentify(engine, keys, RESPONDER, live.incident_id, pids, REASON,
                             lambda _p: chosen[0], now=until)
    assert caught.value.rule == "incident"
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
            incidents.declare(engine, IG, reason, sectors, until, now=now)
        assert caught.value.rule == rule
    naive = soon.replace(tzinfo=None)  # a time without a zone is taken as UTC
    live = incidents.declare(engine, IG, REASON, ["LS1 1"], naive)
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


def test_an_opt_out_covering_emergency_planning_is_honoured(world: World) -> None:
    """Promise: an opt-out an IG lead makes cover emergency planning is honoured at once
    (the default table applies none: docs/impact.md); the whole request is refused."""
    from api_matrix import land_optout

    engine, keys = world.haven.engine, world.haven.keys
    from governance.policy_tables import policy_text

    table = policy_text(optouts.POLICY, engine)
    optouts.set_purposes(engine, table + "ndoo,emergency_planning,*,all\n", IG)
    key = sorted(world.nhs)[0]
    land_optout(world, key, "ndoo")
    sector = world.extra["sector"][key]
    live = incidents.declare(engine, IG, REASON, [sector],
                             dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    pids = person_ids_of(world.haven.settings, [key])[key]
    with pytest.raises(Refused) as caught:
        incidents.reidentify(engine, keys, RESPONDER, live.incident_id, pids, REASON,
                             lambda _p: sector)
    assert caught.value.rule == "opt_out"
    assert [i.incident_id for i in incidents.listed(engine)] == [live.incident_id]
