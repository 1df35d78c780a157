"""Retention and destruction: everything made from an expired extract goes, with a certificate."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import func, insert, inspect, select, text, update

from cli.main import main
from conftest import everything_kept
from factories import rows_for, write_extract
from governance import audit, retention, store
from governance.audit import SYSTEM
from governance.schema import destruction_certificates, extracts, runs, vault
from linkage import person_index
from linkage.landing.land import land_file
from pipeline.govern import dependents


def environ(haven) -> dict[str, str]:
    return {"HAVEN_HOME": str(haven.settings.home),
            "HAVEN_DATABASE_URL": haven.settings.database_url, **haven.settings.key_env}


@pytest.fixture
def landed(haven, landing, inbox):
    """apc due for destruction (period ended 2022), gp_patients kept; indexed; a run on apc."""
    old = land_file(landing, write_extract(inbox / "a", "apc", rows_for("apc", 8, seed=3),
                                           manifest={"period_end": "2022-12-31"}))
    keep = land_file(landing, write_extract(inbox / "b", "gp_patients",
                                            rows_for("gp_patients", 4, seed=3)))
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"))
    folder = haven.settings.layout.runs_dir / "score-x"
    folder.mkdir(parents=True)
    (folder / "scores.parquet").write_bytes(b"scores")
    with haven.engine.begin() as connection:
        connection.execute(insert(runs).values(
            run_id="score-x", kind="score", at=dt.datetime.now(dt.UTC), status="complete",
            extract_ids=[old.extract_id, keep.extract_id], summary={}))
    return old, keep


def test_due_follows_the_retention_table(haven, landed):
    old, keep = landed
    assert retention.due(haven.engine, dt.date(2025, 12, 30)) == []
    assert retention.due(haven.engine, dt.date(2026, 1, 1)) == [old.extract_id]
    assert old.retention_date == "2025-12-31"


def test_dry_run_destroys_nothing(haven, landed):
    certificate = retention.run(haven.settings, haven.engine, SYSTEM, dt.date(2026, 1, 1),
                                dry_run=True)
    assert certificate.dry_run and certificate.counts["rows"] == 8
    assert len(store.landed_folders(haven.settings)) == 2


def test_destruction_leaves_no_row_of_the_extract_anywhere(haven, landed):
    old, keep = landed
    only_old = set(pd.read_parquet(haven.settings.layout.rows(old.extract_id))[
        "person_id"]) - set(pd.read_parquet(haven.settings.layout.rows(keep.extract_id))[
            "person_id"])
    assert len(only_old) == 4 and all(p in everything_kept(haven) for p in only_old)
    with haven.engine.connect() as connection:
        vault_before = connection.scalar(select(func.count()).select_from(vault))
    certificate = retention.run(haven.settings, haven.engine, SYSTEM, dt.date(2026, 1, 1),
                                dependents(haven))
    assert certificate.extract_ids == [old.extract_id]
    assert certificate.counts["rows"] == 8 and certificate.counts["runs_voided"] == 1
    assert certificate.counts["index_rows_removed"] == 8
    assert store.landed_folders(haven.settings) == [keep.extract_id]
    assert not (haven.settings.layout.runs_dir / "score-x").exists()
    # No table and no file under the data directory still names the extract.
    with haven.engine.connect() as connection:
        tables = inspect(connection).get_table_names()
        leftovers = []
        for table in tables:
            if table in ("extracts", "audit_log", "destruction_certificates", "runs"):
                continue
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                if old.extract_id in repr(tuple(row)):
                    leftovers.append(table)
        status = connection.scalar(select(extracts.c.status)
                                   .where(extracts.c.extract_id == old.extract_id))
        run_status = connection.scalar(select(runs.c.status).where(runs.c.run_id == "score-x"))
        vault_after = connection.scalar(select(func.count()).select_from(vault))
    assert leftovers == [] and status == "destroyed" and run_status == "void"
    for path in haven.settings.home.rglob("*.parquet"):
        assert old.extract_id not in pd.read_parquet(path).to_csv()
    # The 4 persons also in the GP register keep their vault entries; the 4 only in apc go.
    assert (vault_before, vault_after) == (8, 4) and certificate.counts["vault_entries"] == 4
    # The persons only that extract held are gone from every table and file.
    kept = everything_kept(haven)
    assert not any(p in kept for p in only_old)
    listed = retention.list_certificates(haven.engine)
    assert [c["certificate_id"] for c in listed] == [certificate.certificate_id]
    assert listed[0]["manifest_digest"] == certificate.manifest_digest
    assert audit.verify(haven.engine).ok
    with pytest.raises(ValueError, match="already destroyed"):
        retention.destroy(haven.settings, haven.engine, [old.extract_id], SYSTEM, "manual")


def test_vault_entries_nothing_references_are_destroyed(haven, landing, inbox):
    period = {"period_start": "2019-01-01", "period_end": "2020-01-01"}
    only = land_file(landing, write_extract(inbox, "deaths", rows_for("deaths", 5, seed=99),
                                            manifest=period))
    certificate = retention.destroy(haven.settings, haven.engine, [only.extract_id], SYSTEM,
                                    "manual")
    assert certificate.counts["vault_entries"] == 5
    with haven.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(vault)) == 0


def test_retention_commands(haven, landed, capsys):
    env = environ(haven)
    assert main(["retention", "run", "--dry-run", "--as-of", "2026-01-01"], env) == 0
    assert "would destroy 1 extracts" in capsys.readouterr().out
    assert main(["retention", "run", "--as-of", "2026-01-01"], env) == 0
    assert "certificate dc-" in capsys.readouterr().out
    assert main(["retention", "certificates"], env) == 0
    assert '"schedule": "retention schedule"' in capsys.readouterr().out
    assert main(["retention", "run", "--as-of", "someday"], env) == 2


def test_an_interrupted_destruction_is_finished_by_the_next_run(haven, landed):
    old, keep = landed

    def broken(_ids: list[str]) -> dict[str, int]:
        raise RuntimeError("the index is unavailable")

    with pytest.raises(RuntimeError):
        retention.run(haven.settings, haven.engine, SYSTEM, dt.date(2026, 1, 1),
                      [*dependents(haven), broken])
    with haven.engine.connect() as connection:
        status = connection.scalar(select(extracts.c.status)
                                   .where(extracts.c.extract_id == old.extract_id))
    assert status == "destroying" and retention.list_certificates(haven.engine) == []
    assert not haven.settings.layout.extract(old.extract_id).exists()
    # Unfinished work is due whatever the date, and the next run certifies all of it.
    assert retention.due(haven.engine, dt.date(2000, 1, 1)) == [old.extract_id]
    certificate = retention.run(haven.settings, haven.engine, SYSTEM, dt.date(2000, 1, 1),
                                dependents(haven))
    assert certificate.extract_ids == [old.extract_id]
    assert certificate.counts["rows"] == 8 and certificate.counts["vault_entries"] == 4
    assert retention.verify_certificate(haven.engine, certificate.certificate_id)
    assert person_index.read_link_map(haven.settings)["extract_id"].unique().tolist() == [
        keep.extract_id]


def test_a_destroyed_file_may_be_sent_again(haven, landing, inbox):
    path = write_extract(inbox, "deaths", rows_for("deaths", 3, seed=5),
                         manifest={"period_start": "2020-01-01", "period_end": "2020-01-31"})
    first = land_file(landing, path)
    retention.destroy(haven.settings, haven.engine, [first.extract_id], SYSTEM, "manual")
    again = land_file(landing, path)
    assert again.status == "landed" and again.extract_id != first.extract_id


def test_certificates_can_be_verified(haven, landed, capsys):
    old, _ = landed
    certificate = retention.destroy(haven.settings, haven.engine, [old.extract_id],
                                    audit.Actor("ig", "ig_lead", "X26", "governance"),
                                    "request 42", dependents(haven))
    env = environ(haven)
    ident = certificate.certificate_id
    assert retention.verify_certificate(haven.engine, ident)
    assert main(["retention", "verify", ident], env) == 0
    assert "matches its digest" in capsys.readouterr().out
    with haven.engine.begin() as connection:
        seq = connection.scalar(select(func.max(audit.audit_log.c.seq)))
        connection.execute(update(destruction_certificates).values(audit_seq=seq - 1))
    assert not retention.verify_certificate(haven.engine, ident)  # names another entry
    with haven.engine.begin() as connection:
        connection.execute(update(destruction_certificates).values(
            audit_seq=certificate.audit_seq, counts={**certificate.counts, "rows": 7}))
    assert not retention.verify_certificate(haven.engine, ident)  # counts edited
    assert main(["retention", "verify", ident], env) == 1
    assert main(["retention", "verify", "dc-unknown"], env) == 2
    with pytest.raises(ValueError, match="no certificate"):
        retention.verify_certificate(haven.engine, "dc-unknown")


def test_exports_of_voided_runs_are_destroyed(haven, landed):
    old, _ = landed
    exports = haven.settings.layout.exports_dir
    for name, content in (("exp-1", '{"run_id": "score-x"}'), ("exp-2", '{"run_id": "other"}'),
                          ("exp-3", "not json")):
        (exports / name).mkdir(parents=True)
        (exports / name / "export.json").write_text(content)
        (exports / name / "export.csv").write_text("recipient_key\n")
    counts = retention.void_runs(haven.settings, haven.engine, [old.extract_id])
    assert counts == {"runs_voided": 1, "run_files_removed": 3, "exports_removed": 1}
    assert sorted(p.name for p in exports.iterdir()) == ["exp-2", "exp-3"]


def test_a_dry_run_says_what_would_go(haven, landed, capsys):
    assert main(["retention", "run", "--dry-run", "--as-of", "2026-01-01"], environ(haven)) == 0
    out = capsys.readouterr().out
    assert landed[0].extract_id in out and '"rows": 8' in out
    assert retention.list_certificates(haven.engine) == []


def test_vault_entries_the_register_or_any_landed_row_still_needs_are_kept(haven, landing, inbox):
    numbers = [r["nhs_number"] for r in rows_for("apc", 4, seed=12)]
    old = land_file(landing, write_extract(inbox / "a", "apc", rows_for("apc", 4, seed=12),
                                           manifest={"period_start": "2020-01-01",
                                                     "period_end": "2020-12-31"}))
    land_file(landing, write_extract(inbox / "b", "optouts", [
        {"nhs_number": numbers[0], "optout_type": "ndoo", "effective_date": "2020-01-01",
         "withdrawn": "N"}], sender="X26"))
    empty = land_file(landing, write_extract(inbox / "c", "deaths", []))
    assert empty.status == "landed" and empty.counts["landed"] == 0
    gone = land_file(landing, write_extract(inbox / "d", "deaths", rows_for("deaths", 1)))
    store.remove_tree(haven.settings.layout.extract(gone.extract_id))  # lost by accident
    certificate = retention.destroy(haven.settings, haven.engine, [old.extract_id], SYSTEM,
                                    "manual")
    # The 3 apc-only persons go, and the lost file's person (no row references them any
    # more); the objector's entry stays: the register still names them.
    assert certificate.counts["vault_entries"] == 4
    with haven.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(vault)) == 1
