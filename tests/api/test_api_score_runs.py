"""Red-team finding R2 through the API: a super user's case-finding score job no longer takes
the approved commissioning run's id, so the run serving keeps serving, unchanged."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from api_matrix import ORGS, ROLES
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiConfig
from api.users import add_user
from factories import approve_candidates
from governance.audit import SYSTEM
from pipeline.land import land
from pipeline.link import link
from pipeline.score import score
from synth import generate


@pytest.fixture
def backend() -> str:
    """SQLite only: the job and the run are files; the store is the same on PostgreSQL."""
    return ""


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_case_finding_job_leaves_the_served_commissioning_run_serving(
        haven, tmp_path: Path) -> None:
    """The finding's steps: commissioning scored and approved, then `POST /jobs/score`
    {"purpose": "case_finding"} as a super user. Before the fix it finished with the same run
    id, and /risk/persons, /runs/current answered 409 on a candidate's scores."""
    out = tmp_path / "synth"
    generate(400, 2, out, progress=False)
    at = dt.date.fromisoformat(json.loads((out / "truth" / "meta.json").read_text())[
        "score_date"])
    assert all(r.status == "landed" for r in land(haven, out))
    link(haven)
    served = score(haven, at, purpose="commissioning")
    approve_candidates(haven.engine)
    files = haven.settings.layout.run(served.run_id).folder
    before = folder_bytes(files)
    tokens = {role: add_user(haven.engine, SYSTEM, role.replace("_", "-"), ORGS[role], [role],
                             ROLES) for role in ("analyst", "super_user")}
    client = TestClient(create_app(haven.settings, engine=haven.engine, keys=haven.keys,
                                   config=ApiConfig(refresh_seconds=0, token_cache_seconds=0)),
                        raise_server_exceptions=False)

    def get(path: str) -> dict:
        answer = client.get(path, headers={"Authorization": f"Bearer {tokens['analyst']}",
                                           "X-Purpose-Of-Use": "commissioning"})
        assert answer.status_code == 200, (path, answer.status_code)
        return answer.json()

    assert get("/runs/current")["run_id"] == served.run_id
    su = {"Authorization": f"Bearer {tokens['super_user']}"}
    started = client.post("/jobs/score", headers=su,
                          json={"at": at.isoformat(), "purpose": "case_finding"})
    assert started.status_code == 202
    for _ in range(400):
        job = client.get(f"/jobs/{started.json()['job_id']}", headers=su).json()
        if job["status"] in ("complete", "failed"):
            break
        time.sleep(0.05)
    assert job["status"] == "complete", job
    assert job["result"]["run_id"] != served.run_id
    assert get("/runs/current")["run_id"] == served.run_id
    assert get("/risk/persons")["run_id"] == served.run_id
    assert folder_bytes(files) == before
