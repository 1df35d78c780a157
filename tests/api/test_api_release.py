"""Risk answers: the case-finding list, the risk list, a person, FHIR and aggregates, each
showing only the sources (and reasons, conditions) the caller may see."""

from __future__ import annotations

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

from api.aggregates import publish, table
from api.app import create_app
from api.config import ApiConfig
from api.scored_run import TIERS, load_release
from governance.geography import Geography
from governance.suppression import Rule


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
    assert world.call("analyst", "GET", "/aggregates?by=condition_count").status_code == 403


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


def test_optouts_landing_after_the_run_are_withheld_by_purpose(world: World) -> None:
    """A national data opt-out covers commissioning, not the person's own care team's case
    finding; a type 1 objection covers both (policies/optout_purposes.csv)."""
    ndoo, type1 = world.keys_in(OWN_PRACTICE)[:2]
    land_optout(world, ndoo, "ndoo")
    assert world.call("analyst", "GET", f"/persons/{ndoo}").status_code == 404
    listed = [i["person_key"] for i in case_finding(world).json()["items"]]
    assert ndoo in listed
    assert "withheld_for_optouts" not in world.call("analyst", "GET", "/runs/current").json()
    land_optout(world, type1, "type1")
    listed = [i["person_key"] for i in case_finding(world).json()["items"]]
    assert type1 not in listed and ndoo in listed
    assert world.call("mdt_clinician", "GET", "/runs/current").json()["persons"] == len(
        world.practice)  # persons scored: opt-outs since are not counted here
    analyst_keys = [i["person_key"] for i in
                    world.call("analyst", "GET", "/risk/persons?limit=500").json()["items"]]
    assert ndoo not in analyst_keys and type1 not in analyst_keys


def test_each_purpose_is_answered_from_a_run_scored_for_it(world: World) -> None:
    import datetime as dt

    keys = world.keys_in(OWN_PRACTICE)[:3]
    rows = score_rows(keys, [OWN_PRACTICE] * 3)
    write_score_run(world.haven, rows, run_id="score-case-finding",
                    when=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5),
                    purpose="case_finding")
    assert case_finding(world).json()["run_id"] == "score-case-finding"
    assert world.call("analyst", "GET", "/risk/persons").json()["run_id"] == world.run_id


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
    publication = publish(release, Geography(), Rule())
    answer = table(publication, "practice", "tier")
    cells = {(c["practice"], c["tier"]): c for c in answer["cells"]}
    assert cells[("A00001", "high")]["suppressed"]
    # A00001's total is published, so one more of its cells is hidden (the smallest),
    # and so is one more in the high column, whose total is published too.
    assert cells[("A00001", "moderate")]["suppressed"]
    assert cells[("A00002", "high")]["suppressed"]
    for cell in answer["cells"]:
        assert cell["suppressed"] or cell["count"] % 5 == 0
    for name, values in answer["margins"].items():
        for margin in values:
            if margin["suppressed"]:
                continue
            parts = [c for c in answer["cells"] if c[name] == margin[name]]
            assert sum(c["suppressed"] for c in parts) != 1
    assert answer["total"] == {"count": 110, "suppressed": False}
    one = table(publication, "area", "tier")
    hidden = [c for c in one["cells"] if c["suppressed"]]
    assert len(hidden) != 1  # the total is published: no lone suppressed cell
    # Both practices are in no PCN of the table: the `unknown` PCN holds both, so its cells
    # are the area's, and every table shows a figure the same way.
    pcn = {c["tier"]: c for c in table(publication, "pcn", "tier")["cells"]}
    assert {t: c["suppressed"] for t, c in pcn.items()} == {
        c["tier"]: c["suppressed"] for c in one["cells"]}
    assert answer["margins"]["tier"] == one["cells"]


def test_aggregates_endpoint_publishes_tables(world: World) -> None:
    answer = world.call("analyst", "GET", "/aggregates?by=tier&geography=practice").json()
    assert answer["by"] == ["practice", "tier"] and answer["geography"] == "practice"
    shown = [c for c in answer["cells"] if not c["suppressed"]]
    assert all(c["count"] % 5 == 0 and c["count"] >= 10 for c in shown)
    assert any(c["suppressed"] for c in answer["cells"])
    assert answer["total"] == {"count": 40, "suppressed": False}
    area = world.call("analyst", "GET", "/aggregates?by=sex").json()
    assert area["by"] == ["sex"] and area["geography"] == "area" and area["margins"] == {}
    by_condition = world.call("analyst", "GET", "/aggregates?by=condition").json()
    assert {c["condition"] for c in by_condition["cells"]} <= {"COPD", "diabetes",
                                                               "heart failure"}
    for level in ("pcn", "locality"):
        grid = world.call("analyst", "GET", f"/aggregates?by=age_band&geography={level}")
        assert grid.status_code == 200 and grid.json()["by"] == [level, "age_band"]
    # Only the published tables: one dimension, one geography, no filters or practice sets.
    for query in ("", "?by=nothing", "?by=practice", "?by=tier&by=sex",
                  "?by=tier&sex=2", f"?by=tier&practice={OWN_PRACTICE}",
                  "?by=tier&geography=ward", "?by=tier&geography=pcn&geography=practice"):
        assert world.call("analyst", "GET", f"/aggregates{query}").status_code == 422, query


def test_aggregates_by_number_of_conditions_and_change_of_tier(world: World) -> None:
    """The two tables added for the dashboards: each person once, so each unit's cells sum to
    its persons; shown figures are the true counts rounded, categories the documented ones."""
    from collections import Counter

    rows = score_rows(sorted(world.practice), [world.practice[k] for k in sorted(world.practice)])
    tiers = ("very_high", "high", "moderate", "low")
    true = {
        "condition_count": Counter(str(min(len([c for c in (r or "").split(";") if c]), 4))
                                   for r in rows["conditions"]),
        "tier_change": Counter(
            "new" if before is None else "up" if tiers.index(now) < tiers.index(before)
            else "same" if now == before else "down"
            for now, before in zip(rows["tier"], rows["previous_tier"], strict=True))}
    persons = world.call("analyst", "GET", "/aggregates?by=tier").json()["total"]
    for by, categories in (("condition_count", {"0", "1", "2", "3", "4+"}),
                           ("tier_change", {"up", "same", "down", "new", "unknown"})):
        area = world.call("analyst", "GET", f"/aggregates?by={by}").json()
        assert area["by"] == [by] and area["total"] == persons  # persons, not mentions
        assert {c[by] for c in area["cells"]} <= categories
        for cell in area["cells"]:
            assert cell["suppressed"] or abs(cell["count"] - true[by][cell[by]]) <= 2, cell
        assert any(c["suppressed"] for c in area["cells"]) or all(
            c["count"] is not None for c in area["cells"])
        grid = world.call("analyst", "GET", f"/aggregates?by={by}&geography=practice").json()
        assert grid["by"] == ["practice", by] and grid["margins"][by] == area["cells"]
        assert {u["practice"] for u in grid["margins"]["practice"]} == set(world.practice.values())
    assert true["tier_change"]["new"] and true["tier_change"]["same"]  # the world has both
    schema = world.client.get("/openapi.json").json()
    described = schema["paths"]["/aggregates"]["get"]
    by = next(p for p in described["parameters"] if p["name"] == "by")
    assert {"condition_count", "tier_change"} <= set(by["schema"]["enum"])
    assert "4+" in described["description"] and "new (no tier" in described["description"]


def test_publication_tables_count_each_person_once_and_agree(haven) -> None:
    """Persons by number of conditions and by change of tier, through `publish`: every
    practice's cells of each sum to its persons, and they are suppressed with the rest."""
    keys = [f"P{n:020x}" for n in range(90)]
    rows = score_rows(keys, ["A00001", "A00002", "A00003"] * 30)
    rows.loc[5, "tier"] = None  # unknown tier: unknown change
    release = load_release(haven.settings, write_score_run(haven, rows, run_id="score-pub"),
                           {})
    publication = publish(release, Geography(), Rule())
    assert publication.categories["condition_count"] == ["0", "1", "2", "3"]  # 3 conditions
    assert not any(k[0] == "latent" for k in publication.shown)  # never published
    for by in ("condition_count", "tier_change"):
        answer = table(publication, "practice", by)
        for unit in answer["margins"]["practice"]:
            cells = [c for c in answer["cells"] if c["practice"] == unit["practice"]]
            hidden = [c for c in cells if c["suppressed"]]
            assert len(hidden) != 1 or unit["suppressed"]  # no lone suppressed cell
            if not hidden and not unit["suppressed"]:
                assert abs(sum(c["count"] for c in cells) - unit["count"]) <= 2 * len(cells)
    change = {c["tier_change"]: c for c in table(publication, "area", "tier_change")["cells"]}
    assert change["unknown"] == {"tier_change": "unknown", "count": None, "suppressed": True}


def test_an_ig_lead_s_suppression_rule_applies(world: World) -> None:
    table = world.call("ig_lead", "GET", "/policy-tables/suppression.json").json()["content"]
    changed = table.replace('"suppress_to": 7', '"suppress_to": 11')
    assert world.call("ig_lead", "PUT", "/policy-tables/suppression.json",
                      json={"content": changed}).status_code == 200
    answer = world.call("analyst", "GET", "/aggregates?by=sex").json()
    assert answer["rule"]["suppressed"] == "1-11"


# -- pages --------------------------------------------------------------------------------
def test_a_page_shows_each_person_as_person_detail_does(haven) -> None:
    """`present.people` (lists) and `present.person` (one person) agree for every kind of row
    and every set of visible sources, failing closed alike where groups are unknown."""
    from api import present
    from api.authz import SOURCES

    keys = [f"P{n:020x}" for n in range(24)]
    rows = score_rows(keys, ["A00001", "A00002"] * 12)
    rows["tier_change"] = [None if i % 4 else float(i % 3 - 1) for i in range(24)]
    rows.loc[3, "reason_group_2"] = None  # a reason resting on nothing known: fail closed
    rows.loc[5, "reasons"] = rows.loc[5, "reasons"] + "; aged 87"  # more reasons than groups
    rows.loc[7, "reason_group_1"] = "not_in_the_catalogue"
    rows.loc[9, ["reasons", "conditions", "sources", "previous_tier"]] = [None, "", None, None]
    rows.loc[11, ["probability", "change"]] = [float("nan"), None]
    release = load_release(haven.settings, write_score_run(haven, rows, run_id="score-page"),
                           {})
    positions = release.everyone[::-1][:20]
    visible_sets = [frozenset(SOURCES), frozenset(), frozenset({"apc"}),
                    frozenset({"gp_events", "gp_patients"}),
                    frozenset(SOURCES) - {"social_care"},
                    frozenset(SOURCES) - {"deaths", "optouts"}]
    for visible in visible_sets:
        one_by_one = [{"rank": 5 + i, **present.person(row, visible)}
                      for i, row in enumerate(release.rows(positions))]
        assert present.people(release.columns(positions), visible, 5) == one_by_one
    assert present.people(release.columns([]), frozenset(SOURCES), 1) == []
    hospital = {p["person_key"]: p["reasons"] for p in present.people(
        release.columns(release.everyone), frozenset({"apc", "ae", "op"}), 1)}
    assert hospital[keys[3]] == hospital[keys[5]] == []  # fail closed
    assert any(hospital.values())


def test_list_pages_agree_with_person_detail_and_rank_from_the_offset(world: World) -> None:
    for role, path in (("analyst", f"/risk/persons?practice={OWN_PRACTICE}"
                                   f"&practice={OTHER_PRACTICE}&limit=7&offset=3"),
                       ("mdt_clinician", f"/practices/{OWN_PRACTICE}/case-finding"
                                         "?limit=5&offset=2")):
        page = world.call(role, "GET", path).json()
        assert [p["rank"] for p in page["items"]] == list(range(page["offset"] + 1,
                                                                page["offset"] + 1 +
                                                                len(page["items"])))
        assert len(page["items"]) == page["limit"]
        for item in page["items"]:
            detail = world.call(role, "GET", f"/persons/{item['person_key']}").json()
            assert {**detail, "rank": item["rank"]} == {**item, "run_id": page["run_id"]}


def test_an_aggregate_is_answered_again_from_what_was_sent(world: World) -> None:
    first = world.call("analyst", "GET", "/aggregates?by=tier&geography=practice")
    again = world.call("analyst", "GET", "/aggregates?geography=practice&by=tier")
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
    practices = {c["practice"]: c for c in first.json()["margins"]["practice"]}
    true = sum(p == OWN_PRACTICE for p in world.practice.values())
    own = practices[OWN_PRACTICE]
    assert true > 7 and abs(own["count"] - true) <= 2  # rounded to the nearest 5


@pytest.mark.parametrize("histogram", [True, False])
def test_counts_agree_with_counting_person_by_person(haven, monkeypatch, histogram) -> None:
    """Every one- and two-dimension count, condition first or second, over everyone, a
    filtered selection and a release withholding persons, against a plain count of the rows."""
    import itertools
    from collections import Counter

    from api import aggregates

    if not histogram:  # the pass per condition, used when condition sets are many
        monkeypatch.setattr(aggregates, "MASK_BINS", 0)
    keys = [f"P{n:020x}" for n in range(60)]
    rows = score_rows(keys, ["A00001", "A00002", "A00003"] * 20)
    rows.loc[4, ["age_band", "sex"]] = [None, None]
    base = load_release(haven.settings, write_score_run(haven, rows, run_id="score-count"), {})
    names = {"practice": "gp_practice_code", "age_band": "age_band", "sex": "sex",
             "tier": "tier"}
    for release in (base, base.withholding("commissioning", set(keys[::7]))):
        for selected in (release.everyone, release.select(None, sexes=["2"]),
                         release.select(release.practice_rows["A00002"], tiers=["low"])):
            people = release.rows(selected)
            for by in [[d] for d in (*names, "condition")] + [
                    list(p) for p in itertools.permutations([*names, "condition"], 2)]:
                expected: Counter = Counter()
                for person in people:
                    values = [(person["conditions"] or "").split(";") if d == "condition"
                              else [person[names[d]] or "unknown"] for d in by]
                    for combination in itertools.product(*values):
                        if "" not in combination:
                            expected[combination] += 1
                assert aggregates.count(release, selected, by) == dict(expected), by


def test_a_practice_s_list_filters_its_own_columns_as_everyone_s_are(haven) -> None:
    keys = [f"P{n:020x}" for n in range(60)]
    rows = score_rows(keys, ["A00001", "A00002", "A00003"] * 20)
    base = load_release(haven.settings, write_score_run(haven, rows, run_id="score-select"), {})
    for release in (base, base.withholding("case_finding", set(keys[::5]))):
        for filters in ({}, {"tiers": ["low"]}, {"tiers": ["low", "high"], "sexes": ["2"]},
                        {"age_bands": ["75-84", "85+"]}, {"conditions": ["COPD", "nothing"]},
                        {"conditions": ["nothing"]}, {"tiers": ["none"]}):
            everyone = release.select(None, **filters)
            for practice, own in release.practice_rows.items():
                expected = everyone[release.practice[everyone] ==
                                    release.practices.index(practice)]
                for chosen in (release.select(own, **filters, practice=practice),
                               release.select(own, **filters, practice=practice),  # kept
                               release.select(own, **filters),
                               release.select(own.copy(), **filters, practice=practice)):
                    assert chosen.tolist() == expected.tolist(), (practice, filters)
        assert set(release.by_practice) == set(release.practice_rows)
    withheld = {base.position(k) for k in keys[::5]}
    view = base.withholding("case_finding", set(keys[::5]))
    for chosen in (view.select(None), view.select(None, tiers=list(TIERS)),
                   view.select(None, sexes=["1", "2"])):
        assert len(chosen) == 48 and not set(chosen.tolist()) & withheld


def test_a_publication_being_computed_stops_no_other_request(world: World, monkeypatch) -> None:
    """The first answer of a publication (its exact check can take minutes) is computed off the
    event loop: while it runs, the API still answers others (found on a 2,000-person demo: the
    dashboards page held the whole server, health included)."""
    import asyncio
    import threading
    import time

    import httpx

    import api.routes.risk as risk_routes

    real, started = risk_routes.publish, threading.Event()

    def slow(*args, **kwargs):
        started.set()
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(risk_routes, "publish", slow)
    finished: dict[str, float] = {}

    async def both() -> None:
        transport = httpx.ASGITransport(app=world.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://haven") as client:
            async def ask(name: str, path: str, headers: dict[str, str]) -> None:
                answer = await client.get(path, headers=headers)
                assert answer.status_code == 200, answer.text
                finished[name] = time.monotonic()

            async def health_once_started() -> None:
                while not started.is_set():
                    await asyncio.sleep(0.01)
                await ask("health", "/health", {})

            await asyncio.gather(
                ask("aggregate", "/aggregates?by=tier&geography=area",
                    world.headers("analyst", "commissioning")),
                health_once_started())

    asyncio.run(both())
    assert finished["health"] < finished["aggregate"]
