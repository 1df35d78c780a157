"""Re-identification by MDTs: their own practice's listed persons, with a reason, for
individual care; everything else refused and audited. Reverse lookup never answers for
anyone else's patients."""

from __future__ import annotations

import pytest
from api_matrix import OTHER_PRACTICE, OWN_PRACTICE, World, build_world, land_optout
from sqlalchemy import select

from governance.schema import audit_log


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path)


def reidentify(world: World, keys: list[str], reason: str | None = "mdt_review",
               purpose: str | None = None, role: str = "mdt_clinician"):
    body = {"person_keys": keys} | ({"reason": reason} if reason else {})
    return world.call(role, "POST", "/reidentify", json=body, purpose=purpose)


def last_entry(world: World):
    with world.haven.engine.connect() as connection:
        return connection.execute(select(audit_log).where(audit_log.c.resource == "/reidentify")
                                  .order_by(audit_log.c.seq.desc()).limit(1)).mappings().one()


def test_own_practice_with_a_reason_is_reidentified_and_audited(world: World) -> None:
    keys = world.keys_in(OWN_PRACTICE)[:3]
    response = reidentify(world, keys)
    assert response.status_code == 200
    assert {i["person_key"]: i["nhs_number"] for i in response.json()["items"]} == \
        {k: world.nhs[k] for k in keys}
    entry = last_entry(world)
    assert (entry["outcome"], entry["n_records"], entry["purpose"]) == ("ok", 3, "case_finding")
    assert entry["detail"]["reason"] == "mdt_review"
    assert sorted(entry["detail"]["person_keys"]) == sorted(keys)
    assert not any(world.nhs[k] in str(dict(entry)) for k in keys)


@pytest.mark.parametrize("case", ["other_practice", "mixed", "unknown", "no_reason",
                                  "free_text_reason", "wrong_purpose", "analyst"])
def test_refusals_are_audited(world: World, case: str) -> None:
    own = world.keys_in(OWN_PRACTICE)
    other = world.keys_in(OTHER_PRACTICE)
    response = {
        "other_practice": lambda: reidentify(world, other[:1]),
        "mixed": lambda: reidentify(world, [own[0], other[0]]),
        "unknown": lambda: reidentify(world, ["P" + "0" * 20]),
        "no_reason": lambda: reidentify(world, own[:1], reason=None),
        "free_text_reason": lambda: reidentify(world, own[:1], reason="patient is 9434765919"),
        "wrong_purpose": lambda: reidentify(world, own[:1], purpose="commissioning"),
        "analyst": lambda: reidentify(world, own[:1], role="analyst"),
    }[case]()
    assert response.status_code == (422 if case in ("no_reason", "free_text_reason") else 403)
    assert response.headers["content-type"] == "application/problem+json"
    assert "nhs_number" not in response.text
    assert not any(world.nhs[k] in response.text for k in own + other)
    entry = last_entry(world)
    assert entry["outcome"] == ("refused" if response.status_code == 422 else "denied")
    assert entry["n_records"] == 0
    assert "9434765919" not in str(dict(entry))


def test_opted_out_person_is_refused(world: World) -> None:
    """An opt-out covering case finding refuses (type 1 objection, withdrawn social care
    consent); a national data opt-out does not cover individual care."""
    own = world.keys_in(OWN_PRACTICE)
    land_optout(world, own[1], "type1")
    response = reidentify(world, own[:2])
    assert response.status_code == 403
    assert "opt-out" in response.json()["detail"]
    entry = last_entry(world)
    assert entry["outcome"] == "denied" and entry["detail"]["refused"] == "opt_out"
    land_optout(world, own[2], "consent_withdrawn")
    assert reidentify(world, own[2:3]).status_code == 403
    land_optout(world, own[3], "ndoo")
    assert reidentify(world, own[3:4]).status_code == 200


def test_reverse_lookup_answers_only_for_own_patients(world: World) -> None:
    own = world.keys_in(OWN_PRACTICE)
    other = world.keys_in(OTHER_PRACTICE)
    asked = [world.nhs[own[0]], world.nhs[other[0]], "9990000000", "not a number",
             world.nhs[own[1]][:3] + " " + world.nhs[own[1]][3:6] + " " + world.nhs[own[1]][6:]]
    response = world.call("mdt_clinician", "POST", "/reverse-lookup",
                          json={"nhs_numbers": asked, "reason": "mdt_review"})
    assert response.status_code == 200
    items = response.json()["items"]
    found = {i["nhs_number"]: i["person"]["person_key"] for i in items if i["found"]}
    assert found == {world.nhs[own[0]]: own[0], world.nhs[own[1]]: own[1]}
    assert all(i["person"] is None for i in items if not i["found"])
    # The other practice's patient looks exactly like a number nobody holds.
    other_item = next(i for i in items if i["nhs_number"] == world.nhs[other[0]])
    unknown_item = next(i for i in items if i["nhs_number"] == "9990000000")
    assert other_item.keys() == unknown_item.keys() and other_item["found"] is False
    with world.haven.engine.connect() as connection:
        entry = connection.execute(select(audit_log).where(
            audit_log.c.resource == "/reverse-lookup")).mappings().one()
    assert entry["n_records"] == 2 and entry["detail"]["requested"] == 5
    assert not any(n in str(dict(entry)) for n in asked)
    assert world.call("analyst", "POST", "/reverse-lookup",
                      json={"nhs_numbers": asked[:1], "reason": "mdt_review"}
                      ).status_code == 403
