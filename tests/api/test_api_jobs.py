"""Super users: linkage and scoring jobs in the background, and exports for a named recipient
in pseudonyms of that export alone, CSV cells neutralised."""

from __future__ import annotations

import csv
import datetime as dt
import io
import time

import pyarrow.parquet as pq
import pytest
from api_matrix import OWN_PRACTICE, World, build_world, score_rows, write_score_run
from sqlalchemy import select

from api import jobs
from api.users import add_user
from governance.audit import SYSTEM
from governance.schema import audit_log


@pytest.fixture
def backend() -> str:
    """SQLite only: jobs and exports are files; the access matrix covers PostgreSQL."""
    return ""


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path)


def wait(world: World, job_id: str) -> dict:
    for _ in range(200):
        job = world.call("super_user", "GET", f"/jobs/{job_id}").json()
        if job["status"] in ("complete", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError("the job did not finish")


def test_link_job_runs_the_linkage_stage(world: World) -> None:
    started = world.call("super_user", "POST", "/jobs/link")
    assert started.status_code == 202
    job = wait(world, started.json()["job_id"])
    assert job["status"] == "complete", job
    assert job["result"]["rows"] == 40
    assert world.call("analyst", "GET", f"/jobs/{job['job_id']}").status_code == 403
    assert world.call("super_user", "GET", "/jobs/job-20250101000000-abcdef").status_code == 404


def test_link_job_trains_the_linkage_models_again_only_when_asked(world: World,
                                                                  monkeypatch) -> None:
    """`retrain` reaches the link (`haven link --retrain`); without a body, or with it false,
    the kept models are used; an unknown field is refused before any job starts."""
    seen: list[bool] = []

    def run_link(ctx, progress=None, retrain=False) -> dict:
        seen.append(retrain)
        return {"rows": 40}

    monkeypatch.setattr(jobs, "link", run_link)
    for body, expected in ((None, False), ({"retrain": False}, False), ({"retrain": True}, True)):
        started = world.call("super_user", "POST", "/jobs/link",
                             **({"json": body} if body is not None else {}))
        assert started.status_code == 202
        assert wait(world, started.json()["job_id"])["status"] == "complete"
        assert seen[-1] is expected
    assert len(seen) == 3
    with world.haven.engine.connect() as connection:  # an IG lead sees who forced a retrain
        asked = [row.detail.get("retrain") for row in connection.execute(
            select(audit_log.c.detail).where(audit_log.c.action == "job_link.create")
            .order_by(audit_log.c.seq))]
    assert asked == [False, False, True]
    for bad in ({"retrain": "sometimes"}, {"retrain": "yes"}, {"retrain": 1},
                {"retrain": True, "everything": True}):
        assert world.call("super_user", "POST", "/jobs/link", json=bad).status_code == 422
    assert len(seen) == 3
    assert world.call("analyst", "POST", "/jobs/link", json={"retrain": True}).status_code == 403
    assert len(seen) == 3


def test_score_job_passes_date_and_seed_and_reports_failure_by_kind(world: World,
                                                                    monkeypatch) -> None:
    seen = {}

    def run_score(ctx, at, seed=0, purpose="commissioning", model=None, progress=None):
        seen.update(at=at, seed=seed, actor=ctx.actor, purpose=purpose, model=model)
        raise RuntimeError("details that must not leave the job")

    monkeypatch.setattr(jobs, "score", run_score)
    started = world.call("super_user", "POST", "/jobs/score", json={
        "at": "2025-04-01", "seed": 3, "purpose": "case_finding"})
    job = wait(world, started.json()["job_id"])
    assert seen["at"] == dt.date(2025, 4, 1) and seen["seed"] == 3
    assert seen["purpose"] == "case_finding"
    assert seen["actor"].user == "super-user" and seen["actor"].org == "X26"
    assert job["status"] == "failed" and job["error"] == "RuntimeError in the score stage"
    assert seen["model"] is None
    chosen = world.call("super_user", "POST", "/jobs/score",
                        json={"at": "2025-04-01", "model": "boosting"})
    assert chosen.status_code == 202
    wait(world, chosen.json()["job_id"])
    assert seen["model"] == "boosting"
    unknown = world.call("super_user", "POST", "/jobs/score",
                         json={"at": "2025-04-01", "model": "oracle"})
    assert unknown.status_code == 422


def test_a_job_result_holds_counts_and_ids_but_no_server_path(world: World,
                                                               monkeypatch) -> None:
    monkeypatch.setattr(jobs, "score", lambda ctx, at, seed=0, purpose="", model=None, **_: {
        "run_id": "score-2025-04-01-abc", "persons": 3, "folder": "/srv/haven/runs/x",
        "tiers": {"low": 3}, "rows": [{"person_key": "P1"}]})
    started = world.call("super_user", "POST", "/jobs/score", json={"at": "2025-04-01"})
    job = wait(world, started.json()["job_id"])
    assert job["result"] == {"run_id": "score-2025-04-01-abc", "persons": 3,
                             "tiers": {"low": 3}}


def test_one_job_at_a_time(world: World, monkeypatch) -> None:
    release = __import__("threading").Event()
    monkeypatch.setattr(jobs, "link", lambda ctx, **_: release.wait(5))
    first = world.call("super_user", "POST", "/jobs/link")
    second = world.call("super_user", "POST", "/jobs/link")
    release.set()
    assert first.status_code == 202 and second.status_code == 409
    wait(world, first.json()["job_id"])


def _export(world: World, recipient: str, fmt: str = "csv", **extra) -> dict:
    response = world.call("super_user", "POST", "/exports",
                          json={"recipient": recipient, "format": fmt, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def _csv(world: World, export_id: str) -> list[dict]:
    response = world.call("super_user", "GET", f"/exports/{export_id}/file")
    assert response.status_code == 200
    return list(csv.DictReader(io.StringIO(response.text)))


def test_exports_use_pseudonyms_of_their_own(world: World) -> None:
    first = _export(world, "RR8")
    second = _export(world, "RAJ")
    a, b = _csv(world, first["export_id"]), _csv(world, second["export_id"])
    assert len(a) == len(b) == first["rows"] == 40
    keys_a = {r["recipient_key"] for r in a}
    assert not keys_a & {r["recipient_key"] for r in b}
    assert not keys_a & set(world.practice)
    assert all(k.startswith("R") and len(k) == 21 for k in keys_a)
    again = _csv(world, _export(world, "RR8")["export_id"])
    assert len(again) == len(a)  # same rows, but no key joins two exports of one recipient
    assert not keys_a & {r["recipient_key"] for r in again}
    parquet = _export(world, "RR8", "parquet", tiers=["very_high", "high"])
    path = world.haven.settings.layout.exports_dir / parquet["export_id"] / "export.parquet"
    table = pq.read_table(path).to_pylist()
    assert table and all(r["tier"] in ("very_high", "high") for r in table)
    assert not {r["recipient_key"] for r in table} & keys_a
    # Only what the purpose needs, coarsened until k persons share every combination: one
    # practice's very high tier (fewer than k) is not released at all.
    assert parquet["columns"] == list(a[0]) == ["recipient_key", "tier", "probability_band",
                                                "practice", "age_band", "sex",
                                                "conditions_count"]
    assert _export(world, "RR8", tiers=["very_high"], practice=OWN_PRACTICE)["rows"] == 0


def test_csv_cells_that_could_run_as_formulas_are_neutralised(world: World) -> None:
    keys = sorted(world.practice)  # enough persons for groups of k
    rows = score_rows(keys, [OWN_PRACTICE] * len(keys))
    rows["reasons"] = "=HYPERLINK(\"http://x\"); +1+1; @SUM(A1)"
    rows["conditions"] = "-2+3;COPD"
    write_score_run(world.haven, rows, run_id="score-hostile",
                    when=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))
    exported = _csv(world, _export(world, "RR8")["export_id"])
    assert exported
    for row in exported:  # reasons and condition names are no longer released at all
        assert "reasons" not in row and "conditions" not in row
        for name, value in row.items():
            assert not value.startswith(("=", "+", "-", "@")), (name, value)
    from api.exports import neutralise

    assert neutralise("=HYPERLINK(1)") == "'=HYPERLINK(1)" and neutralise(3) == 3


def test_exports_are_seen_only_by_their_organisation(world: World) -> None:
    export_id = _export(world, "RR8")["export_id"]
    token = add_user(world.haven.engine, SYSTEM, "su-elsewhere", "Y01234", ["super_user"],
                     ["super_user"])
    elsewhere = {"Authorization": f"Bearer {token}"}
    assert world.client.get(f"/exports/{export_id}", headers=elsewhere).status_code == 404
    assert world.client.get(f"/exports/{export_id}/file", headers=elsewhere).status_code == 404
    info = world.call("super_user", "GET", f"/exports/{export_id}").json()
    assert info["recipient"] == "RR8" and info["rows"] == 40
    assert world.call("analyst", "POST", "/exports", json={"recipient": "RR8"}).status_code \
        == 403


def test_one_job_at_a_time_across_processes(world: World, monkeypatch) -> None:
    """Two API processes (two runners, each with its own thread lock) asked at once: one job."""
    import threading

    release = threading.Event()
    monkeypatch.setattr(jobs, "link", lambda ctx, **_: release.wait(5))
    runners = [jobs.JobRunner(world.haven) for _ in range(2)]
    for runner in runners:  # widen the window between "is one running?" and starting one
        busy = runner._busy
        monkeypatch.setattr(runner, "_busy", lambda busy=busy: (busy(), time.sleep(0.2))[0])
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def ask(runner: jobs.JobRunner) -> None:
        barrier.wait()
        try:
            runner.start_link(SYSTEM)
            outcomes.append("started")
        except jobs.JobRefused:
            outcomes.append("refused")

    threads = [threading.Thread(target=ask, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    release.set()
    assert sorted(outcomes) == ["refused", "started"]
    for runner in runners:
        for thread in runner.threads.values():
            thread.join(5)
