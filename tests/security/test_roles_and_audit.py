"""Roles and the audit trail: promises listed in docs/threat-model.md, each tried as an attacker
would (through the API, or with the database file in hand) on synthetic 999-range data."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

import pytest
from api_matrix import World, build_world
from sqlalchemy import func, select

from api.config import ApiConfig
from api.problems import scrub
from api.trail import AuditWriter
from governance import audit
from governance.audit import Actor
from governance.schema import audit_log

NUMBER = "9998098696"  # synthetic: 999 range, passes modulus 11
# The same number as people and systems write it.
WRITTEN = ("9998098696", "999 809 8696", "999-809-8696", "999.809.8696", "999/809/8696",
           "999_809_8696", "999%20809%208696", "999+809+8696", "999%2520809%25208696",
           "999%252520809%2525208696",
           "999\t809\t8696", "999\u00a0809\u00a08696", "999 - 809 - 8696", "(999) 809-8696",
           "999\u2013809\u20138696")
ANALYST = Actor("ana", "analyst", "X26", "commissioning")


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path, ApiConfig(refresh_seconds=0, token_cache_seconds=0))


def _digits(value: object) -> str:
    return re.sub(r"\D", "", str(value))


def _entries_after(world: World, seq: int) -> list[dict]:
    with world.haven.engine.connect() as connection:
        return [dict(r) for r in connection.execute(
            select(audit_log).where(audit_log.c.seq > seq).order_by(audit_log.c.seq))
            .mappings()]


def _last_seq(world: World) -> int:
    with world.haven.engine.connect() as connection:
        return int(connection.scalar(select(func.max(audit_log.c.seq))) or 0)


# -- 8. No identifier in the audit log, and no request unaudited ------------------------------
@pytest.mark.parametrize("written", WRITTEN)
def test_an_nhs_number_in_a_path_is_audited_withheld(world: World, written: str) -> None:
    """Promise: a request naming an NHS number, however written, is audited once, without it."""
    before = _last_seq(world)
    response = world.call("ig_lead", "GET", f"/extracts/{quote(written, safe='/%+()')}")
    assert response.status_code in (404, 422), response.text  # answered, not 503
    assert NUMBER not in _digits(response.text)
    entries = _entries_after(world, before)
    assert len(entries) == 1
    assert entries[0]["detail"]["status"] == response.status_code
    assert NUMBER not in _digits(entries[0]["resource"]) + _digits(entries[0]["detail"])


@pytest.mark.parametrize("written", WRITTEN)
def test_the_audit_log_refuses_and_the_api_writer_withholds_every_written_form(
        haven, written: str) -> None:
    """Promise: the log recognises an NHS number with any common separator (or URL-encoded) and
    the API's writer stores such an entry with that part withheld, never dropped."""
    with pytest.raises(ValueError, match="NHS number"):
        audit.log(haven.engine, ANALYST, "lookup", f"/persons/{written}")
    with pytest.raises(ValueError, match="NHS number"):
        audit.log(haven.engine, ANALYST, "lookup", "x", detail={"q": [f"nhs {written}"]})
    writer = AuditWriter(haven.engine)
    entry = {"actor": "ana", "role": "analyst", "org": "X26", "purpose": "commissioning",
             "action": "person.read", "resource": f"/persons/{written}", "n_records": 0,
             "outcome": "not_found", "detail": {"method": "GET", "status": 404,
                                                "asked": f"for {written} today"}}
    try:
        asyncio.run(writer.write(entry))
    finally:
        writer.close()
    with haven.engine.connect() as connection:
        stored = connection.execute(select(audit_log)).mappings().one()
    assert NUMBER not in _digits(stored["resource"]) + _digits(stored["detail"])
    assert stored["resource"].startswith("/persons/") and "(withheld)" in stored["resource"]
    assert stored["detail"]["method"] == "GET" and stored["detail"]["status"] == 404
    assert stored["detail"]["asked"].startswith("for ") and stored["action"] == "person.read"
    assert audit.verify(haven.engine).ok


def test_problem_details_withhold_every_written_form() -> None:
    """Promise: an error answer never repeats an NHS-shaped number, whatever separates it."""
    for written in WRITTEN:
        answer = scrub(f"no such person {written} here")
        assert NUMBER not in _digits(answer), written


def test_digests_and_other_numbers_are_not_withheld(haven) -> None:
    """Promise: redaction takes identifiers only: pseudonyms, ids, dates and counts stay."""
    kept = ["P0a9998098696bcdef0123", "20250402-social_care-1a2b3c4d",
            "2025-04-01 12:00:00", "999-809-8697", "rows 1-1000", "%zz not encoded"]
    for value in kept:
        assert audit.redact(value) == value
    assert audit.redact_detail({"n": 9998098696, "ok": True, "x": 1.5, "none": None,
                                "list": ["a", 7]}) == {
        "n": "(withheld)", "ok": True, "x": 1.5, "none": None, "list": ["a", 7]}
    assert audit.redact_detail({"9998098696": 1}) == {"(withheld)": 1}
    audit.log(haven.engine, ANALYST, "lookup", "/runs/score-2025-04-01",
              detail={"count": 999, "when": "2025-04-01 12:00:00", "ok": True, "x": None})
