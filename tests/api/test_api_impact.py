"""The impact endpoints answer analysts from what the commands wrote: the evaluations (list and
one, with estimates and balance), the latest forecast; and 404 before anything was made."""

from __future__ import annotations

import pytest
from api_matrix import World, build_world

from pipeline import impact


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path)


def test_analysts_read_evaluations_and_the_forecast(world: World) -> None:
    assert world.call("analyst", "GET", "/impact/forecast").status_code == 404
    assert world.call("analyst", "GET", "/impact/evaluations").json() == {"items": []}
    # Every third person of the world, the same 12 each run: the first 12 by person key (a
    # keyed hash under the run's own key) were another cohort each run, and now and then one
    # that could not be matched in groups of 8 or more (F7); CI met one on 2026-12-06.
    keys = list(world.practice)[::3][:12]
    cohort = "person_key,start_date\n" + "".join(f"{k},2024-06-01\n" for k in keys)
    evaluation_id, _ = impact.evaluate(world.haven, cohort, outcomes=("emergency_admissions",),
                                       ratio=2)
    impact.forecast(world.haven, weeks=4)
    listed = world.call("analyst", "GET", "/impact/evaluations").json()["items"]
    assert [e["id"] for e in listed] == [evaluation_id]
    one = world.call("super_user", "GET", f"/impact/evaluations/{evaluation_id}")
    assert one.status_code == 200, one.text
    body = one.json()
    assert [e["outcome"] for e in body["estimates"]] == ["emergency_admissions"]
    assert body["balance"] and "statement" in body
    assert not any(k in one.text for k in world.practice)  # no person keys
    missing = evaluation_id[:-8] + "00000000"
    assert world.call("analyst", "GET", f"/impact/evaluations/{missing}").status_code == 404
    forecast = world.call("analyst", "GET", "/impact/forecast")
    assert forecast.status_code == 200 and forecast.json()["weeks"] == 4
    assert world.call("mdt_clinician", "GET", "/impact/forecast").status_code == 403
