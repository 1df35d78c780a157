"""Governance at its edges: empty inputs, missing files, downgrades, heads that do not match."""

from __future__ import annotations

import datetime as dt
import json
import os

import pandas as pd
import pytest
from alembic import command
from sqlalchemy import select, text

from conftest import unguard_audit
from factories import nhs_numbers, rows_for, write_extract
from governance import audit, optouts, retention, rotation, store, vault
from governance.audit import SYSTEM, Actor
from governance.db import alembic_config, engine_for
from governance.keyed_hash import keyed_hash
from governance.keys import KeyProvider
from governance.reidentify import Refused, reidentify
from governance.settings import Settings
from governance.suppression import suppress_table
from linkage.landing.land import LandingContext, land_file


def test_digit_runs_that_are_not_nhs_numbers_are_allowed(haven):
    assert audit.head(haven.engine) == {"seq": 0, "hash": audit.GENESIS}
    audit.log(haven.engine, SYSTEM, "x", "count/1234567890")  # fails modulus 11
    assert audit.verify(haven.engine).ok


def test_heads_that_do_not_match_the_chain(haven):
    for i in range(3):
        audit.log(haven.engine, SYSTEM, "x", f"r{i}")
    forged = {"seq": 2, "hash": "f" * 64}
    result = audit.verify(haven.engine, forged)
    assert not result.ok and result.finding.problem == "modified"
    assert "exported head is not in the chain" in result.details[0]
    with haven.engine.begin() as connection:
        unguard_audit(connection, haven.engine.dialect.name)
        connection.execute(text("DELETE FROM audit_log WHERE seq = 3"))
    result = audit.verify(haven.engine)
    assert not result.ok and result.finding.problem == "truncated"
    assert "stored head" in result.details[0]


def test_postgresql_urls_use_psycopg(tmp_path):
    engine = engine_for(Settings(home=tmp_path, database_url="postgresql://u:p@localhost/db"))
    assert engine.url.drivername == "postgresql+psycopg"


def test_migrations_downgrade_and_upgrade_again(haven):
    engine = haven.engine
    config = alembic_config(engine)
    for target in ("head", "base", "head"):
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            (command.upgrade if target == "head" else command.downgrade)(config, target)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_log")).scalar() == 0


def test_opt_out_helpers_with_nothing_to_do(haven):
    live = optouts.active_optouts(haven.engine, dt.date(2024, 1, 1))
    assert live.empty
    exclude = optouts.landing_exclusion(haven.engine)
    import pyarrow as pa
    assert not exclude(pa.table({"person_id": ["a"]}), "apc").any()
    assert not optouts.excluded_rows(pd.DataFrame(), "apc", "research", live, [], set()).any()
    with pytest.raises(ValueError, match="unknown purpose"):
        optouts.purpose_filter(haven.engine, "marketing", dt.date(2024, 1, 1))


def test_purge_and_rotation_skip_extracts_whose_files_are_gone(haven, inbox):
    keys = KeyProvider(haven.settings.layout.key_file)
    landing = LandingContext(haven.settings, haven.engine, keys, SYSTEM)
    number = nhs_numbers(1, seed=31)[0]
    gone = land_file(landing, write_extract(inbox / "a", "apc", rows_for("apc", 2, seed=31)))
    land_file(landing, write_extract(inbox / "b", "optouts", [
        {"nhs_number": number, "optout_type": "ndoo", "effective_date": "2020-01-01",
         "withdrawn": "N"}], sender="X26"))
    store.remove_tree(haven.settings.layout.extract(gone.extract_id))
    assert optouts.purge(haven.settings, haven.engine, dt.date(2024, 1, 1), SYSTEM) == {}
    assert retention.due(haven.engine, dt.date(2100, 1, 1))  # still listed as landed
    counts = rotation.rotate_pseudonym_key(haven.settings, haven.engine, keys, SYSTEM)
    assert counts["files"] == 1  # the opt-outs extract; the apc one has no file left


def test_reidentifying_someone_not_in_the_vault_is_refused(haven):
    actor = Actor("dr", "mdt_clinician", "B86001", "case_finding")
    with pytest.raises(Refused) as refused:
        reidentify(haven.engine, haven.keys, actor, ["0" * 64], "a sufficient reason",
                   lambda _p: "B86001")
    assert refused.value.rule == "not_found"


def test_certificate_json_and_runs_without_files(haven):
    certificate = retention.destroy(haven.settings, haven.engine, [], SYSTEM, "manual",
                                    dry_run=False)
    assert certificate.to_json()["extract_ids"] == [] and certificate.manifest_digest
    assert retention.void_runs(haven.settings, haven.engine, ["nothing"]) == {
        "runs_voided": 0, "run_files_removed": 0, "exports_removed": 0}


def test_keyed_hash_without_a_domain_differs_from_with(local_keys):
    key = local_keys.current("pseudonym")
    assert keyed_hash(key, "", "x") != keyed_hash(key, "d", "x")


def test_publish_syncs_nested_folders(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path)
    staged = settings.layout.staged("e1")
    contents = {"rows.parquet": b"top", "part/a.parquet": b"one down",
                "part/deeper/b.parquet": b"two down"}
    for name, content in contents.items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_bytes(content)
    identity = {(s.st_dev, s.st_ino): name for name in contents
                for s in [(staged / name).stat()]}
    synced: dict[tuple[int, int], bool] = {}  # file -> still staged (not yet moved) when synced
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        stat = os.fstat(fd)
        synced[(stat.st_dev, stat.st_ino)] = staged.exists()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = store.publish(settings, "e1")
    assert sorted(name for key, name in identity.items() if key not in synced) == []
    assert all(synced[key] for key in identity), "files must be synced before the rename"
    assert not staged.exists()
    assert {name: (target / name).read_bytes() for name in contents} == contents


def test_secondary_suppression_when_the_rest_of_a_line_is_zero():
    shown = suppress_table(pd.DataFrame({"a": [3, 0], "b": [0, 40]}, index=["x", "y"]))
    # Row x and column a have only zeros beside the 3: a zero is hidden with it, since the
    # totals (40 and 43 rounded) would otherwise give it away.
    assert (shown == "*").sum().sum() >= 2


def test_vault_store_of_nothing_and_of_one(haven):
    key = haven.keys.current("vault")
    with haven.engine.begin() as connection:
        assert vault.store(connection, [], "p") == 0
        sealed = vault.seal([("p" * 64, "9434765919")], key)
        assert vault.store(connection, sealed, "p") == 1
        assert connection.scalar(select(vault.vault.c.person_id)) == "p" * 64


def test_vault_stage_of_nothing_is_a_no_op(haven):
    with haven.engine.begin() as connection:
        vault.stage_open(connection)
        vault.stage(connection, [], "p", "v", [], [])
        assert vault.store_staged(connection) == 0
        vault.stage_close(connection)


def test_policy_override_is_used_and_audited(haven, tmp_path, capsys):
    from cli.main import main

    env = {"HAVEN_HOME": str(haven.settings.home),
           "HAVEN_DATABASE_URL": haven.settings.database_url, **haven.settings.key_env}
    from policies import POLICIES_DIR

    changed = tmp_path / "retention.csv"
    changed.write_text((POLICIES_DIR / "retention.csv").read_text().replace(
        "apc,36,24-month", "apc,1,24-month"))
    assert main(["policy", "set", "retention.csv", str(changed)], env) == 0
    assert main(["policy", "show", "retention.csv"], env) == 0
    assert "apc,1,24-month" in capsys.readouterr().out
    assert retention_date_of(haven) == dt.date(2026, 4, 30)
    assert main(["policy", "set", "nothing.csv", str(changed)], env) == 2
    with haven.engine.connect() as connection:
        actions = connection.scalars(select(audit.audit_log.c.action)).all()
    assert "policy_table.change" in actions


def retention_date_of(haven) -> dt.date:
    from governance.policy_tables import retention_date

    return retention_date("apc", dt.date(2026, 3, 31), haven.engine)


@pytest.mark.parametrize("statements, seq, problem", [
    (["UPDATE audit_log SET seq = 50 WHERE seq = 3"], 4, "deleted"),
    (["UPDATE audit_log SET seq = 0 WHERE seq = 1"], 0, "reordered"),
    (["UPDATE audit_log SET resource = 'x' WHERE seq = 2"], 2, "modified"),
])
def test_chain_breaks_of_every_shape(haven, statements, seq, problem):
    for i in range(4):
        audit.log(haven.engine, SYSTEM, "x", f"r{i}")
    with haven.engine.begin() as connection:
        unguard_audit(connection, haven.engine.dialect.name)
        for statement in statements:
            connection.execute(text(statement))
    result = audit.verify(haven.engine)
    assert not result.ok and (result.finding.seq, result.finding.problem) == (seq, problem)


def _rewrite(haven, at_seq: int, changes: dict) -> None:
    """An attacker who knows the algorithm edits an entry and recomputes its own hash."""
    with haven.engine.connect() as connection:
        row = dict(connection.execute(text("SELECT * FROM audit_log WHERE seq = :s"),
                                      {"s": at_seq}).mappings().one())
    detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
    new = dict(row, detail=detail, **changes)
    new["hash"] = audit.entry_hash(new["prev_hash"], new)
    with haven.engine.begin() as connection:
        unguard_audit(connection, haven.engine.dialect.name)
        connection.execute(text("UPDATE audit_log SET seq = :new_seq, n_records = :n, "
                                "hash = :h WHERE seq = :s"),
                           {"new_seq": new["seq"], "n": new["n_records"], "h": new["hash"],
                            "s": at_seq})


@pytest.mark.parametrize("change, seq, problem", [
    ({"n_records": 77}, 3, "modified"),  # entry 3 rewritten: entry 4 no longer follows it
    ({"seq": 9}, 9, "reordered"),  # entry 3 renumbered, its own hash recomputed
])
def test_rewritten_entries_with_valid_own_hashes(haven, change, seq, problem):
    for i in range(4 if "n_records" in change else 3):
        audit.log(haven.engine, SYSTEM, "x", f"r{i}")
    _rewrite(haven, 3, change)
    result = audit.verify(haven.engine)
    assert not result.ok and (result.finding.seq, result.finding.problem) == (seq, problem)


def test_an_earlier_exported_head_still_in_the_chain_verifies(haven):
    for i in range(2):
        audit.log(haven.engine, SYSTEM, "x", f"r{i}")
    early = audit.head(haven.engine)
    audit.log(haven.engine, SYSTEM, "x", "r2")
    assert audit.verify(haven.engine, early).ok


def test_two_entries_swapped_are_found_as_reordered(haven):
    for i in range(4):
        audit.log(haven.engine, SYSTEM, "x", f"r{i}")
    with haven.engine.begin() as connection:
        unguard_audit(connection, haven.engine.dialect.name)
        connection.execute(text("UPDATE audit_log SET seq = 100 WHERE seq = 2"))
    _rewrite(haven, 3, {"seq": 2})  # entry 3 now claims place 2, its own hash made good
    with haven.engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET seq = 3 WHERE seq = 100"))
    result = audit.verify(haven.engine)
    assert not result.ok and (result.finding.seq, result.finding.problem) == (2, "reordered")


def test_an_entry_slipped_in_before_a_renumbered_one_is_named(haven):
    for i in range(3):
        audit.log(haven.engine, SYSTEM, "x", f"r{i}")
    with haven.engine.connect() as connection:
        second = dict(connection.execute(text("SELECT * FROM audit_log WHERE seq = 2"))
                      .mappings().one())
    _rewrite(haven, 3, {"seq": 4})  # entry 3 moved to 4, its own hash made good
    forged = dict(second, seq=3, prev_hash=second["hash"], resource="forged")
    forged["detail"] = forged["detail"] if isinstance(forged["detail"], dict) \
        else json.loads(forged["detail"])
    forged["hash"] = audit.entry_hash(forged["prev_hash"], forged)
    columns = ", ".join(forged)
    with haven.engine.begin() as connection:
        connection.execute(text(f"INSERT INTO audit_log ({columns}) VALUES "
                                f"({', '.join(':' + k for k in forged)})"),
                           dict(forged, detail=json.dumps(forged["detail"])))
    result = audit.verify(haven.engine)
    assert not result.ok and (result.finding.seq, result.finding.problem) == (3, "inserted")
