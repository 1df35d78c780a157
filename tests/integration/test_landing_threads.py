"""Landing's threads: a failure on any of them lands nothing and leaves no landing thread behind;
the threads land what the plain one-batch-at-a-time form (prepare_batch) would."""

from __future__ import annotations

import threading

import pyarrow.parquet as pq
import pytest

from conftest import key_environment
from factories import landing_fails_leaving_nothing, parquet_extract, rows_for
from governance.settings import Settings
from linkage.landing import batches, land, reader
from linkage.landing.land import LandingContext, land_file
from pipeline.context import Context as Haven

BATCH = 400
STAGES = {"landing-read", "landing-check", "landing-write", "landing-vault", "landing-sha256"}


def _landing_threads() -> set[str]:
    return {t.name for t in threading.enumerate()} & STAGES


@pytest.mark.parametrize("where", ["examine", "finish", "seal"])
def test_a_failure_on_any_thread_lands_nothing(where, tmp_path, monkeypatch):
    path = parquet_extract(tmp_path / "inbox", rows_for("apc", 5 * BATCH))
    if where == "seal":
        real_seal = land.vault.seal_columns
        calls: list[int] = []

        def failing_seal(*args):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("failed on landing-vault")
            return real_seal(*args)

        monkeypatch.setattr(land.vault, "seal_columns", failing_seal)
    else:
        real = getattr(batches, where)

        def failing(examined_or_batch, *args):
            prepared = examined_or_batch.prepared if where == "finish" else None
            rows = (prepared.rows if prepared is not None
                    else examined_or_batch.rows.to_numpy())
            if rows[0] > 2 * BATCH:
                raise RuntimeError(f"failed in {where}")
            return real(examined_or_batch, *args)

        monkeypatch.setattr(batches, where, failing)
    monkeypatch.setattr(land, "pool_size", lambda _batches: 1)
    settings = Settings(home=tmp_path / "home", key_env=key_environment(), batch_rows=BATCH)
    landing_fails_leaving_nothing(settings, path, "failed")
    assert _landing_threads() == set()


def test_threads_land_what_one_batch_at_a_time_lands(tmp_path, monkeypatch):
    rows = rows_for("apc", 3 * BATCH + 17)
    for i, row in enumerate(rows):
        row["nhs_number"] = rows[i % 250]["nhs_number"]  # persons recur across batches
    path = parquet_extract(tmp_path / "inbox", rows)
    keys = key_environment()
    monkeypatch.setattr(land, "pool_size", lambda _batches: 1)

    def plain(where, names, parquet, batch_rows, stats, job):
        """The file read and each batch prepared in turn, on this thread alone (what an
        engine that reads the file itself puts in `LandingContext.file_preparer`)."""
        memo = batches.HashMemo()
        source = (reader.parquet_batches(where, batch_rows, stats) if parquet
                  else reader.csv_batches(where, names, batch_rows, stats))
        for batch in source:
            yield batches.prepare_batch(batch, job, memo)

    tables = []
    for name, preparer in (("threads", None), ("plain", plain)):
        settings = Settings(home=tmp_path / name, key_env=keys, batch_rows=BATCH)
        haven = Haven(settings)
        try:
            receipt = land_file(LandingContext(settings, haven.engine, haven.keys,
                                               file_preparer=preparer), path)
            assert receipt.status == "landed", receipt.reason
            tables.append(pq.read_table(settings.layout.rows(receipt.extract_id))
                          .drop(["extract_id"]))
        finally:
            haven.close()
    assert tables[0].num_rows == len(rows)
    assert tables[0].equals(tables[1])
