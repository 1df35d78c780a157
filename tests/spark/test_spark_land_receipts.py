"""A whole landing with its batches prepared on Spark gives the embedded engine's receipt and
the same person pseudonym for every landed row, with governance (receipt, vault, audit) in the
driver's database, SQLite or PostgreSQL: the file read by the executors themselves (CSV or
Parquet; where they cannot reach it, from a copy in the staging folder), through
`LandingContext.file_preparer` as `haven land` sets it (pipeline/land.py).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from spark_fixtures import spark_fixture  # noqa: F401 - the shared `spark` session
from sqlalchemy import create_engine, select, text

from conftest import key_environment
from factories import invalid_nhs, rows_for, write_extract, write_manifest
from governance.schema import audit_log, vault
from governance.settings import Settings
from linkage.landing.land import LandingContext, Receipt, land_file
from pipeline.context import Context
from pipeline.engines.spark_land import spark_file_preparer
from pipeline.land import handover_folder

BATCH_ROWS = 400


def _extract(folder: Path, parquet: bool) -> Path:
    """1,300 apc rows (persons repeated across batches, a bad date, a bad NHS number, a
    repeated spell id) as a CSV file or a Parquet file of text columns, with its manifest."""
    rows = rows_for("apc", 1000, seed=9)
    rows += [dict(row) for row in rows[:300]]
    for row in rows[1000:]:
        row["spell_id"] = row["spell_id"] + "B"
    rows[12]["nhs_number"] = invalid_nhs(rows[12]["nhs_number"])
    rows[650]["admission_date"] = "2024-13-45"
    rows[1200]["spell_id"] = rows[3]["spell_id"]  # a record id already landed in batch one
    csv = write_extract(folder / "csv", "apc", rows)
    if not parquet:
        return csv
    table = pacsv.read_csv(csv, convert_options=pacsv.ConvertOptions(
        column_types={name: pa.string() for name in rows[0]}))
    path = folder / "apc.parquet"
    pq.write_table(table, path, row_group_size=BATCH_ROWS)
    write_manifest(path, "apc", len(rows))
    return path


def _land(home: Path, backend: str, keys: dict[str, str], path: Path,
          file_preparer: Any = None) -> tuple[Receipt, pa.Table, set[str], list[Any]]:
    settings = Settings(home=home, database_url=backend, key_env=keys, batch_rows=BATCH_ROWS)
    haven = Context(settings)
    try:
        receipt = land_file(LandingContext(settings, haven.engine, haven.keys, haven.actor,
                                           file_preparer=file_preparer), path)
        rows = pq.read_table(settings.layout.extract(receipt.extract_id) / "rows.parquet")
        with haven.engine.connect() as connection:
            sealed = set(connection.scalars(select(vault.c.person_id)))
            events = connection.execute(select(audit_log.c.action, audit_log.c.n_records)
                                        ).all()
    finally:
        haven.close()
    return receipt, rows, sealed, [tuple(e) for e in events]


@pytest.fixture
def second_database(backend: str, request: pytest.FixtureRequest) -> str:
    """A database of its own for the Spark landing: SQLite under its home, or a second fresh
    PostgreSQL database."""
    if not backend:
        return ""
    admin = request.getfixturevalue("postgres_admin_url")
    name = f"haven_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    request.addfinalizer(lambda: _drop(engine, name))
    return f"{admin.rpartition('/')[0]}/{name}"


def _drop(engine: Any, name: str) -> None:
    with engine.connect() as connection:
        connection.execute(text(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    engine.dispose()


@pytest.mark.parametrize(("parquet", "readable"), [(True, True), (False, True), (False, False)],
                         ids=["parquet", "csv", "csv-from-a-copy"])
def test_a_landing_prepared_on_spark_gives_the_same_receipt_and_pseudonyms(
        spark: Any, tmp_path: Path, backend: str, second_database: str, parquet: bool,
        readable: bool) -> None:
    path = _extract(tmp_path / "inbox", parquet)
    keys = key_environment()
    embedded = _land(tmp_path / "embedded", backend, keys, path)
    staging = Settings(home=tmp_path / "spark").layout.staging_dir  # as `haven land` does
    on_spark = _land(tmp_path / "spark", second_database, keys, path, spark_file_preparer(
        spark, 2, handover=lambda job: handover_folder(staging, job.extract_id),
        readable=lambda where: readable, split_bytes=20_000,  # the CSV in 12 splits
        inbound=lambda job: staging / f"{job.extract_id}.inbound"))
    landed = Settings(home=tmp_path / "spark").layout.extract(on_spark[0].extract_id)
    assert [f.name for f in landed.iterdir()] == ["rows.parquet"]  # no hand-over file left
    assert list(staging.iterdir()) == []  # nor a hand-over folder beside it
    ours, theirs = on_spark[0].to_json(), embedded[0].to_json()
    assert ours.pop("extract_id") != theirs.pop("extract_id")  # a fresh id per landing
    assert ours == theirs
    assert theirs["counts"]["landed"] == 1300 - 2
    assert theirs["counts"]["rejected"] == 2  # the bad date and the repeated spell id
    drop = ["extract_id"]
    assert on_spark[1].drop_columns(drop).equals(embedded[1].drop_columns(drop))
    person_ids = on_spark[1].column("person_id")
    assert person_ids.equals(embedded[1].column("person_id"))
    assert person_ids.null_count == 1  # the invalid NHS number's row
    assert on_spark[2] == embedded[2] and len(on_spark[2]) == 1000 - 1
    assert on_spark[3] == embedded[3]
