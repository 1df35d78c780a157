"""Landing on two processes: the same landed rows, rejects, receipts and vault as on one."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from conftest import key_environment
from factories import landing_fails_leaving_nothing, parquet_extract, rows_for
from governance import vault
from governance.schema import extracts, rejected_rows
from governance.schema import vault as vault_table
from governance.settings import Settings
from linkage.landing import batches, land
from linkage.landing.land import LandingContext, land_file
from pipeline.context import Context as Haven

BATCH = 500


def _messy_apc(count: int) -> list[dict[str, str]]:
    """apc rows over many batches: persons and spell ids recur across batches, some rows break
    the contract, some have no NHS number."""
    rows = rows_for("apc", count)
    for i, row in enumerate(rows):
        row["nhs_number"] = rows[i % 700]["nhs_number"]  # each person in several batches
        if i % 97 == 5:
            row["admission_date"] = "2023-02-30"
        if i % 89 == 3:
            row["nhs_number"] = ""
        if i % 301 == 7:
            row["spell_id"] = rows[i - 600 if i >= 600 else 1]["spell_id"]  # an earlier batch's
    return rows


def _land(tmp_path: Path, name: str, keys: dict[str, str], path: Path,
          workers: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setattr(land, "pool_size", lambda _batches: workers)
    settings = Settings(home=tmp_path / name, key_env=keys, batch_rows=BATCH)
    haven = Haven(settings)
    try:
        receipt = land_file(LandingContext(settings, haven.engine, haven.keys), path)
        assert receipt.status == "landed", receipt.reason
        table = pq.read_table(settings.layout.rows(receipt.extract_id)).drop(["extract_id"])
        with haven.engine.connect() as connection:
            rejects = [(r.row, r.reason) for r in connection.execute(
                select(rejected_rows).order_by(rejected_rows.c.row))]
            ids = list(connection.scalars(select(vault_table.c.person_id)))
            opened = vault.reveal(connection, haven.keys, ids)
            counts = connection.scalar(select(extracts.c.counts))
    finally:
        haven.close()
    return {"table": table, "rejects": rejects, "vault": opened, "counts": counts,
            "receipt_rows": receipt.rejected_rows}


def test_two_processes_land_what_one_does(tmp_path, monkeypatch):
    rows = _messy_apc(5 * BATCH + 123)
    path = parquet_extract(tmp_path / "inbox", rows)
    keys = key_environment()
    one = _land(tmp_path, "one", keys, path, 1, monkeypatch)
    two = _land(tmp_path, "two", keys, path, 2, monkeypatch)
    assert one["table"].num_rows > 4 * BATCH and one["rejects"]
    assert any("duplicate" in why for _, why in one["rejects"])
    assert 600 < len(one["vault"]) <= 700
    assert two["table"].equals(one["table"])
    assert two["rejects"] == one["rejects"] and two["receipt_rows"] == one["receipt_rows"]
    assert two["vault"] == one["vault"]
    assert two["counts"] == one["counts"]


def test_a_failing_worker_lands_nothing(tmp_path, monkeypatch):
    path = parquet_extract(tmp_path / "inbox", rows_for("apc", 4 * BATCH))
    real = batches.prepare_batch

    def failing(batch, job, memo):
        if int(batch.rows[0].as_py()) > 2 * BATCH:
            raise RuntimeError("worker failed")
        return real(batch, job, memo)

    monkeypatch.setattr(batches, "prepare_batch", failing)  # inherited by the forked workers
    monkeypatch.setattr(land, "pool_size", lambda _batches: 2)
    settings = Settings(home=tmp_path / "home", key_env=key_environment(), batch_rows=BATCH)
    landing_fails_leaving_nothing(settings, path, "worker failed")
    assert not any(settings.layout.extracts_dir.glob("*")) \
        if settings.layout.extracts_dir.exists() else True


def test_the_pool_is_used_only_for_large_files_with_cores_to_spare_in_one_thread(monkeypatch):
    monkeypatch.setattr(batches.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(batches.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    monkeypatch.setattr(batches.threading, "active_count", lambda: 1)
    assert batches.pool_size(10) == 2
    assert batches.pool_size(batches.MIN_POOLED_BATCHES - 1) == 1
    monkeypatch.setattr(batches.os, "getloadavg", lambda: (2.5, 1.0, 1.0))
    assert batches.pool_size(10) == 1  # the spare cores are busy: a pool would only add work
    monkeypatch.setattr(batches.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    monkeypatch.setattr(batches.threading, "active_count", lambda: 3)
    assert batches.pool_size(10) == 1
    monkeypatch.setattr(batches.threading, "active_count", lambda: 1)
    monkeypatch.setattr(batches.os, "cpu_count", lambda: 2)  # the landing's threads fill both
    assert batches.pool_size(10) == 1
    monkeypatch.setattr(batches.threading, "active_count", threading.active_count)
    monkeypatch.setattr(batches.os, "cpu_count", lambda: 1)
    assert batches.pool_size(10) == 1


_HOLD_LOCK_AND_KILLABLE = """
import fcntl, sys, time
from governance.keys import Key
from linkage.landing import batches
from linkage.landing.batches import Job, prepared_batches

def slow():
    time.sleep(600)
    yield None

if sys.argv[2] == "watchdog":  # as where the kernel cannot signal a parent's death
    batches._arm_death_signal = lambda: False
lock = open(sys.argv[1], "a")
fcntl.flock(lock, fcntl.LOCK_EX)
job = Job("apc", "x", "sender", {})
stream = prepared_batches(slow(), job, workers=2)
import threading
threading.Thread(target=lambda: next(stream), daemon=True).start()
while len(batches.multiprocessing.active_children()) < 2:
    time.sleep(0.05)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("guard", ["death-signal", "watchdog"])
def test_a_killed_landing_leaves_no_worker_holding_the_data_lock(tmp_path, guard):
    """SIGKILL a landing whose pool is running: its workers go with it and the data directory's
    lock is free for the next landing (forked workers inherit the lock's open file)."""
    import fcntl
    import os
    import signal
    import subprocess
    import sys
    import time

    lock_path = tmp_path / "data.lock"
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK_AND_KILLABLE, str(lock_path),
                                guard],
                               cwd=root, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        freed = False
        with lock_path.open("a") as handle:
            for _ in range(100):
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    freed = True
                    break
                except BlockingIOError:
                    time.sleep(0.1)
        assert freed, "a worker of the killed landing still holds the data directory's lock"
    finally:
        process.kill()
