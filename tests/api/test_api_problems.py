"""Errors are problem details (RFC 9457): the documented shape, the status in the body, and
never an identifier or a stack trace."""

from __future__ import annotations

import pytest
from api_matrix import OTHER_PRACTICE, World, build_world
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiConfig
from api.guard import permission

NHS_LIKE = "9434765919"  # a valid NHS number: it must never be echoed


@pytest.fixture
def backend() -> str:
    """SQLite only: error shapes do not depend on the backend."""
    return ""


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path, ApiConfig(refresh_seconds=0, token_cache_seconds=0,
                                                  max_upload_bytes=1024))


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://haven.nhs.uk/problems/")
    assert isinstance(body["title"], str) and body["title"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    assert NHS_LIKE not in response.text
    return body


def test_problem_shapes(world: World) -> None:
    assert_problem(world.call(None, "GET", "/risk/persons"), 401)
    assert_problem(world.client.get("/whoami", headers={"Authorization": f"Bearer {NHS_LIKE}"}),
                   401)
    assert_problem(world.call("analyst", "GET", "/audit"), 403)
    assert_problem(world.call("mdt_clinician", "GET",
                              f"/practices/{OTHER_PRACTICE}/case-finding"), 403)
    assert_problem(world.call("analyst", "GET", f"/persons/P{'1' * 20}"), 404)
    assert_problem(world.call("analyst", "GET", f"/nothing/{NHS_LIKE}"), 404)
    assert_problem(world.call("analyst", "GET", f"/persons/{NHS_LIKE}"), 422)
    assert_problem(world.call("analyst", "GET", "/risk/persons?practice=943%20476%205919"), 422)
    assert_problem(world.call("mdt_clinician", "POST", "/reverse-lookup",
                              json={"nhs_numbers": [NHS_LIKE] * 101}), 422)
    body = assert_problem(world.call("mdt_clinician", "POST", "/reidentify",
                                     json={"person_keys": [NHS_LIKE], "reason": "x"}), 422)
    assert {e["location"] for e in body["errors"]} >= {"body.reason"}
    assert_problem(world.call("admin", "POST", "/users",
                              json={"user_id": "analyst", "org": "X26", "roles": ["analyst"]}),
                   409)
    assert_problem(world.call("admin", "POST", "/keys/vault/rotate"), 409)
    fields = {"source": "social_care", "sender": "E08000035", "period_start": "2025-01-01",
              "period_end": "2025-01-31", "sha256": "0" * 64, "rows": "1"}
    assert_problem(world.call("council_uploader", "POST", "/extracts", data=fields,
                              files={"file": ("x.csv", b"x" * 4096, "text/csv")}), 413)
    assert_problem(world.call("analyst", "DELETE", "/whoami"), 405)


def test_an_unexpected_error_is_a_bare_500(haven) -> None:
    app = create_app(haven.settings, engine=haven.engine, keys=haven.keys)

    @app.get("/boom")
    @permission("health", "read")
    def boom() -> dict:
        raise RuntimeError(f"secret detail {NHS_LIKE}")

    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    body = assert_problem(response, 500)
    assert "secret" not in response.text and body["detail"]


def test_an_identifier_in_what_a_caller_sends_never_reaches_the_audit_log(world: World
                                                                            ) -> None:
    """A sender code that happens to be a valid NHS number: the request is still audited,
    without it."""
    from sqlalchemy import select

    from governance.schema import audit_log

    fields = {"source": "social_care", "sender": NHS_LIKE, "period_start": "2025-01-01",
              "period_end": "2025-01-31", "sha256": "0" * 64, "rows": "1"}
    response = world.call("council_uploader", "POST", "/extracts", data=fields,
                          files={"file": ("x.csv", b"x", "text/csv")})
    assert_problem(response, 403)
    with world.haven.engine.connect() as connection:
        entry = connection.execute(select(audit_log).order_by(audit_log.c.seq.desc())
                                   .limit(1)).mappings().one()
    assert entry["resource"] == "/extracts" and entry["outcome"] == "denied"
    assert NHS_LIKE not in str(dict(entry))
    assert entry["detail"]["sender"] == "(withheld)" and entry["detail"]["source"] == \
        "social_care"  # the identifier alone withheld, the rest kept
    assert_problem(world.call("mdt_clinician", "GET", f"/practices/{NHS_LIKE}/case-finding"),
                   403)


def test_a_publication_the_solver_cannot_check_is_refused_with_503(world: World,
                                                                     monkeypatch) -> None:
    """The published tables are refused (503, saying why) when the exact disclosure check gets
    no answer from its solver, never shown unchecked nor answered with a bare 500."""
    import scipy.optimize
    from scipy.optimize import OptimizeResult

    monkeypatch.setattr(scipy.optimize, "milp", lambda *a, **k: OptimizeResult(
        x=None, status=4, message="solver failed"))
    answer = world.call("analyst", "GET", "/aggregates?by=tier&geography=practice")
    assert answer.status_code == 503, answer.text
    assert "could not be checked" in answer.json()["detail"]
    assert "cells" not in answer.json()
