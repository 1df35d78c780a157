"""Risk answers: the case-finding list, the risk list, a person, FHIR and aggregates, each
showing only the sources (and reasons, conditions) the caller may see."""

from __future__ import annotations

import numpy as np
import pytest
from api_matrix import (
    OTHER_PRACTICE,
    OWN_PRACTICE,
    World,
    build_world,
    land_optout,
    score_rows,
    write_score_run,
)
from fastapi.testclient import TestClient

from api.aggregates import SuppressionRule, aggregate, protect
from api.app import create_app
from api.config import ApiConfig
from api.release import load_release


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path)


def case_finding(world: World, query: str = "", role: str = "mdt_clinician"):
    return world.call(role, "GET", f"/practices/{OWN_PRACTICE}/case-finding{query}")


def test_case_finding_lists_own_practice_highest_risk_first(world: World) -> None:
    answer = case_finding(world).json()
    own = world.keys_in(OWN_PRACTICE)
    assert answer["total"] == len(own)
    keys = [item["person_key"] for item in answer["items"]]
    assert sorted(keys) == own
    probabilities = [item["probability"] for item in answer["items"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert [item["rank"] for item in answer["items"]] == list(range(1, len(own) + 1))
    assert all(item["practice"] == OWN_PRACTICE for item in answer["items"])
    first = answer["items"][0]
    assert set(first) >= {"tier", "reasons", "change", "previous_tier", "tier_change"}


def test_case_finding_pages_and_filters(world: World) -> None:
    everyone = case_finding(world).json()["items"]
    page = case_finding(world, "?limit=3&offset=2").json()
    assert [i["person_key"] for i in page["items"]] == [i["person_key"] for i in everyone[2:5]]
    assert page["next_offset"] == 5
    last = case_finding(world, f"?limit=3&offset={len(everyone) - 1}").json()
    assert last["next_offset"] is None and len(last["items"]) == 1
    for query, check in (
        ("?tier=low", lambda i: i["tier"] == "low"),
        ("?tier=low&tier=moderate", lambda i: i["tier"] in ("low", "moderate")),
        ("?sex=2", lambda i: i["sex"] == "2"),
        ("?age_band=18-44", lambda i: i["age_band"] == "18-44"),
        ("?condition=COPD", lambda i: "COPD" in i["conditions"]),
    ):
        items = case_finding(world, query).json()["items"]
        expected = [i for i in everyone if check(i)]
        assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
        assert [i["person_key"] for i in items] == [i["person_key"] for i in expected], query
    assert case_finding(world, "?tier=unknown").status_code == 422
    assert case_finding(world, "?condition=nothing-like-it").json()["total"] == 0


def test_other_practice_and_other_roles_are_refused(world: World) -> None:
    other = world.call("mdt_clinician", "GET", f"/practices/{OTHER_PRACTICE}/case-finding")
    assert other.status_code == 403
    assert other.json()["detail"].endswith("for purpose case_finding")
    person = world.keys_in(OTHER_PRACTICE)[0]
    assert world.call("mdt_clinician", "GET", f"/persons/{person}").status_code == 403
    assert world.call("mdt_clinician", "GET", f"/persons/{person}/fhir").status_code == 403
    # A key that is nobody's is refused the same way: no telling whether it exists.
    assert world.call("mdt_clinician", "GET", "/persons/P" + "0" * 20).status_code == 403
    assert world.call("analyst", "GET", "/persons/P" + "0" * 20).status_code == 404


def test_risk_list_for_analysts(world: World) -> None:
    answer = world.call("analyst", "GET", "/risk/persons?limit=100").json()
    assert answer["total"] == len(world.practice)
    probabilities = [i["probability"] for i in answer["items"]]
    assert probabilities == sorted(probabilities, reverse=True)
    both = world.call("analyst", "GET", f"/risk/persons?practice={OWN_PRACTICE}"
                                        f"&practice={OTHER_PRACTICE}&tier=high").json()
    assert {i["practice"] for i in both["items"]} <= {OWN_PRACTICE, OTHER_PRACTICE}
    assert all(i["tier"] == "high" for i in both["items"])
    expected = [k for k, p in world.practice.items() if p in (OWN_PRACTICE, OTHER_PRACTICE)]
    everyone = world.call("analyst", "GET", f"/risk/persons?practice={OWN_PRACTICE}"
                                            f"&practice={OTHER_PRACTICE}&limit=500").json()
    assert sorted(i["person_key"] for i in everyone["items"]) == sorted(expected)
    assert "nhs_number" not in str(answer)


def test_person_detail_shows_sources_reasons_and_change(world: World) -> None:
    key = case_finding(world).json()["items"][0]["person_key"]
    for role in ("mdt_clinician", "analyst"):
        detail = world.call(role, "GET", f"/persons/{key}").json()
        assert detail["person_key"] == key and detail["run_id"] == world.run_id
        assert "social_care" in detail["sources"] or len(detail["sources"]) == 3
        assert len(detail["reasons"]) == 3


def test_hidden_sources_and_what_rests_on_them_are_left_out(world: World) -> None:
    """Without the rule letting analysts see social care, a person's social care source and
    the reasons drawn only from it disappear; GP-derived conditions go with GP sources."""
    keys = [k for k in world.practice if "receives home care" in
            world.call("analyst", "GET", f"/persons/{k}").json()["reasons"]]
    key = next(k for k in keys if "social_care" in
               world.call("analyst", "GET", f"/persons/{k}").json()["sources"])
    before = world.call("analyst", "GET", f"/persons/{key}").json()
    rule = ["analyst", "*", "person_data", "read", "commissioning", "social_care/*", "any"]
    assert world.call("admin", "POST", "/access-policy/rules/delete",
                      json={"ptype": "p", "rule": rule}).json() == {"changed": True}
    after = world.call("analyst", "GET", f"/persons/{key}").json()
    assert "social_care" not in after["sources"]
    assert "receives home care" not in after["reasons"]
    assert len(after["reasons"]) == len(before["reasons"]) - 1
    assert after["conditions"] == before["conditions"]
    listed = world.call("analyst", "GET", "/risk/persons?limit=500").json()["items"]
    assert not any("social_care" in i["sources"] or "receives home care" in i["reasons"]
                   for i in listed)
    # The MDT (a GP) still sees social care for its own patients.
    if world.practice[key] == OWN_PRACTICE:
        assert "social_care" in world.call("mdt_clinician", "GET",
                                           f"/persons/{key}").json()["sources"]
    for gp in ("gp/*", "hospital/*"):
        world.call("admin", "POST", "/access-policy/rules/delete", json={
            "ptype": "p",
            "rule": ["analyst", "*", "person_data", "read", "commissioning", gp, "any"]})
    bare = world.call("analyst", "GET", f"/persons/{key}").json()
    assert bare["conditions"] == [] and bare["sources"] == []
    assert world.call("analyst", "GET", "/risk/persons?condition=COPD").status_code == 403
    assert world.call("analyst", "GET", "/aggregates?by=condition").status_code == 403


def test_mdt_sees_social_care_for_own_patients(world: World) -> None:
    items = case_finding(world).json()["items"]
    assert any("social_care" in i["sources"] for i in items)
    assert any("receives home care" in i["reasons"] for i in items)


def test_fhir_risk_assessment(world: World) -> None:
    from fhir.resources.R4B.riskassessment import RiskAssessment

    key = world.keys_in(OWN_PRACTICE)[0]
    response = world.call("mdt_clinician", "GET", f"/persons/{key}/fhir")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    resource = RiskAssessment.model_validate(response.json())
    assert resource.status == "final"
    assert resource.subject.identifier.value == key
    prediction = resource.prediction[0]
    detail = world.call("mdt_clinician", "GET", f"/persons/{key}").json()
    assert float(prediction.probabilityDecimal) == pytest.approx(detail["probability"])
    assert world.nhs[key] not in response.text


def test_optouts_landing_after_the_run_are_withheld(world: World) -> None:
    key = world.keys_in(OWN_PRACTICE)[0]
    land_optout(world, key, "ndoo")
    keys = [i["person_key"] for i in case_finding(world).json()["items"]]
    assert key not in keys
    assert world.call("analyst", "GET", f"/persons/{key}").status_code == 404
    info = world.call("analyst", "GET", "/runs/current").json()
    assert info["withheld_for_optouts"] == 1


def test_newest_complete_run_is_served(world: World) -> None:
    import datetime as dt

    keys = world.keys_in(OWN_PRACTICE)[:2]
    newer = score_rows(keys, [OWN_PRACTICE] * 2)
    write_score_run(world.haven, newer, run_id="score-2025-05-01-newer",
                    when=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))
    answer = case_finding(world).json()
    assert answer["run_id"] == "score-2025-05-01-newer" and answer["total"] == 2


def test_no_run_yet_is_a_conflict(haven) -> None:
    client = TestClient(create_app(haven.settings, engine=haven.engine, keys=haven.keys,
                                   config=ApiConfig(refresh_seconds=0)))
    from api.users import add_user
    from governance.audit import SYSTEM

    token = add_user(haven.engine, SYSTEM, "ana", "X26", ["analyst"], ["analyst"])
    response = client.get("/risk/persons", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"


# -- suppression --------------------------------------------------------------------------
def test_primary_suppression_and_rounding() -> None:
    rule = SuppressionRule()
    assert [rule.publish(n) for n in (0, 1, 7, 8, 12, 13, 102)] == [0, None, None, 10, 10,
                                                                      15, 100]
    assert rule.publish(102, national=True) == 102
    assert rule.publish(5, national=True) is None


def test_secondary_suppression_protects_every_published_total() -> None:
    from api.aggregates import _Figure

    cells = [_Figure(3, None), _Figure(40, 40), _Figure(9, 10)]
    total = _Figure(52, 50)
    protect([(total, cells)])
    assert cells[2].shown is None and cells[1].shown == 40  # the smallest other cell
    alone = [_Figure(3, None), _Figure(0, 0)]
    total = _Figure(3, None)
    protect([(total, alone)])
    assert total.shown is None


def _release(haven, counts: dict[tuple[str, str], int]):
    keys, practices, tiers = [], [], []
    n = 0
    for (practice, tier), many in counts.items():
        for _ in range(many):
            keys.append(f"P{n:020x}")
            practices.append(practice)
            tiers.append(tier)
            n += 1
    rows = score_rows(keys, practices)
    rows["tier"] = tiers
    run_id = write_score_run(haven, rows, run_id="score-agg")
    return load_release(haven.settings, run_id, {})


def test_aggregate_cells_cannot_be_recovered_from_totals(haven) -> None:
    release = _release(haven, {("A00001", "high"): 3, ("A00001", "low"): 40,
                               ("A00001", "moderate"): 12, ("A00002", "high"): 30,
                               ("A00002", "low"): 25})
    answer = aggregate(release, np.arange(release.persons), ["practice", "tier"],
                       SuppressionRule(), national=False)
    cells = {(c["practice"], c["tier"]): c for c in answer["cells"]}
    assert cells[("A00001", "high")]["suppressed"]
    # A00001's total is published, so one more of its cells is hidden (the smallest),
    # and so is one more in the high column, whose total is published too.
    assert cells[("A00001", "moderate")]["suppressed"]
    assert cells[("A00002", "high")]["suppressed"]
    for cell in answer["cells"]:
        assert cell["suppressed"] or cell["count"] % 5 == 0
    margins = answer["margins"]
    for name, values in margins.items():
        for margin in values:
            if margin["suppressed"]:
                continue
            parts = [c for c in answer["cells"] if c[name] == margin[name]]
            assert sum(c["suppressed"] for c in parts) != 1
    assert not answer["total"]["suppressed"]


def test_aggregates_endpoint_suppresses_and_marks_national_totals(world: World) -> None:
    answer = world.call("analyst", "GET", "/aggregates?by=practice&by=tier").json()
    shown = [c for c in answer["cells"] if not c["suppressed"]]
    assert all(c["count"] == 0 or c["count"] >= 8 for c in shown)
    assert any(c["suppressed"] for c in answer["cells"])
    assert answer["total"] == {"count": 40, "suppressed": False}  # national: not rounded
    filtered = world.call("analyst", "GET", "/aggregates?by=tier&sex=2").json()
    assert filtered["total"]["count"] % 5 == 0  # below national level: rounded
    assert filtered["filters"] == {"sex": ["2"]}
    by_condition = world.call("analyst", "GET", "/aggregates?by=condition").json()
    assert {c["condition"] for c in by_condition["cells"]} <= {"COPD", "diabetes",
                                                               "heart failure"}
    assert world.call("analyst", "GET", "/aggregates").status_code == 422
    assert world.call("analyst", "GET", "/aggregates?by=nothing").status_code == 422
