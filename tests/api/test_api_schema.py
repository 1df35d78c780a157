"""Property-based testing from the OpenAPI description (schemathesis): for every operation,
generated requests from a role allowed to make them never get a server error, and every
answer matches the documented status codes, media types and schemas."""

from __future__ import annotations

import pytest
import schemathesis
from api_matrix import World, build_world
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 6  # per operation: ~40 operations stay well under a minute
# Starting real linkage or scoring jobs belongs to test_api_jobs.py, not to fuzzing.
SKIPPED = {("POST", "/jobs/link"), ("POST", "/jobs/score")}
ROLE_BY_PREFIX = (
    ("/practices", "mdt_clinician"), ("/reidentify", "mdt_clinician"),
    ("/reverse-lookup", "mdt_clinician"), ("/jobs", "super_user"), ("/exports", "super_user"),
    ("/audit", "ig_lead"), ("/destruction-certificates", "ig_lead"), ("/retention", "ig_lead"),
    ("/optouts", "ig_lead"), ("/policy-tables", "ig_lead"), ("/users", "admin"),
    ("/keys", "admin"), ("/access-policy", "admin"), ("/extracts", "council_uploader"),
)


@pytest.fixture
def backend() -> str:
    """SQLite only: the description and answers do not depend on the backend."""
    return ""


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path)


def role_for(method: str, path: str) -> str:
    if path.endswith("/fhir"):
        return "mdt_clinician"
    return next((role for prefix, role in ROLE_BY_PREFIX if path.startswith(prefix)),
                "analyst")


def test_generated_requests_get_documented_answers(world: World) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 35
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance,
              status_code_conformance]
    failures = []
    tested = 0
    for operation in operations:
        method = operation.method.upper()
        if (method, operation.path) in SKIPPED:
            continue
        try:
            _fuzz(operation, world.headers(role_for(method, operation.path)), checks)
        except Exception as exc:  # noqa: BLE001 - gathered so every operation is reported
            failures.append(f"{method} {operation.path}: {str(exc)[:600]}")
        tested += 1
    assert not failures, "\n\n".join(failures)
    assert tested == len(operations) - len(SKIPPED)


def _fuzz(operation, headers: dict[str, str], checks: list) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case) -> None:
        case.call_and_validate(headers=headers, checks=checks)

    run()
