"""Landing hashes the file while it lands: a file that differs from its manifest is still
refused for that, before any other reason, and never lands or counts as a duplicate."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from sqlalchemy import select

from factories import rows_for, write_extract, write_manifest
from governance import store
from governance.schema import extracts, vault
from linkage.landing import land, reader
from linkage.landing.contracts import CONTRACTS
from linkage.landing.land import land_file

MISMATCH = "sha256 does not match the manifest"


def _statuses(haven) -> list[str]:
    with haven.engine.connect() as connection:
        assert connection.scalar(select(vault.c.person_id)) is None
        return connection.scalars(select(extracts.c.status).order_by(extracts.c.received_at)).all()


@pytest.mark.parametrize("also", ["missing_column", "row_count", "mostly_bad", "nothing_else"])
def test_a_file_other_than_the_one_sent_is_refused_for_that_first(also, haven, landing, inbox):
    rows = rows_for("apc", 12)
    columns = None
    overrides: dict = {"sha256": "0" * 64}
    if also == "missing_column":
        columns = [c for c in CONTRACTS["apc"].names if c != "admission_method"]
    elif also == "row_count":
        overrides["rows"] = 13
    elif also == "mostly_bad":
        for row in rows[:8]:
            row["admission_date"] = "yesterday"
    path = write_extract(inbox, "apc", rows, columns=columns, manifest=overrides)
    receipt = land_file(landing, path)
    assert receipt.status == "refused" and MISMATCH in receipt.reason
    assert store.landed_folders(haven.settings) == []
    assert _statuses(haven) == ["refused"]


def test_a_changed_copy_of_a_landed_file_is_refused_not_a_duplicate(haven, landing, inbox):
    path = write_extract(inbox, "apc", rows_for("apc", 6))
    first = land_file(landing, path)
    assert first.status == "landed"
    sent = hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(path.read_bytes().replace(b"RR8", b"RR9", 1))  # changed after sending
    write_manifest(path, "apc", 6, overrides={"sha256": sent})
    again = land_file(landing, path)
    assert again.status == "refused" and MISMATCH in again.reason
    assert store.landed_folders(haven.settings) == [first.extract_id]


def test_the_hashing_thread_is_waited_for_before_a_pool_forks(haven, landing, inbox,
                                                               monkeypatch):
    seen: list[int] = []
    real, real_sha256 = land.prepared_batches, reader.sha256_of

    def recording(batches, job, workers):
        seen.append(sum(t.name == "landing-sha256" for t in threading.enumerate()))
        return real(batches, job, workers)

    def slow_sha256(path, lines=None):
        time.sleep(0.3)  # still hashing when the batches are asked for, unless waited for
        return real_sha256(path, lines)

    monkeypatch.setattr(reader, "sha256_of", slow_sha256)
    monkeypatch.setattr(land, "pool_size", lambda _batches: 2)
    monkeypatch.setattr(land, "prepared_batches", recording)
    path = write_extract(inbox, "op", rows_for("op", 30))
    receipt = land_file(landing, path)
    assert receipt.status == "landed" and receipt.counts["landed"] == 30
    assert seen == [0]


def test_a_file_touched_while_it_lands_is_refused_though_its_bytes_still_match(
        haven, landing, inbox, monkeypatch):
    """Its size or modification time moved after hashing began: what was read (here, or by
    Spark's tasks) may not be what was hashed, so it is refused, and nothing lands."""
    path = write_extract(inbox, "op", rows_for("op", 30))
    real = land.prepared_batches

    def touching(batches, job, workers):
        import os

        os.utime(path, (0, 10**9))  # the same bytes, another time
        return real(batches, job, workers)

    monkeypatch.setattr(land, "prepared_batches", touching)
    receipt = land_file(landing, path)
    assert receipt.status == "refused"
    assert receipt.reason == "the file changed while it was landing"
    assert store.landed_folders(haven.settings) == []
