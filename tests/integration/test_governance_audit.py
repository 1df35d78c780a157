"""The audit chain: verify names the first entry modified, deleted, inserted or reordered."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import create_engine, text

from cli.main import main
from conftest import unguard_audit
from governance import audit
from governance.audit import Actor

ANALYST = Actor("ana", "analyst", "X26", "commissioning")


def write_entries(haven, n: int = 6) -> None:
    for i in range(n):
        audit.log(haven.engine, ANALYST, "release.read", f"run/r{i}", n_records=i * 10)


def tamper(haven, *statements: str) -> None:
    """Edit the table as an attacker with direct access would, past the append-only guard."""
    engine = haven.engine
    with engine.begin() as connection:
        unguard_audit(connection, haven.engine.dialect.name)
        for statement in statements:
            connection.execute(text(statement))


def test_intact_chain_verifies(haven):
    write_entries(haven)
    result = audit.verify(haven.engine)
    assert result.ok and result.entries == 6 and result.head == audit.head(haven.engine)["hash"]


@pytest.mark.parametrize("attack, seq, problem", [
    ("UPDATE audit_log SET n_records = 999 WHERE seq = 3", 3, "modified"),
    ("DELETE FROM audit_log WHERE seq = 4", 5, "deleted"),
    ("UPDATE audit_log SET seq = seq + 100 WHERE seq >= 2", 102, "reordered"),
])
def test_tampering_is_found(haven, attack, seq, problem):
    write_entries(haven)
    tamper(haven, attack)
    result = audit.verify(haven.engine)
    assert not result.ok
    assert (result.finding.seq, result.finding.problem) == (seq, problem)


def test_a_deletion_hidden_by_renumbering_is_found(haven):
    write_entries(haven)
    tamper(haven, "DELETE FROM audit_log WHERE seq = 3",
           "UPDATE audit_log SET seq = seq - 1 WHERE seq > 3")
    result = audit.verify(haven.engine)
    assert (result.finding.seq, result.finding.problem) == (3, "deleted")


def test_inserted_entry_is_found(haven):
    write_entries(haven)
    with haven.engine.connect() as connection:
        row = dict(connection.execute(text("SELECT * FROM audit_log WHERE seq = 3")).mappings()
                   .one())
    tamper(haven, "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3",
           "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000")
    # A forged entry in the gap, hashed correctly on its own, chained from entry 2.
    forged = dict(row, seq=3, n_records=1)
    forged["hash"] = audit.entry_hash(row["prev_hash"], forged)
    columns = ", ".join(forged)
    values = ", ".join(f":{k}" for k in forged)
    with haven.engine.begin() as connection:
        connection.execute(text(f"INSERT INTO audit_log ({columns}) VALUES ({values})"),
                           dict(forged, detail=json.dumps(row["detail"])))
    result = audit.verify(haven.engine)
    assert not result.ok and (result.finding.seq, result.finding.problem) == (3, "inserted")


def test_reordered_entries_are_found(haven):
    write_entries(haven)
    tamper(haven, "UPDATE audit_log SET seq = -1 WHERE seq = 2",
           "UPDATE audit_log SET seq = 2 WHERE seq = 3",
           "UPDATE audit_log SET seq = 3 WHERE seq = -1")
    result = audit.verify(haven.engine)
    assert not result.ok and (result.finding.seq, result.finding.problem) == (2, "reordered")


def test_truncation_is_found_against_an_exported_head(haven):
    write_entries(haven)
    exported = audit.head(haven.engine)
    tamper(haven, "DELETE FROM audit_log WHERE seq >= 5",
           "UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_log WHERE seq = 4)")
    assert audit.verify(haven.engine).ok  # the database alone cannot tell
    result = audit.verify(haven.engine, exported)
    assert not result.ok and result.finding.problem == "truncated"


def test_the_database_refuses_update_and_delete(haven):
    write_entries(haven, 2)
    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"), haven.engine.begin() as connection:
            connection.execute(text(statement))


def test_no_identifier_enters_the_log(haven):
    with pytest.raises(ValueError, match="NHS number"):
        audit.log(haven.engine, ANALYST, "lookup", "person/943 476 5919")
    with pytest.raises(ValueError, match="NHS number"):
        audit.log(haven.engine, ANALYST, "lookup", "x", detail={"q": "9434765919"})
    audit.log(haven.engine, ANALYST, "lookup", "run/20261125120000-ab12")
    for glued in ("nhs9434765919", "NHS:943-476-5919", "A9434765919B"):
        with pytest.raises(ValueError, match="NHS number"):
            audit.log(haven.engine, ANALYST, "lookup", "x", detail={"q": glued})
    # A digest or pseudonym whose digits happen to pass modulus 11 is not an identifier.
    digest = "ab9434765919" + "cd" * 26
    audit.log(haven.engine, ANALYST, "lookup", f"person/P{digest[:20]}",
              detail={"digest": digest})


def entry(i: int, **changes) -> dict:
    """An entry as the API's audit middleware hands it to `record_many`."""
    return {"actor": "ana", "role": "analyst", "org": "X26", "purpose": "commissioning",
            "action": "aggregate.read", "resource": f"/aggregates/{i}", "n_records": i,
            "outcome": "ok", "detail": {"method": "GET", "status": 200}, **changes}


def chain(haven) -> list[dict]:
    with haven.engine.connect() as connection:
        return [dict(r) for r in connection.execute(
            text("SELECT * FROM audit_log ORDER BY seq")).mappings()]


def test_record_many_chains_as_one_by_one(haven):
    import datetime as dt

    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    write_entries(haven, 2)
    assert audit.record_many(haven.engine, [entry(i) for i in range(3)], at=at) == [3, 4, 5]
    audit.log(haven.engine, ANALYST, "release.read", "run/after")
    rows = chain(haven)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["n_records"] for r in rows[2:5]] == [0, 1, 2]
    for before, row in zip(rows, rows[1:], strict=False):
        assert row["prev_hash"] == before["hash"]
    # The hashes `record` gives one entry at a time, at the same moment.
    previous = rows[1]["hash"]
    for i, row in enumerate(rows[2:5]):
        expected = audit.entry_hash(previous, {**entry(i), "seq": 3 + i, "at": at})
        assert row["hash"] == expected
        previous = expected
    result = audit.verify(haven.engine)
    assert result.ok and result.entries == 6 and result.head == rows[-1]["hash"]
    assert audit.head(haven.engine) == {"seq": 6, "hash": rows[-1]["hash"]}


def test_record_many_starts_a_chain_and_writes_nothing_for_none(haven):
    assert audit.record_many(haven.engine, []) == []
    assert audit.head(haven.engine) == {"seq": 0, "hash": audit.GENESIS}
    assert audit.record_many(haven.engine, [entry(1)]) == [1]
    assert chain(haven)[0]["prev_hash"] == audit.GENESIS and audit.verify(haven.engine).ok


def test_record_many_refuses_a_batch_holding_an_identifier(haven):
    write_entries(haven, 1)
    before = audit.head(haven.engine)
    batch = [entry(1), entry(2, detail={"q": "943 476 5919"}), entry(3)]
    with pytest.raises(ValueError, match="NHS number"):
        audit.record_many(haven.engine, batch)
    with pytest.raises(ValueError, match="NHS number"):
        audit.record_many(haven.engine, [entry(1, resource="/persons/9434765919")])
    assert audit.head(haven.engine) == before and len(chain(haven)) == 1


def test_record_many_joins_the_callers_transaction(haven):
    with pytest.raises(RuntimeError), haven.engine.begin() as connection:
        assert audit.record_many(connection, [entry(1), entry(2)]) == [1, 2]
        raise RuntimeError("the caller's work failed")
    assert chain(haven) == [] and audit.head(haven.engine)["seq"] == 0
    with haven.engine.begin() as connection:
        audit.record_many(connection, [entry(1)])
        audit.record(connection, ANALYST, "release.read", "run/r1")
    assert [r["seq"] for r in chain(haven)] == [1, 2] and audit.verify(haven.engine).ok


def test_verify_and_head_commands(haven, tmp_path, capsys):
    write_entries(haven, 3)
    env = {"HAVEN_HOME": str(haven.settings.home),
           "HAVEN_DATABASE_URL": haven.settings.database_url, **haven.settings.key_env}
    head_file = tmp_path / "head.json"
    assert main(["audit", "head", "--out", str(head_file)], env) == 0
    assert main(["audit", "verify", "--head", str(head_file)], env) == 0
    tamper(haven, "UPDATE audit_log SET outcome = 'ok!' WHERE seq = 2")
    assert main(["audit", "verify"], env) == 1
    assert "audit entry 2: modified" in capsys.readouterr().out


# What the application role is granted in production (governance/README.md): everything it
# needs to land, link, score and govern, but on the audit log only reading and appending.
APP_GRANTS = (
    "GRANT SELECT, INSERT, UPDATE, DELETE ON extracts, rejected_rows, vault, optouts, runs, "
    "users, tokens, policy_overrides, casbin_rule TO {role}",
    "GRANT SELECT, INSERT ON audit_log, destruction_certificates TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON audit_head TO {role}",
    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
)


def test_application_role_cannot_update_or_delete_on_postgres(postgres_url, tmp_path):
    """Production runs the app as a role that may land data and append to the log, but not
    rewrite it: the grants withhold UPDATE, DELETE and TRUNCATE, and the triggers refuse them
    even to a role that was granted them by mistake."""
    from conftest import key_environment
    from factories import rows_for, write_extract
    from governance.db import engine_for, migrate
    from governance.keys import KeyProvider
    from governance.settings import Settings
    from linkage.landing.land import LandingContext, land_file

    owner = engine_for(Settings(home=tmp_path, database_url=postgres_url))
    migrate(owner)
    role = f"haven_app_{uuid.uuid4().hex[:8]}"
    with owner.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'app'"))
        for grant in APP_GRANTS:
            connection.execute(text(grant.format(role=role)))
    app = create_engine(owner.url.set(username=role, password="app"))
    settings = Settings(home=tmp_path / "home", database_url=str(app.url))
    try:
        landing = LandingContext(settings, app, KeyProvider(settings.layout.key_file,
                                                            key_environment()), ANALYST)
        receipt = land_file(landing, write_extract(tmp_path / "in", "apc",
                                                   rows_for("apc", 3)))
        assert receipt.status == "landed"  # the app role can do its work ...
        from api.authz import AccessPolicy  # the access policy table is the migration's: the
        policy = AccessPolicy(app, settings)  # API seeds it with no CREATE right
        assert policy.rules()["p"]
        audit.log(app, ANALYST, "release.read", "run/r1")
        for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log",
                          "TRUNCATE audit_log"):  # ... but not rewrite the log
            with pytest.raises(Exception, match="permission denied"), \
                    app.begin() as connection:
                connection.execute(text(statement))
        assert audit.verify(app).ok and audit.verify(app).entries == 3  # land, seed, read
        with owner.begin() as connection:  # granted by mistake: the trigger still refuses
            connection.execute(text(f"GRANT UPDATE, DELETE ON audit_log TO {role}"))
        with pytest.raises(Exception, match="append-only"), app.begin() as connection:
            connection.execute(text("DELETE FROM audit_log"))
    finally:
        app.dispose()
        with owner.begin() as connection:
            connection.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}"))
            connection.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}"))
            connection.execute(text(f"DROP ROLE {role}"))
        owner.dispose()
