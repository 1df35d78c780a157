"""Approval before serving, through the API (api/routes/models.py): an unapproved model never
serves a list, approval by any role but the clinical safety officer is refused and audited,
and a rejection keeps the model in force serving."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from api_matrix import ROLES, World, build_world, score_rows, write_score_run
from sqlalchemy import select, update

from api.users import add_user
from governance import model_approvals
from governance.audit import SYSTEM
from governance.schema import audit_log, runs
from pipeline.score import NoScoreRun, export_scores

CSO = "clinical_safety_officer"


@pytest.fixture
def world(haven, tmp_path: Path) -> World:
    world = build_world(haven, tmp_path)
    world.tokens[CSO] = add_user(haven.engine, SYSTEM, "cara.cso", "X26", [CSO],
                                 {*ROLES, CSO})
    return world


def candidate_run(world: World, name: str, seconds: int) -> tuple[str, str]:
    """A newer score run of the world's persons, scored by a new candidate model (as
    `haven score` records it); returns (run id, model id)."""
    keys = sorted(world.practice)
    run_id = write_score_run(world.haven, score_rows(keys, [world.practice[k] for k in keys]),
                             run_id=f"score-2025-04-01-{name}",
                             when=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds))
    model = model_approvals.model_id({"name": name})
    with world.haven.engine.begin() as connection:
        summary = dict(connection.scalar(select(runs.c.summary).where(
            runs.c.run_id == run_id)))
        connection.execute(update(runs).where(runs.c.run_id == run_id).values(
            summary={**summary, "model_id": model}))
        model_approvals.record_candidate(connection, model, run_id, "commissioning",
                                         "boosting", {"name": name})
    return run_id, model


def served(world: World) -> set[str]:
    """The run id every face answers with: the lists, the run, the model, the CLI export."""
    out = world.haven.settings.home / "export.csv"
    answers = {world.call("analyst", "GET", "/risk/persons").json()["run_id"],
               world.call("mdt_clinician", "GET", "/practices/B86001/case-finding"
                          ).json()["run_id"],
               world.call("analyst", "GET", "/runs/current").json()["run_id"],
               world.call("analyst", "GET", "/models/serving").json()["run_id"],
               export_scores(world.haven, out)[0]}
    return answers


def test_an_unapproved_model_never_serves_and_approval_makes_it_serve(world: World):
    """Promise: a run scored by a model no clinical safety officer approved is never served."""
    legacy = world.run_id
    run_id, model = candidate_run(world, "candidate", 5)
    assert served(world) == {legacy}  # recorded before approvals: serves until one
    provenance = world.call("mdt_clinician", "GET", "/models/serving").json()
    assert provenance["approval"] == "recorded before model approvals"
    listed = world.call(CSO, "GET", "/models").json()
    assert listed["in_force"] is None
    assert [(m["model_id"], m["status"]) for m in listed["items"]] == [(model, "candidate")]

    done = world.call(CSO, "POST", f"/models/{model}/approve",
                      json={"reason": "back-test AUROC and calibration reviewed"})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["decided_role"]) == ("approved", CSO)
    assert served(world) == {run_id}
    shown = world.call("analyst", "GET", "/models/serving").json()
    assert (shown["model_id"], shown["approval"], shown["approved_role"]) == (
        model, "approved", CSO)
    assert shown["approved_at"] == done.json()["decided_at"]
    again = world.call(CSO, "POST", f"/models/{model}/approve", json={"reason": "twice"})
    assert again.status_code == 409


def test_only_candidates_nothing_serves(haven, tmp_path: Path):
    """Promise: with no approved model and no earlier run, nothing is served at all."""
    world = build_world(haven, tmp_path)
    with haven.engine.begin() as connection:  # the world's run was scored by a candidate
        connection.execute(update(runs).values(summary={
            "at": "2025-04-01", "model": "rule", "purpose": "commissioning",
            "model_id": "model-abcdefghijkl", "persons": 40}))
        model_approvals.record_candidate(connection, "model-abcdefghijkl", world.run_id,
                                         "commissioning", "rule", {})
    assert world.call("analyst", "GET", "/risk/persons").status_code == 409
    assert world.call("mdt_clinician", "GET",
                      "/practices/B86001/case-finding").status_code == 409
    with pytest.raises(NoScoreRun, match="approved model"):
        export_scores(haven, tmp_path / "x.csv")


@pytest.mark.parametrize("role", ["ig_lead", "analyst", "super_user", "admin"])
def test_approval_by_any_other_role_is_refused_and_audited(world: World, role: str):
    """Promise: only a clinical safety officer may approve or reject a model; any other
    role's attempt is refused and audited."""
    run_id, model = candidate_run(world, "candidate", 5)
    for action in ("approve", "reject"):
        refused = world.call(role, "POST", f"/models/{model}/{action}",
                             json={"reason": "looks fine to me"})
        assert refused.status_code == 403
    with world.haven.engine.connect() as connection:
        entries = connection.execute(select(audit_log.c.role, audit_log.c.outcome,
                                            audit_log.c.resource).where(
            audit_log.c.resource.like("/models/%"))).all()
    assert [(e.role, e.outcome) for e in entries][-2:] == [(role, "denied")] * 2
    assert {e.resource for e in entries} >= {f"/models/{model}/approve",
                                              f"/models/{model}/reject"}
    assert model_approvals.get_model(world.haven.engine, model)["status"] == "candidate"
    assert run_id not in served(world)


def test_a_rejection_keeps_the_model_in_force_serving(world: World):
    """Promise: a rejected model never serves; the approved model keeps serving."""
    first, model = candidate_run(world, "first", 5)
    assert world.call(CSO, "POST", f"/models/{model}/approve",
                      json={"reason": "first model"}).status_code == 200
    second, newer = candidate_run(world, "second", 10)
    assert served(world) == {first}
    rejected = world.call(CSO, "POST", f"/models/{newer}/reject",
                          json={"reason": "calibration slope 0.6 on the back-test"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert served(world) == {first}
    with world.haven.engine.connect() as connection:
        actions = connection.execute(select(audit_log.c.action, audit_log.c.role).where(
            audit_log.c.resource.in_([f"model/{model}", f"model/{newer}"]))).all()
    assert [(a.action, a.role) for a in actions] == [("model.approve", CSO),
                                                     ("model.reject", CSO)]
    unknown = world.call(CSO, "POST", "/models/model-aaaaaaaaaaaa/reject",
                         json={"reason": "no such"})
    short = world.call(CSO, "POST", f"/models/{newer}/reject", json={"reason": "calibration "
                                                                      "999 000 0018"})
    assert (unknown.status_code, short.status_code) == (404, 422)


def test_the_latest_refresh_report_waits_for_a_refresh(world: World):
    assert world.call(CSO, "GET", "/refresh/latest").status_code == 404
    assert world.call("ig_lead", "GET", "/refresh/latest").status_code == 404
    assert world.call("analyst", "GET", "/refresh/latest").status_code == 403


def test_the_pages_show_which_model_and_approval_a_list_came_from(world: World):
    from test_api_pages import signed_in

    run_id, model = candidate_run(world, "paged", 5)
    pages = {"mdt_clinician": "/pages/case-finding", "analyst": "/pages/dashboards"}
    for role, path in pages.items():
        browser, _ = signed_in(world, role)
        assert "recorded before model approvals" in browser.get(path).text
    done = world.call(CSO, "POST", f"/models/{model}/approve", json={"reason": "reviewed"})
    day = done.json()["decided_at"][:10]
    for role, path in pages.items():
        browser, _ = signed_in(world, role)
        text = browser.get(path).text
        assert model in text and f"approved by a clinical safety officer on {day}" in text


def test_every_list_and_the_run_say_which_model_and_approval_they_came_from(world: World):
    """The risk lists and `GET /runs/current` carry the model and its approval in their body,
    as the pages show them, so a list saved from the API still says where it came from."""
    run_id, model = candidate_run(world, "listed", 5)
    world.call(CSO, "POST", f"/models/{model}/approve", json={"reason": "reviewed"})
    answers = [world.call("analyst", "GET", "/risk/persons").json(),
               world.call("mdt_clinician", "GET", "/practices/B86001/case-finding").json(),
               world.call("analyst", "GET", "/runs/current").json()]
    for answer in answers:
        assert answer["run_id"] == run_id
        made_by = answer["provenance"]
        assert (made_by["model_id"], made_by["approval"], made_by["approved_role"]) == (
            model, "approved", CSO)
        assert made_by["approved_at"]
