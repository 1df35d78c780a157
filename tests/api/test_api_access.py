"""Who may call what: the role × endpoint matrix against the live app on both backends, and
every route of the app going through the one authorising dependency."""

from __future__ import annotations

import pytest
from api_matrix import (
    MATRIX,
    OTHER_PRACTICE,
    OWN_PRACTICE,
    ROLES,
    Endpoint,
    World,
    build_world,
)
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import select

from api.app import create_app
from api.guard import authorise
from factories import rows_for, upload_form
from governance.schema import audit_log


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path)


def _fill(world: World, text: str) -> str:
    own = world.keys_in(OWN_PRACTICE)
    other = world.keys_in(OTHER_PRACTICE)
    return (text.replace("{own}", OWN_PRACTICE).replace("{other}", OTHER_PRACTICE)
            .replace("{person_nhs}", world.nhs[own[0]]).replace("{person}", own[0])
            .replace("{other_person}", other[0]))


def _request(world: World, role: str | None, endpoint: Endpoint):
    path = _fill(world, endpoint.path)
    if endpoint.multipart:
        fields, files = upload_form("social_care", rows_for("social_care", 3, seed=11), "E08000035")
        return world.call(role, endpoint.method, path, data=fields, files=files)
    body = None
    if endpoint.body is not None:
        import json

        body = json.loads(_fill(world, json.dumps(endpoint.body)))
    return world.call(role, endpoint.method, path, json=body)


def test_every_role_against_every_endpoint(world: World) -> None:
    """Allowed: anything but 401/403 (and never a server error); denied: 403 and audited."""
    failures = []
    for endpoint in MATRIX:
        for role in ROLES:
            response = _request(world, role, endpoint)
            allowed = role in endpoint.allowed
            if response.status_code >= 500:
                failures.append(f"{role} {endpoint.method} {endpoint.path}: "
                                f"{response.status_code}")
            elif allowed and response.status_code in (401, 403):
                failures.append(f"{role} {endpoint.method} {endpoint.path}: refused "
                                f"{response.status_code} {response.text[:120]}")
            elif not allowed and response.status_code != 403:
                failures.append(f"{role} {endpoint.method} {endpoint.path}: answered "
                                f"{response.status_code}, expected 403")
            elif not allowed:
                assert response.headers["content-type"] == "application/problem+json"
    assert not failures, "\n".join(failures)
    with world.haven.engine.connect() as connection:
        denied = connection.execute(select(audit_log.c.action, audit_log.c.role)
                                    .where(audit_log.c.outcome == "denied")).all()
    expected = sum(len(set(ROLES) - e.allowed) for e in MATRIX)
    assert len(denied) == expected


def test_without_a_token_only_public_routes_answer(world: World) -> None:
    for endpoint in MATRIX:
        response = _request(world, None, endpoint)
        public = endpoint.path in ("/health", "/openapi.json", "/docs")
        assert response.status_code == (200 if public else 401), endpoint.path
        if not public:
            assert response.headers["www-authenticate"] == "Bearer"
    bad = world.client.get("/whoami", headers={"Authorization": "Bearer hvn_not-a-token"})
    assert bad.status_code == 401
    basic = world.client.get("/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401


PUBLIC = {"/health", "/openapi.json", "/docs"}
SAMPLE_PARAMS = {"ods": "B86001", "person_key": "P" + "0" * 20, "extract_id": "x-1",
                 "job_id": "job-20250101000000-abcdef", "export_id": "exp-20250101000000-abcdef12",
                 "certificate_id": "dc-1", "name": "retention.csv", "user_id": "analyst",
                 "purpose": "release", "change_id": "apc-abcdefghijkm",
                 "evaluation_id": "evaluation-20250101T000000-abcdef12",
                 "incident_id": "INC-20250101-abcdef12", "model_id": "model-aaaaaaaaaaaa"}

SAMPLE_PARAMS["kind"] = "journeys"  # /analyses/{kind} (issue 14 parts 1-3)

def test_every_route_is_enforced(world: World) -> None:
    """Every route the app serves depends on `authorise`, declares its Casbin resource, and
    refuses a caller without a token before doing anything else."""
    contexts = list(iter_route_contexts(world.client.app.routes))
    assert len(contexts) >= 35  # the whole API, not an empty app
    unenforced = []
    for context in contexts:
        route = context.route
        calls = {d.call for d in route.dependant.dependencies}
        if (not isinstance(route, APIRoute) or authorise not in calls
                or not hasattr(context.endpoint, "haven_permission")):
            unenforced.append(context.path)
            continue
        path = context.path
        for name, value in SAMPLE_PARAMS.items():
            path = path.replace("{" + name + "}", value)
        assert "{" not in path, path
        for method in context.methods - {"HEAD"}:
            status = world.client.request(method, path).status_code
            if status != (200 if context.path in PUBLIC else 401):
                unenforced.append(f"{method} {context.path}: {status} without a token")
    assert not unenforced, unenforced
    matrix = {(e.method, e.path.split("?")[0]) for e in MATRIX}
    assert len(matrix) >= 30


def test_a_route_without_a_declared_permission_answers_nobody(haven) -> None:
    from fastapi.testclient import TestClient

    app = create_app(haven.settings, engine=haven.engine, keys=haven.keys)

    @app.get("/forgotten")
    def forgotten() -> dict:  # no @permission: the app-level dependency refuses it
        return {"leak": True}

    response = TestClient(app).get("/forgotten")
    assert response.status_code == 403
    assert "leak" not in response.text


def test_purpose_of_use_is_part_of_the_decision(world: World) -> None:
    own = f"/practices/{OWN_PRACTICE}/case-finding"
    assert world.call("mdt_clinician", "GET", own).status_code == 200
    assert world.call("mdt_clinician", "GET", own, purpose="case_finding").status_code == 200
    assert world.call("mdt_clinician", "GET", own, purpose="commissioning").status_code == 403
    assert world.call("analyst", "GET", "/risk/persons", purpose="case_finding").status_code \
        == 403
    assert world.call("analyst", "GET", "/risk/persons", purpose="Bad Purpose!").status_code \
        == 422


def test_policy_changes_through_the_api_take_effect_and_are_audited(world: World) -> None:
    rule = ["ig_lead", "*", "aggregate", "read", "commissioning", "*", "any"]

    def ask() -> int:
        return world.call("ig_lead", "GET", "/aggregates?by=tier",
                          purpose="commissioning").status_code

    assert ask() == 403
    added = world.call("admin", "POST", "/access-policy/rules", json={"ptype": "p", "rule": rule})
    assert added.json() == {"changed": True}
    assert ask() == 200
    removed = world.call("admin", "POST", "/access-policy/rules/delete",
                         json={"ptype": "p", "rule": rule})
    assert removed.json() == {"changed": True}
    assert ask() == 403
    bad = world.call("admin", "POST", "/access-policy/rules",
                     json={"ptype": "p", "rule": ["ig_lead", "*", "x", "read", "y", "*", "all"]})
    assert bad.status_code == 422
    with world.haven.engine.connect() as connection:
        actions = list(connection.scalars(select(audit_log.c.action).where(
            audit_log.c.action.like("access_policy.%"))))
    assert actions.count("access_policy.add") == 1
    assert actions.count("access_policy.remove") == 1
    assert "access_policy.seed" in actions


def test_a_second_process_sees_policy_changes(world: World) -> None:
    """The rules live in the database: another app over it notices a change."""
    from fastapi.testclient import TestClient

    from api.config import ApiConfig

    haven = world.haven
    other = TestClient(create_app(haven.settings, engine=haven.engine, keys=haven.keys,
                                  config=ApiConfig(refresh_seconds=0, token_cache_seconds=0)))
    headers = world.headers("analyst")
    assert other.get("/risk/persons", headers=headers).status_code == 200
    world.call("admin", "POST", "/access-policy/rules/delete", json={
        "ptype": "p", "rule": ["analyst", "*", "risk_list", "read", "commissioning", "*", "any"]})
    assert other.get("/risk/persons", headers=headers).status_code == 403
