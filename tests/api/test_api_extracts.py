"""Uploads by councils: the same checks as `haven land`, their own organisation only, size
limited, streamed to a temporary file that never outlives the request; receipts scoped."""

from __future__ import annotations

import csv
import hashlib
import io

import pytest
from api_matrix import World, build_world
from sqlalchemy import select

from api.config import ApiConfig
from factories import rows_for
from governance.schema import audit_log, extracts
from linkage.landing.contracts import CONTRACTS

COUNCIL = "E08000035"


@pytest.fixture
def backend() -> str:
    """SQLite only: the access matrix covers uploads on PostgreSQL."""
    return ""


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path, ApiConfig(refresh_seconds=0, token_cache_seconds=0,
                                                  max_upload_bytes=64 * 1024))


def extract(source: str = "social_care", count: int = 4, seed: int = 5,
            values: dict[str, str] | None = None, **manifest: str) -> tuple[dict, dict]:
    data_rows = [{**row, **(values or {})} for row in rows_for(source, count, seed=seed)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CONTRACTS[source].names)
    writer.writeheader()
    writer.writerows(data_rows)
    data = buffer.getvalue().encode()
    fields = {"source": source, "sender": COUNCIL, "period_start": "2025-01-01",
              "period_end": "2025-03-31", "sha256": hashlib.sha256(data).hexdigest(),
              "rows": str(count), **manifest}
    return fields, {"file": (f"{source}.csv", data, "text/csv")}


def upload(world: World, role: str = "council_uploader", **kwargs):
    fields, files = kwargs.pop("parts", None) or extract(**kwargs)
    return world.call(role, "POST", "/extracts", data=fields, files=files)


def uploads_left(world: World) -> list:
    folder = world.haven.settings.home / "uploads"
    return list(folder.iterdir()) if folder.exists() else []


def test_council_uploads_its_own_social_care_extract(world: World) -> None:
    response = upload(world)
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert receipt["status"] == "landed" and receipt["counts"]["landed"] == 4
    assert receipt["file"] == "social_care.csv"
    with world.haven.engine.connect() as connection:
        row = connection.execute(select(extracts).where(
            extracts.c.extract_id == receipt["extract_id"])).one()
    assert row.uploaded_by_org == COUNCIL and row.uploaded_by_user == "council-uploader"
    again = upload(world)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    # A council asserts its own clients' consent withdrawals (policies/optout_senders.csv).
    assert upload(world, source="optouts", seed=6,
                  values={"optout_type": "consent_withdrawn"}).status_code == 201
    assert uploads_left(world) == []


@pytest.mark.parametrize("case", ["other_sender", "gp_source", "analyst"])
def test_uploads_outside_the_council_s_remit_are_refused(world: World, case: str) -> None:
    response = {
        "other_sender": lambda: upload(world, sender="E08000036"),
        "gp_source": lambda: upload(world, source="gp_events"),
        "analyst": lambda: upload(world, role="analyst"),
    }[case]()
    assert response.status_code == 403
    assert uploads_left(world) == []
    with world.haven.engine.connect() as connection:
        landed = connection.scalar(select(extracts.c.extract_id).where(
            extracts.c.uploaded_by_org.is_not(None)))
        entry = connection.execute(select(audit_log).where(audit_log.c.resource == "/extracts")
                                   .order_by(audit_log.c.seq.desc())).mappings().first()
    assert landed is None
    assert entry["outcome"] == "denied"


def test_bad_manifest_and_refused_files_answer_422_with_the_reason(world: World) -> None:
    response = upload(world, sha256="0" * 64)
    assert response.status_code == 422
    body = response.json()
    assert body["receipt"]["status"] == "refused" and "sha256" in body["detail"]
    missing = upload(world, rows="")
    assert missing.status_code == 422 and "rows" in missing.json()["detail"]
    fields, files = extract()
    unknown = upload(world, parts=({**fields, "source": "tweets"}, files))
    assert unknown.status_code == 422
    assert uploads_left(world) == []


def test_too_large_is_413_and_leaves_nothing(world: World) -> None:
    fields, files = extract(count=1000)
    assert len(files["file"][1]) > 64 * 1024
    response = world.call("council_uploader", "POST", "/extracts", data=fields, files=files)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert uploads_left(world) == []


def test_streamed_without_length_is_still_limited(world: World) -> None:
    fields, files = extract(count=1000)
    boundary = "xYzBoundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in fields.items()]
    body = ("".join(parts) + f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.csv"\r\nContent-Type: text/csv\r\n\r\n').encode() \
        + files["file"][1] + f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    response = world.client.post("/extracts", content=chunks(), headers={
        **world.headers("council_uploader"),
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert uploads_left(world) == []


def test_not_multipart_is_415(world: World) -> None:
    response = world.call("council_uploader", "POST", "/extracts", json={"source": "x"})
    assert response.status_code == 415


def test_council_sees_only_its_own_receipts(world: World) -> None:
    mine = upload(world).json()["extract_id"]
    listed = world.call("council_uploader", "GET", "/extracts").json()
    assert listed["scope"] == "own"
    assert [r["extract_id"] for r in listed["items"]] == [mine]
    everything = world.call("ig_lead", "GET", "/extracts").json()
    assert everything["scope"] == "any" and len(everything["items"]) == 2  # + the GP register
    gp = next(r["extract_id"] for r in everything["items"] if r["extract_id"] != mine)
    assert world.call("council_uploader", "GET", f"/extracts/{mine}").status_code == 200
    assert world.call("council_uploader", "GET", f"/extracts/{gp}").status_code == 404
    assert world.call("ig_lead", "GET", f"/extracts/{gp}").status_code == 200
