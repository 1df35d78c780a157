"""Roles and the audit trail: promises listed in docs/threat-model.md, each tried as an attacker
would (through the API, or with the database file in hand) on synthetic 999-range data."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
from api_matrix import ROLES, World, build_world
from sqlalchemy import func, select, text

from api.config import ApiConfig
from api.problems import scrub
from api.trail import AuditWriter
from api.users import add_user
from cli.main import main
from conftest import unguard_audit
from factories import rows_for, upload_form
from governance import audit
from governance.audit import SYSTEM, Actor
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


def _run(coroutine: object) -> object:
    """`asyncio.run` in a thread of its own: a test before may have left a loop running here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


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
        _run(writer.write(entry))
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


# -- 12. Verify names a tampered entry, whatever was done to it -------------------------------
# (name, statements on SQLite, statements on PostgreSQL, whose `json` column refuses bad JSON
# until its type is changed); entry 3 is the one tampered with.
TAMPERING = [
    ("detail not JSON", ["UPDATE audit_log SET detail = '{\"method\": ' WHERE seq = 3"],
     ["ALTER TABLE audit_log ALTER COLUMN detail TYPE text",
      "UPDATE audit_log SET detail = '{\"method\": ' WHERE seq = 3"]),
    ("detail emptied", ["UPDATE audit_log SET detail = '' WHERE seq = 3"],
     ["ALTER TABLE audit_log ALTER COLUMN detail TYPE text",
      "UPDATE audit_log SET detail = '' WHERE seq = 3"]),
    ("detail a list", ["UPDATE audit_log SET detail = '[1, 2]' WHERE seq = 3"],
     ["UPDATE audit_log SET detail = '[1, 2]' WHERE seq = 3"]),
    ("detail a number", ["UPDATE audit_log SET detail = 7 WHERE seq = 3"],
     ["UPDATE audit_log SET detail = '7' WHERE seq = 3"]),
    ("detail bytes", ["UPDATE audit_log SET detail = CAST(X'ff7b7d' AS TEXT) WHERE seq = 3"],
     ["ALTER TABLE audit_log ALTER COLUMN detail DROP NOT NULL",
      "UPDATE audit_log SET detail = NULL WHERE seq = 3"]),
    ("count not a number", ["UPDATE audit_log SET n_records = 'many' WHERE seq = 3"],
     ["ALTER TABLE audit_log ALTER COLUMN n_records TYPE text",
      "UPDATE audit_log SET n_records = 'many' WHERE seq = 3"]),
    ("time not a time", ["UPDATE audit_log SET at = 'yesterday' WHERE seq = 3"],
     ["ALTER TABLE audit_log ALTER COLUMN at TYPE text",
      "UPDATE audit_log SET at = 'yesterday' WHERE seq = 3"]),
    ("time a number", ["UPDATE audit_log SET at = 12 WHERE seq = 3"],
     ["ALTER TABLE audit_log ALTER COLUMN at DROP NOT NULL",
      "UPDATE audit_log SET at = NULL WHERE seq = 3"]),
    ("link deleted", ["UPDATE audit_log SET prev_hash = '' WHERE seq = 3"],
     ["ALTER TABLE audit_log ALTER COLUMN prev_hash DROP NOT NULL",
      "UPDATE audit_log SET prev_hash = NULL WHERE seq = 3"]),
    ("actor deleted", ["UPDATE audit_log SET actor = X'00' WHERE seq = 3"],
     ["ALTER TABLE audit_log ALTER COLUMN actor DROP NOT NULL",
      "UPDATE audit_log SET actor = NULL WHERE seq = 3"]),
]


def _write_entries(haven, n: int = 5) -> None:
    for i in range(n):
        audit.log(haven.engine, ANALYST, "release.read", f"run/r{i}", n_records=i,
                  detail={"method": "GET", "status": 200})


def _tamper(haven, statements: list[str]) -> None:
    with haven.engine.begin() as connection:
        unguard_audit(connection, haven.engine.dialect.name)
        for statement in statements:
            connection.execute(text(statement))


@pytest.mark.parametrize("name, sqlite, postgres", TAMPERING, ids=[t[0] for t in TAMPERING])
def test_verify_names_the_entry_whatever_the_tampering(haven, capsys, name, sqlite,
                                                      postgres) -> None:
    """Promise: `haven audit verify` names a tampered entry as modified, never crashes."""
    _write_entries(haven)
    _tamper(haven, sqlite if haven.engine.dialect.name == "sqlite" else postgres)
    result = audit.verify(haven.engine)
    assert not result.ok and (result.finding.seq, result.finding.problem) == (3, "modified")
    env = {"HAVEN_HOME": str(haven.settings.home),
           "HAVEN_DATABASE_URL": haven.settings.database_url, **haven.settings.key_env}
    assert main(["audit", "verify"], env) == 1
    out = capsys.readouterr().out
    assert "audit entry 3: modified" in out and "Traceback" not in out


def test_verify_reports_an_unreadable_stored_head(haven) -> None:
    """Promise: a chain head edited into nonsense is reported, not a crash."""
    assert audit.verify(haven.engine).ok  # nothing written yet: no head
    _write_entries(haven, 2)
    statements = (["UPDATE audit_head SET seq = 'two'"] if haven.engine.dialect.name == "sqlite"
                  else ["ALTER TABLE audit_head ALTER COLUMN seq TYPE text",
                        "UPDATE audit_head SET seq = 'two'"])
    _tamper(haven, statements)
    result = audit.verify(haven.engine)
    assert not result.ok and result.finding.problem == "truncated"
    assert result.details == ["the stored head is not readable"]


@pytest.mark.parametrize("name, sqlite, postgres", TAMPERING[:3], ids=[t[0] for t in TAMPERING[:3]])
def test_audit_search_and_export_show_an_altered_entry_instead_of_failing(world: World, name,
                                                                          sqlite, postgres
                                                                          ) -> None:
    """Promise: an entry an insider corrupted in the database is shown to the IG lead as altered
    by the audit search and export, never a 500 that hides the rest of the log."""
    haven = world.haven
    with haven.engine.connect() as connection:
        first = int(connection.scalar(select(func.max(audit_log.c.seq))) or 0) + 1
    _write_entries(haven, 2)
    statements = sqlite if haven.engine.dialect.name == "sqlite" else postgres
    _tamper(haven, [s.replace("seq = 3", f"seq = {first + 1}") for s in statements])
    found = world.call("ig_lead", "GET", "/audit", params={"limit": 1000, "after": first - 1})
    assert found.status_code == 200
    by_seq = {e["seq"]: e for e in found.json()["items"]}
    assert "unreadable" in by_seq[first + 1]["detail"]
    assert by_seq[first]["detail"] == {"method": "GET", "status": 200}
    for fmt in ("csv", "jsonl"):
        exported = world.call("ig_lead", "GET", "/audit/export", params={"format": fmt})
        assert exported.status_code == 200 and "unreadable" in exported.text


@pytest.mark.parametrize("written", [
    "not json", "[1, 2]", '{"seq": "3", "hash": "%s"}' % ("a" * 64),
    '{"seq": -1, "hash": "%s"}' % ("a" * 64), '{"seq": 3, "hash": "short"}',
    '{"seq": true, "hash": "%s"}' % ("a" * 64), '{"seq": 3}', "\udcff",
], ids=["text", "list", "seq-text", "seq-negative", "hash-short", "seq-bool", "no-hash",
        "not-utf8"])
def test_verify_names_a_malformed_exported_head_without_a_crash(tmp_path, capsys,
                                                                 written) -> None:
    """Promise: a head file kept outside the database, if tampered with or wrong, is refused by
    name (exit 2), never a traceback, and a good one still checks the chain."""
    env = {"HAVEN_HOME": str(tmp_path / "home")}
    good = audit.parse_head(json.dumps({"seq": 0, "hash": audit.GENESIS}))
    assert good == {"seq": 0, "hash": audit.GENESIS}
    path = tmp_path / "head.json"
    path.write_bytes(written.encode("utf-8", "surrogateescape"))
    assert main(["audit", "verify", "--head", str(path)], env) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    # Typer's error box wraps at the terminal's width, and a long temporary path (pytest-xdist
    # adds a worker's folder) moves the break: read the message with the box and breaks taken out.
    said = re.sub(r"[\s│╭╮╰╯─]+", "", captured.err)
    assert "notachainhead" in said or "head.json" in said
    path.write_text(json.dumps({"seq": 0, "hash": audit.GENESIS}))
    assert main(["audit", "verify", "--head", str(path)], env) == 0


# -- 10. Authorised before a body is read; bodies capped ---------------------------------------
class Sent:
    """A request sent straight to the ASGI app, recording how much of its body the app read."""

    def __init__(self, world: World, method: str, path: str, chunks: list[bytes],
                 headers: dict[str, str], declare_length: bool = True) -> None:
        self.pulled = 0
        self.status = 0
        self.body = b""
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        if declare_length:
            raw.append((b"content-length", str(sum(map(len, chunks))).encode()))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": raw,
                 "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}

        async def receive() -> dict:
            if self.pulled < len(chunks):
                self.pulled += 1
                return {"type": "http.request", "body": chunks[self.pulled - 1],
                        "more_body": self.pulled < len(chunks)}
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body":
                self.body += message.get("body", b"")

        _run(world.client.app(scope, receive, send))


def _big_json(megabytes: int) -> list[bytes]:
    """A valid JSON access rule change padded to about `megabytes` MiB, in 64 KiB chunks."""
    pad = "x" * (megabytes * 2**20)
    body = ('{"ptype": "p", "rule": ["analyst", "*", "aggregate", "read", "commissioning", "*", '
            f'"any"], "padding": "{pad}"}}').encode()
    return [body[i:i + 2**16] for i in range(0, len(body), 2**16)]


def test_no_body_is_read_before_the_request_is_authorised(world: World) -> None:
    """Promise: a request's body is read only once it is authenticated and allowed, and a JSON
    body over the cap (1 MiB) is refused with 413; every such request is audited."""
    before = _last_seq(world)
    json_type = {"content-type": "application/json"}
    big = _big_json(42)
    anonymous = Sent(world, "POST", "/access-policy/rules", big, json_type)
    assert (anonymous.status, anonymous.pulled) == (401, 0)
    forged = Sent(world, "POST", "/access-policy/rules", big,
                  {**json_type, "authorization": "Bearer hvn_forged"})
    assert (forged.status, forged.pulled) == (401, 0)
    analyst = Sent(world, "POST", "/access-policy/rules", big,
                   {**json_type, **world.headers("analyst")})
    assert (analyst.status, analyst.pulled) == (403, 0)
    declared = Sent(world, "POST", "/access-policy/rules", _big_json(2),
                    {**json_type, **world.headers("admin")})
    assert (declared.status, declared.pulled) == (413, 0)
    assert b"1024 KiB" in declared.body
    streamed = Sent(world, "POST", "/access-policy/rules", big,
                    {**json_type, **world.headers("admin")}, declare_length=False)
    assert streamed.status == 413 and streamed.pulled * 2**16 <= 2**20 + 2**16
    upload = Sent(world, "POST", "/extracts", big,
                  {"content-type": "multipart/form-data; boundary=x"})
    assert (upload.status, upload.pulled) == (401, 0)
    outcomes = [(e["outcome"], e["detail"]["status"]) for e in _entries_after(world, before)]
    assert outcomes == [("unauthenticated", 401), ("unauthenticated", 401), ("denied", 403),
                        ("refused", 413), ("refused", 413), ("unauthenticated", 401)]
    small = world.call("admin", "POST", "/access-policy/rules",
                       json={"ptype": "g", "rule": ["analyst", "authenticated", "*"]})
    assert small.status_code == 200  # within the cap, allowed: answered as before


# -- 9. A receipt describes only the caller's own uploads --------------------------------------
def test_a_duplicate_from_another_sender_learns_nothing_of_the_first(world: World) -> None:
    """Promise: a council's receipt never names another organisation's extract or counts, nor
    shows that the same file was landed from elsewhere."""
    other = add_user(world.haven.engine, SYSTEM, "other-council", "E08000036",
                     ["council_uploader"], ROLES)
    their = {"Authorization": f"Bearer {other}"}
    fields, files = upload_form("social_care", rows_for("social_care", 4, seed=5), "E08000035")
    first = world.call("council_uploader", "POST", "/extracts", data=fields, files=files)
    assert first.status_code == 201, first.text
    landed = first.json()["extract_id"]
    again = world.call("council_uploader", "POST", "/extracts", data=fields, files=files)
    assert again.status_code == 200 and again.json()["extract_id"] == landed  # its own
    fields, files = upload_form("social_care", rows_for("social_care", 4, seed=5), "E08000036")
    second = world.client.post("/extracts", data=fields, files=files, headers=their)
    assert second.status_code == 422, second.text
    receipt = second.json()["receipt"]
    assert landed not in second.text and "duplicate" not in second.text
    assert receipt["status"] == "refused" and receipt["counts"] == {}
    assert receipt["sender"] == "E08000036" and receipt["extract_id"] != landed
    listed = world.client.get("/extracts", headers=their).json()["items"]
    assert [r["extract_id"] for r in listed] == [receipt["extract_id"]]
    assert landed not in str(listed)
    assert world.client.get(f"/extracts/{landed}", headers=their).status_code == 404
    with world.haven.engine.connect() as connection:
        refusal = connection.execute(select(audit_log).where(
            audit_log.c.action == "extract.refuse")).mappings().one()
    assert refusal["actor"] == "other-council" and refusal["detail"]["duplicate_of"] == landed


# -- 7. Widening access to person-level data takes two people ---------------------------------
ESCALATION = {"ptype": "g", "rule": ["admin", "super_user", "*"]}


def _can_read_persons(world: World, headers: dict[str, str]) -> bool:
    response = world.client.get("/risk/persons", headers={
        **headers, "X-Purpose-Of-Use": "commissioning"})
    return response.status_code == 200


def _actions(world: World, after: int) -> list[tuple[str, str]]:
    return [(e["action"], e["actor"]) for e in _entries_after(world, after)
            if e["action"].startswith("access_policy.")]


def test_an_admin_cannot_give_themselves_patient_level_access(world: World) -> None:
    """Promise: a rule change widening access to person-level data applies only once an IG
    lead other than the proposer (or anyone they gave an account or token) approves it; both
    steps are audited; narrowing changes apply at once."""
    admin = world.headers("admin")
    before = _last_seq(world)
    proposed = world.call("admin", "POST", "/access-policy/rules", json=ESCALATION)
    assert proposed.status_code == 202, proposed.text
    change = proposed.json()
    assert change["status"] == "pending" and change["proposed_by"] == "admin"
    assert not _can_read_persons(world, admin)
    reid = world.call("admin", "POST", "/access-policy/changes", json={
        "ptype": "p", "rule": ["admin", "*", "reidentify", "create", "administration", "*",
                               "any"]})
    assert reid.status_code == 202 and reid.json()["status"] == "pending"
    # The admin cannot decide, nor can an account that also holds ig_lead, nor a puppet
    # IG lead the admin made for the purpose.
    approve = f"/access-policy/changes/{change['change_id']}/approve"
    assert world.call("admin", "POST", approve).status_code == 403
    both = add_user(world.haven.engine, SYSTEM, "admin-ig", "X26", ["admin", "ig_lead"], ROLES)
    own = world.client.post("/access-policy/changes", json=ESCALATION, headers={
        "Authorization": f"Bearer {both}", "X-Purpose-Of-Use": "administration"}).json()
    mine = world.client.post(f"/access-policy/changes/{own['change_id']}/approve", headers={
        "Authorization": f"Bearer {both}", "X-Purpose-Of-Use": "governance"})
    assert mine.status_code == 403 and "own" in mine.json()["detail"]
    # (An IG lead account is itself proposed, not made, by an admin now: this one stands for
    # one the admin made before, or through the command line.)
    puppet = add_user(world.haven.engine, Actor("admin", "admin", "X26", "administration"),
                      "puppet", "X26", ["ig_lead"], ROLES)
    by_puppet = world.client.post(approve, headers={"Authorization": f"Bearer {puppet}"})
    assert by_puppet.status_code == 403
    assert not _can_read_persons(world, admin)
    # An IG lead the admin did not make decides: approved, applied.
    pending = world.call("ig_lead", "GET", "/access-policy/changes?status=pending").json()
    assert {c["change_id"] for c in pending["items"]} == {
        change["change_id"], reid.json()["change_id"], own["change_id"]}
    approved = world.call("ig_lead", "POST", approve)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved" and approved.json()["changed"] is True
    assert approved.json()["decided_by"] == "ig-lead"
    assert _can_read_persons(world, admin)
    assert world.call("ig_lead", "POST", approve).status_code == 409
    rejected = world.call("ig_lead", "POST",
                          f"/access-policy/changes/{reid.json()['change_id']}/reject")
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    # (The admin now holds two purposes of use, so says which one it acts for.)
    assert ["admin", "*", "reidentify", "create", "administration", "*", "any"] not in \
        world.call("admin", "GET", "/access-policy", purpose="administration").json()["p"]
    # Narrowing applies at once.
    removed = world.call("admin", "POST", "/access-policy/rules/delete", json=ESCALATION,
                         purpose="administration")
    assert removed.status_code == 200 and removed.json() == {"changed": True}
    assert not _can_read_persons(world, admin)
    actions = _actions(world, before)
    assert ("access_policy.propose", "admin") in actions
    assert ("access_policy.approve", "ig-lead") in actions
    assert ("access_policy.add", "ig-lead") in actions
    assert ("access_policy.reject", "ig-lead") in actions
    assert ("access_policy.remove", "admin") in actions
    assert not any(action == "access_policy.add" and actor in ("admin", "admin-ig", "puppet")
                   for action, actor in actions)
    with world.haven.engine.connect() as connection:
        added = connection.execute(select(audit_log).where(
            audit_log.c.action == "access_policy.add")).mappings().one()
    assert added["detail"]["change_id"] == change["change_id"]


@pytest.mark.parametrize("ptype, rule, widens", [
    ("g", ["admin", "super_user", "*"], True),
    ("g", ["admin", "analyst", "X26"], True),
    ("g", ["council_uploader", "mdt_clinician", "*"], True),
    ("g", ["admin", "ig_lead", "*"], True),  # the audit log names person keys
    ("g", ["analyst", "authenticated", "*"], False),
    ("g", ["admin", "no_such_role", "*"], False),
    ("p", ["admin", "*", "person", "read", "administration", "*", "any"], True),
    ("p", ["authenticated", "*", "person_data", "read", "*", "gp/*", "own"], True),
    ("p", ["admin", "*", "access_policy", "approve", "administration", "*", "any"], True),
    ("p", ["admin", "*", "user", "create", "administration", "*", "any"], True),
    ("p", ["admin", "*", "*", "*", "*", "*", "any"], True),
    ("p", ["admin", "*", "something_new", "read", "administration", "*", "any"], True),
    ("p", ["ig_lead", "*", "aggregate", "read", "commissioning", "*", "any"], False),
    # Receipts are not person-level, but a rule limits councils to their own: reading every
    # organisation's is a second person's decision (red team F9).
    ("p", ["admin", "*", "receipt", "read", "administration", "*", "any"], True),
    ("p", ["admin", "*", "receipt", "read", "administration", "*", "own"], False),
    ("p", ["anonymous", "*", "optout_report", "read", "*", "*", "any"], True),
    ("p", ["anonymous", "*", "health", "read", "*", "*", "any"], False),
    ("g", ["authenticated", "ig_lead", "*"], True),
])
def test_which_changes_widen_access_to_person_level_data(world: World, ptype: str,
                                                          rule: list[str], widens: bool) -> None:
    """Promise: any grant of a person-level (or unknown) resource, or inheritance of a role
    holding one, counts as widening; removing a rule never does."""
    from api.authz import NeedsApproval  # here: the module imports on the code before it

    policy = world.client.app.state.services.policy
    assert policy.widens(ptype, rule) is widens
    assert policy.widens(ptype, rule, add=False) is False
    if widens:
        with pytest.raises(NeedsApproval):
            policy.change(SYSTEM, ptype, rule, True)


def test_a_deployment_seeded_earlier_gets_the_ig_leads_approval_right(tmp_path) -> None:
    """Promise: upgrading a database seeded before the two-person rule lets IG leads approve
    (else nobody could), and leaves a rules table still to be seeded empty."""
    from alembic import command

    from governance.db import alembic_config, engine_for
    from governance.settings import Settings

    approve = ("ig_lead", "*", "access_policy", "approve", "governance", "*", "any")
    for seeded in (True, False):
        engine = engine_for(Settings(home=tmp_path / str(seeded)))
        config = alembic_config(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0002")
            if seeded:
                connection.execute(text("INSERT INTO casbin_rule (ptype, v0, v1, v2, v3, v4, v5,"
                                        " v6) VALUES ('p', 'ig_lead', '*', 'audit_log', 'read',"
                                        " 'governance', '*', 'any')"))
            command.upgrade(config, "0003")
            rows = {tuple(r[1:]) for r in connection.execute(text(
                "SELECT ptype, v0, v1, v2, v3, v4, v5, v6 FROM casbin_rule"))}
        engine.dispose()
        assert (approve in rows) is seeded and len(rows) == (2 if seeded else 0)


def test_an_approval_that_cannot_be_applied_stays_pending(world: World, monkeypatch) -> None:
    """Promise: an approved change that could not be applied is pending again, not half
    done, and grants nothing."""
    change = world.call("admin", "POST", "/access-policy/changes", json=ESCALATION).json()
    policy = world.client.app.state.services.policy

    def broken(*_args, **_kwargs) -> bool:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(policy, "change", broken)
    failed = world.call("ig_lead", "POST",
                        f"/access-policy/changes/{change['change_id']}/approve")
    assert failed.status_code == 500
    monkeypatch.undo()
    pending = world.call("ig_lead", "GET", "/access-policy/changes?status=pending").json()
    assert [c["change_id"] for c in pending["items"]] == [change["change_id"]]
    assert not _can_read_persons(world, world.headers("admin"))


def _token_ok(world: World, token: str, path: str, purpose: str) -> bool:
    return world.client.get(path, headers={"Authorization": f"Bearer {token}",
                                           "X-Purpose-Of-Use": purpose}).status_code == 200


def test_an_admin_cannot_give_anyone_a_patient_level_account_or_token_alone(
        world: World) -> None:
    """Promise: an admin cannot reach patient-level data by making an account or minting a
    token either: for a user holding a person-level role the request waits (202, nothing made,
    no token) until an IG lead who is not the proposer, nor the account's holder, nor one the
    proposer asked for, approves it; the token is answered once, to the approver; both steps
    are audited and the token never is."""
    before = _last_seq(world)
    asked = world.call("admin", "POST", "/users", json={
        "user_id": "sock.puppet", "org": "X26", "roles": ["super_user"]})
    assert asked.status_code == 202, asked.text
    account = asked.json()
    assert account["status"] == "pending" and account["ptype"] == "u"
    assert "token" not in account and "hvn_" not in asked.text
    assert "sock.puppet" not in {u["user_id"] for u in world.call("admin", "GET", "/users")
                                 .json()["items"]}
    minted = world.call("admin", "POST", "/users/mdt-clinician/tokens")
    assert minted.status_code == 202 and "hvn_" not in minted.text
    token_change = minted.json()
    assert token_change["op"] == "token" and token_change["rule"] == ["mdt-clinician"]
    # Nothing the admin holds reads persons; the admin cannot approve its own requests.
    for change in (account, token_change):
        approve = f"/access-policy/changes/{change['change_id']}/approve"
        assert world.call("admin", "POST", approve).status_code == 403
    # Nor can an account holding both roles approve what it asked for.
    both = add_user(world.haven.engine, SYSTEM, "admin-ig2", "X26", ["admin", "ig_lead"], ROLES)
    own = world.client.post("/users", json={"user_id": "sock.two", "org": "X26",
                                            "roles": ["analyst"]}, headers={
        "Authorization": f"Bearer {both}", "X-Purpose-Of-Use": "administration"})
    assert own.status_code == 202, own.text
    mine = world.client.post(f"/access-policy/changes/{own.json()['change_id']}/approve",
                             headers={"Authorization": f"Bearer {both}",
                                      "X-Purpose-Of-Use": "governance"})
    assert mine.status_code == 403 and "own" in mine.json()["detail"]
    # Nor an IG lead the admin asked for (were one made), nor the token's own holder.
    clinician_as_ig = add_user(world.haven.engine, SYSTEM, "mdt-ig", "X26", ["ig_lead"],
                               ROLES)
    asked_ig = world.call("admin", "POST", "/users/mdt-ig/tokens")
    assert asked_ig.status_code == 202
    by_holder = world.client.post(
        f"/access-policy/changes/{asked_ig.json()['change_id']}/approve",
        headers={"Authorization": f"Bearer {clinician_as_ig}"})
    assert by_holder.status_code == 403 and "own account" in by_holder.json()["detail"]
    by_asked = world.client.post(
        f"/access-policy/changes/{account['change_id']}/approve",
        headers={"Authorization": f"Bearer {clinician_as_ig}"})
    assert by_asked.status_code == 403 and "proposer" in by_asked.json()["detail"]
    # An IG lead the admin did not make approves: the account exists, its token works, and
    # the approver alone was shown it.
    approved = world.call("ig_lead", "POST",
                          f"/access-policy/changes/{account['change_id']}/approve")
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["status"] == "approved" and body["decided_by"] == "ig-lead"
    token = body["token"]
    assert token.startswith("hvn_")
    assert _token_ok(world, token, "/risk/persons", "commissioning")
    assert "token" not in world.call("ig_lead", "GET", "/access-policy/changes").json()[
        "items"][0]
    issued = world.call("ig_lead", "POST",
                        f"/access-policy/changes/{token_change['change_id']}/approve")
    assert issued.status_code == 200 and issued.json()["token"].startswith("hvn_")
    assert _token_ok(world, issued.json()["token"], "/practices/B86001/case-finding",
                    "case_finding")
    assert world.call("ig_lead", "POST",
                      f"/access-policy/changes/{account['change_id']}/approve"
                      ).status_code == 409
    rejected = world.call("ig_lead", "POST",
                          f"/access-policy/changes/{own.json()['change_id']}/reject")
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert "sock.two" not in {u["user_id"] for u in world.call("admin", "GET", "/users")
                              .json()["items"]}
    # Both steps audited, by whom, naming the change; no token anywhere in the log.
    entries = _entries_after(world, before)
    steps = [(e["action"], e["actor"], e["resource"]) for e in entries]
    assert ("user.propose", "admin", "user/sock.puppet") in steps
    assert ("user.propose", "admin", "user/mdt-clinician") in steps
    assert ("access_policy.approve", "ig-lead",
            f"access_policy/{account['change_id']}") in steps
    added = next(e for e in entries if e["action"] == "user.add"
                 and e["resource"] == "user/sock.puppet")
    assert added["actor"] == "ig-lead"
    assert added["detail"]["change_id"] == account["change_id"]
    assert added["detail"]["proposed_by"] == "admin"
    assert any(e["action"] == "token.issue" and e["actor"] == "ig-lead"
               and e["resource"] == "user/mdt-clinician" for e in entries)
    assert not any(e["action"] in ("user.add", "token.issue") and e["actor"] == "admin"
                   for e in entries)
    assert "hvn_" not in str([e["detail"] for e in entries])
    # A user whose roles reach nothing person-level is still made at once.
    viewer = ["viewer", "*", "aggregate", "read", "commissioning", "*", "any"]
    assert world.call("admin", "POST", "/access-policy/rules",
                      json={"ptype": "p", "rule": viewer}).json() == {"changed": True}
    made = world.call("admin", "POST", "/users", json={"user_id": "viewer.one", "org": "X26",
                                                       "roles": ["viewer"]})
    assert made.status_code == 201 and made.json()["token"].startswith("hvn_")
    assert not _token_ok(world, made.json()["token"], "/risk/persons", "commissioning")


def test_an_admin_cannot_open_governance_data_to_every_caller_or_other_organisations(
        world: World) -> None:
    """Promise: an admin alone cannot give every caller (no token, or any token) anything
    beyond health, the API description, whoami and sign-in, nor widen to `any` organisation
    what a rule limits to a caller's own (a council's receipts): such a change waits for an IG
    lead, and until then a caller without a token still gets 401 (red team F9: receipts, the
    opt-out report and the users list were opened to callers without a token at once)."""
    for rule in (["anonymous", "*", "receipt", "read", "*", "*", "any"],
                 ["authenticated", "*", "optout_report", "read", "*", "*", "any"],
                 ["anonymous", "*", "user", "read", "*", "*", "any"],
                 ["council_uploader", "*", "receipt", "read", "data_submission", "*", "any"]):
        proposed = world.call("admin", "POST", "/access-policy/rules",
                              json={"ptype": "p", "rule": rule})
        assert proposed.status_code == 202 and proposed.json()["status"] == "pending", rule
    inherit = world.call("admin", "POST", "/access-policy/rules",
                         json={"ptype": "g", "rule": ["anonymous", "ig_lead", "*"]})
    assert inherit.status_code == 202
    for path in ("/extracts", "/optouts/report", "/users"):
        assert world.client.get(path).status_code == 401, path
    # What every caller may already do stays a one-person change.
    open_rule = ["anonymous", "*", "api_docs", "read", "*", "*", "any"]
    assert world.call("admin", "POST", "/access-policy/rules",
                      json={"ptype": "p", "rule": open_rule}).status_code == 200


def test_deleting_an_own_rule_then_adding_it_for_any_still_needs_an_ig_lead(world: World
                                                                            ) -> None:
    """Promise: the own-organisation limit on a council's receipts cannot be lifted by an admin
    alone in two steps (delete the `own` rule: a narrowing change, applied at once; then add it
    with scope `any`): the second step waits for an IG lead (red team R3: it applied at once and
    a council read every organisation's receipts)."""
    own = ["council_uploader", "*", "receipt", "read", "data_submission", "*", "own"]
    deleted = world.call("admin", "POST", "/access-policy/rules/delete",
                         json={"ptype": "p", "rule": own})
    assert deleted.status_code == 200 and deleted.json() == {"changed": True}
    widened = world.call("admin", "POST", "/access-policy/rules",
                         json={"ptype": "p", "rule": [*own[:6], "any"]})
    assert widened.status_code == 202 and widened.json()["status"] == "pending"
    assert world.call("council_uploader", "GET", "/extracts").status_code == 403
