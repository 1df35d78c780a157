"""Retention and destruction: everything made from an expired extract goes, with a certificate."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import func, insert, inspect, select, text

from cli.govern_cmd import dependents
from cli.main import main
from factories import rows_for, write_extract
from governance import audit, retention, store
from governance.audit import SYSTEM
from governance.schema import extracts, runs, vault
from linkage import person_index
from linkage.landing import land_file


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
    folder = haven.settings.runs_dir / "score-x"
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
    with haven.engine.connect() as connection:
        vault_before = connection.scalar(select(func.count()).select_from(vault))
    certificate = retention.run(haven.settings, haven.engine, SYSTEM, dt.date(2026, 1, 1),
                                dependents(haven))
    assert certificate.extract_ids == [old.extract_id]
    assert certificate.counts["rows"] == 8 and certificate.counts["runs_voided"] == 1
    assert certificate.counts["index_rows_removed"] == 8
    assert store.landed_folders(haven.settings) == [keep.extract_id]
    assert not (haven.settings.runs_dir / "score-x").exists()
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
