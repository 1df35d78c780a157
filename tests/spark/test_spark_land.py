"""Landing's batches prepared on Spark (pipeline.engines.spark_land) equal the embedded
engine's: the same checks, rejected rows and counts, and the same landed rows, with the same
person pseudonym and linkage encodings for every row; executors get no vault key."""

from __future__ import annotations

import pickle
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from spark_fixtures import spark_fixture  # noqa: F401 - the shared `spark` session

from factories import invalid_nhs, rows_for, write_extract
from governance.keys import Key
from linkage.landing.batches import Job, Prepared, prepared_batches
from linkage.landing.contracts import CONTRACTS
from linkage.landing.pseudonymise import HashMemo
from linkage.landing.reader import Batch, FileRefused, ReadStats, csv_batches, parquet_batches
from linkage.landing.splits import csv_splits
from pipeline.engines.spark_land import (
    Handover,
    Seen,
    ToRead,
    executor_job,
    handed_back,
    pieces,
    read_and_prepare,
    reassembled,
    spark_file_prepared,
    spark_file_preparer,
    taken_back,
)

BATCH_ROWS = 60
REJECTED = {"apc": [96], "gp_patients": [8, 96]}  # 1-based data rows: bad NHS number, bad date


def _keys() -> dict[str, Key]:
    return {p: Key(f"{p[0]}t1", secrets.token_bytes(32))
            for p in ("pseudonym", "linkage", "vault")}


def _extract(tmp_path: Path, source: str) -> Path:
    rows = rows_for(source, 230, seed=4)
    rows += [dict(row) for row in rows[:40]]  # the same persons again in a later batch
    rows[7]["nhs_number"] = invalid_nhs(rows[7]["nhs_number"])
    rows[95]["admission_date" if source == "apc" else "registration_date"] = "not a date"
    return write_extract(tmp_path, source, rows)


def _batches(path: Path, source: str) -> list[Batch]:
    """The file read by landing's reader, in batches of BATCH_ROWS (the reader's own batches
    are a 4 MB block at least: this small file would be one)."""
    out = []
    for whole in csv_batches(path, CONTRACTS[source].names, BATCH_ROWS, ReadStats()):
        for start in range(0, whole.table.num_rows, BATCH_ROWS):
            out.append(Batch(whole.table.slice(start, BATCH_ROWS),
                             whole.rows.slice(start, BATCH_ROWS)))
    return out


def _same(ours: Prepared, theirs: Prepared) -> None:
    assert ours.rows.tolist() == theirs.rows.tolist()
    assert ours.reasons == theirs.reasons
    assert (ours.nhs_invalid, ours.nhs_missing, ours.dropped_no_consent) == (
        theirs.nhs_invalid, theirs.nhs_missing, theirs.dropped_no_consent)
    assert ours.candidates.tolist() == theirs.candidates.tolist()
    if theirs.fingerprints is None:
        assert ours.fingerprints is None
    else:
        assert ours.fingerprints is not None
        assert np.array_equal(ours.fingerprints, theirs.fingerprints)
    assert ours.result is not None and theirs.result is not None
    assert ours.result.table.equals(theirs.result.table)
    assert ours.result.persons is not None and theirs.result.persons is not None
    assert ours.result.persons.codes.tolist() == theirs.result.persons.codes.tolist()
    assert ours.result.persons.digests.equals(theirs.result.persons.digests)


@pytest.mark.parametrize("handover", [True, False], ids=["rows-through-files", "through-spark"])
@pytest.mark.parametrize("source", ["apc", "gp_patients"])
def test_slices_prepared_on_spark_equal_the_embedded_batches(spark: Any, tmp_path: Path,
                                                             source: str, handover: bool) -> None:
    """Read by the tasks in slices of the embedded batches' size: slice for batch, the same
    rows, reasons, counts, fingerprints, landed table and persons. With a hand-over folder
    (the commands' way) the landed rows come back through files, which are gone when the
    batches are; without one, through Spark."""
    path = _extract(tmp_path, source)
    job = Job(source, "20261205-test-0001", "RR8", _keys())
    embedded = list(prepared_batches(iter(_batches(path, source)), job, workers=1))
    folder = tmp_path / "staging" / "handover" if handover else None
    (tmp_path / "staging").mkdir()
    on_spark = list(spark_file_prepared(spark, path, CONTRACTS[source].names, False,
                                        ReadStats(), job, window=3, slice_rows=BATCH_ROWS,
                                        handover=folder))
    assert list((tmp_path / "staging").iterdir()) == []
    assert len(on_spark) == len(embedded) == 5
    for ours, theirs in zip(on_spark, embedded, strict=True):
        _same(ours, theirs)
    person_ids = [p.result.table.column("person_id") for p in on_spark if p.result]
    # every row but the invalid date (rejected) and the invalid NHS number (no pseudonym in
    # apc; rejected from gp_patients, where the contract requires it)
    assert sum(pc.count(c).as_py() for c in person_ids) == 270 - 2
    assert [row for p in on_spark for row, _ in p.reasons] == REJECTED[source]


def test_each_split_is_prepared_once(spark: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A global sort of the prepared batches ran the preparation twice (once to sample the
    sort keys). Each call leaves a file (local mode: one disk). The file is named relative
    to this process's working folder, which is not the Python workers': they are given it
    whole."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def counting(number: int, blob: bytes, job: Job, memo: Any,
                 marks: str = str(marks)) -> Any:
        import os
        import uuid

        from pipeline.engines.spark_land import read_and_prepare

        Path(os.path.join(marks, uuid.uuid4().hex)).touch()
        return read_and_prepare(number, blob, job, memo)

    job = Job("apc", "20261205-test-0004", "RR8", _keys())
    path = _extract(tmp_path, "apc")
    splits = csv_splits(path, 4_000)
    monkeypatch.chdir(tmp_path)
    out = list(spark_file_prepared(spark, Path(path.name), CONTRACTS["apc"].names, False,
                                   ReadStats(), job, window=3, slice_rows=BATCH_ROWS,
                                   split_bytes=4_000, work=counting))
    rows = [r for p in out for r in p.rows.tolist()]
    assert rows == list(range(1, 271))  # file order
    assert len(splits) > 5 and len(list(marks.iterdir())) == len(splits)


def test_an_empty_file_prepares_no_batch(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "apc.csv"
    path.write_text(",".join(CONTRACTS["apc"].names) + "\n")
    job = Job("apc", "20261205-test-0002", "RR8", _keys())
    stats = ReadStats()
    assert list(spark_file_prepared(spark, path, CONTRACTS["apc"].names, False, stats,
                                    job)) == []
    assert (stats.rows_seen, stats.unsplittable) == (0, [])


def _messy(tmp_path: Path) -> Path:
    """An apc extract of 270 rows with blank lines (which take no row number), three rows the
    parser cannot split (which do), a bad date and a bad NHS number, with CRLF line ends."""
    path = _extract(tmp_path, "apc")
    lines = path.read_bytes().split(b"\n")
    lines[40:40] = [b"", b"only,three,values"]
    lines[150:150] = [b"", b"", b"x" * 30]
    lines.insert(-1, b"1,2")  # the last row, before the final line feed
    path.write_bytes(b"\r\n".join(lines))
    return path


def _everything(prepared: list[Prepared]) -> tuple[Any, ...]:
    """What a landing takes from its prepared batches, wherever the batches end."""
    tables = [p.result.table for p in prepared if p.result]
    landed = pa.concat_tables(tables, promote_options="permissive") if tables else None
    return ([r for p in prepared for r in p.rows.tolist()],
            [x for p in prepared for x in p.reasons],
            sum(p.nhs_invalid for p in prepared), landed)


def test_a_file_read_by_the_tasks_themselves_prepares_as_the_embedded_reader_does(
        spark: Any, tmp_path: Path) -> None:
    """Executors read the file in splits (a few hundred bytes each here, so a split's rows
    are numbered after others it never sees): the same rows and numbers, reasons, landed
    rows and reader's counts as the file read whole and prepared in this process."""
    path = _messy(tmp_path)
    job = Job("apc", "20261207-test-0008", "RR8", _keys())
    names = CONTRACTS["apc"].names
    theirs_stats = ReadStats()
    embedded = list(prepared_batches(csv_batches(path, names, BATCH_ROWS, theirs_stats), job,
                                     workers=1))
    stats = ReadStats()
    on_spark = list(spark_file_prepared(spark, path, names, False, stats, job, window=3,
                                        slice_rows=7, split_bytes=700,
                                        handover=tmp_path / "handover"))
    assert len(on_spark) > 40  # slices of 7 rows, from splits of about 700 bytes
    assert (stats.rows_seen, sorted(stats.unsplittable)) == (
        theirs_stats.rows_seen, sorted(theirs_stats.unsplittable)) == (273, [40, 149, 273])
    ours, theirs = _everything(on_spark), _everything(embedded)
    assert ours[:3] == theirs[:3]
    assert [r for r, _ in theirs[1]] == [97]  # the bad date, numbered past the 40th row
    assert ours[3].cast(theirs[3].schema).equals(theirs[3])
    assert not (tmp_path / "handover").exists()


def test_a_parquet_file_is_read_by_row_group_on_the_executors(spark: Any,
                                                                tmp_path: Path) -> None:
    path = _extract(tmp_path, "apc")
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={name: pa.string() for name in CONTRACTS["apc"].names}))
    parquet = tmp_path / "apc.parquet"
    pq.write_table(table, parquet, row_group_size=100)
    job = Job("apc", "20261207-test-0009", "RR8", _keys())
    embedded = list(prepared_batches(parquet_batches(parquet, BATCH_ROWS, ReadStats()), job,
                                     workers=1))
    stats = ReadStats()
    on_spark = list(spark_file_prepared(spark, parquet, CONTRACTS["apc"].names, True, stats,
                                        job, slice_rows=30))
    assert stats.rows_seen == 270 and len(on_spark) == 4 + 4 + 3  # 100, 100, 70 rows
    ours, theirs = _everything(on_spark), _everything(embedded)
    assert ours[:3] == theirs[:3] and ours[3].cast(theirs[3].schema).equals(theirs[3])


def test_a_file_the_reader_would_refuse_is_refused_before_a_row_is_prepared(
        spark: Any, tmp_path: Path) -> None:
    """A byte that is not UTF-8 far into the file: the reader's refusal, naming the row,
    from the count of the splits, before any split is prepared."""
    path = _extract(tmp_path, "apc")
    lines = path.read_bytes().split(b"\n")
    lines[200] = lines[200].replace(b"RR8", b"R\xff8", 1)
    path.write_bytes(b"\n".join(lines))
    names = CONTRACTS["apc"].names
    with pytest.raises(FileRefused) as whole:
        list(csv_batches(path, names, BATCH_ROWS, ReadStats()))
    assert str(whole.value) == "the file is not valid UTF-8 (line 201)"

    def never(number: int, blob: bytes, job: Job, memo: Any) -> Any:
        raise AssertionError("a split was prepared")

    job = Job("apc", "20261207-test-0010", "RR8", _keys())
    with pytest.raises(FileRefused) as split:
        list(spark_file_prepared(spark, path, names, False, ReadStats(), job,
                                 split_bytes=500, work=never))
    assert str(split.value) == str(whole.value)


def test_a_refusal_met_by_a_task_refuses_the_file(spark: Any, tmp_path: Path) -> None:
    """A Parquet column that cannot be read as text is met only when a task reads its row
    group: the task sends the reader's refusal back, and the driver raises it."""
    parquet = tmp_path / "apc.parquet"
    columns = {name: pa.array(["x"] * 5) for name in CONTRACTS["apc"].names}
    columns["admission_date"] = pa.array([[1]] * 5)
    pq.write_table(pa.table(columns), parquet, row_group_size=2)
    job = Job("apc", "20261207-test-0011", "RR8", _keys())
    with pytest.raises(FileRefused, match="column admission_date: type list<.* cannot be "
                                          "read as text"):
        list(spark_file_prepared(spark, parquet, CONTRACTS["apc"].names, True, ReadStats(),
                                 job))


@pytest.mark.parametrize("readable", [True, False], ids=["executors-read", "from-a-copy"])
def test_a_file_the_executors_cannot_reach_is_read_from_a_copy_they_can(
        spark: Any, tmp_path: Path, readable: bool) -> None:
    """A file outside what executors mount (a cluster's driver's own folder) is copied into
    the folder given for it (the data directory's staging), read from there, and the copy
    removed when the batches are done: the same batches either way."""
    path = _messy(tmp_path)
    job = Job("apc", "20261207-test-0012", "RR8", _keys())
    names = CONTRACTS["apc"].names
    embedded = list(prepared_batches(csv_batches(path, names, BATCH_ROWS, ReadStats()), job,
                                     workers=1))
    asked: list[Path] = []
    inbound = tmp_path / "staging" / "inbound"

    def can_read(where: Path) -> bool:
        asked.append(where)
        return readable

    prepare = spark_file_preparer(spark, readable=can_read, inbound=lambda job: inbound,
                                  split_bytes=2_000)
    stats = ReadStats()
    prepared = prepare(path, names, False, BATCH_ROWS, stats, job)
    first = next(prepared)
    copies = [c.read_bytes() for c in inbound.iterdir()] if inbound.exists() else []
    modes = [oct(f.stat().st_mode & 0o777) for f in (inbound, *inbound.iterdir())
             ] if inbound.exists() else []
    on_spark = [first, *prepared]
    assert asked == [path] and stats.rows_seen == 273
    assert copies == ([] if readable else [path.read_bytes()])
    assert modes == ([] if readable else ["0o700", "0o600"])  # the raw file: its user's only
    assert not inbound.exists()  # the copy is gone with the batches
    ours, theirs = _everything(on_spark), _everything(embedded)
    assert ours[:3] == theirs[:3] and ours[3].cast(theirs[3].schema).equals(theirs[3])
    with pytest.raises(RuntimeError, match="cannot read the file"):
        spark_file_preparer(spark, readable=lambda where: False)(path, names, False,
                                                                 BATCH_ROWS, stats, job)


def test_executors_get_no_vault_key() -> None:
    job = Job("apc", "x", "RR8", _keys())
    shipped = executor_job(job)
    assert sorted(shipped.keys) == ["linkage", "pseudonym"]
    assert shipped.keys["pseudonym"] is job.keys["pseudonym"]
    with pytest.raises(KeyError, match="no linkage key"):
        executor_job(Job("apc", "x", "RR8", {"pseudonym": job.keys["pseudonym"]}))


def test_a_prepared_batch_comes_back_in_pieces_joined_in_file_order() -> None:
    """A prepared batch travels as pieces (one value of tens of MB ran a 1 GB driver's JVM out
    of heap); they are joined whole and handed on in file order, whatever order they come in."""
    blobs = {0: bytes(range(256)) * 3, 1: b"x" * 10, 2: b"y" * 700}
    rows = [row for number, blob in blobs.items()
            for row in pieces(number, blob, size=256).to_pylist()]
    assert [r["parts"] for r in rows if r["part"] == 0] == [3, 1, 3]
    assert max(len(r["prepared"]) for r in rows) == 256
    shuffled = rows[4:] + rows[3:4] + rows[:3][::-1]  # batch 1 first, batch 0 backwards
    assert list(reassembled(shuffled, [0, 1, 2])) == [blobs[0], blobs[1], blobs[2]]
    with pytest.raises(RuntimeError, match="no whole prepared batch for 1"):
        list(reassembled(rows[:-1], [0, 1, 2]))


def test_a_hand_over_file_is_sealed_read_whole_then_removed_and_must_be_the_landing_s(
        tmp_path: Path) -> None:
    """What a task hands back names its file in the hand-over folder; the file is ciphertext
    under the landing's own key, bound to its name; the driver reads the rows from it, removes
    it, and refuses a name that is hidden or leads out of the folder, a file swapped for
    another's, cut short, or sealed under another landing's key."""
    path = _extract(tmp_path, "apc")
    job = Job("apc", "20261206-test-0006", "RR8", _keys())
    prepared = next(prepared_batches(iter(_batches(path, "apc")), job, workers=1))
    assert prepared.result is not None
    table = prepared.result.table
    folder = tmp_path / "handover"
    folder.mkdir()
    handover = Handover(str(folder), secrets.token_bytes(32))
    assert repr(handover) == f"Handover(folder={str(folder)!r})"  # the key never printed
    blob = handed_back(prepared, handover)
    [written] = list(folder.iterdir())
    on_disk = written.read_bytes()
    for value in table.column("person_id").drop_null().to_pylist()[:20]:
        assert value.encode() not in on_disk  # sealed, not the rows in clear
    through_spark = handed_back(prepared, None)
    assert len(blob) < len(through_spark) - table.nbytes / 2  # the rows do not cross Spark
    back = taken_back(blob, handover)
    assert back.result is not None and back.result.table.equals(table)
    assert list(folder.iterdir()) == []
    assert taken_back(through_spark, None).result.table.equals(table)
    light, name = pickle.loads(blob)
    for bad in ("../rows.parquet", ".x.arrow.part", "/etc/passwd"):
        with pytest.raises(RuntimeError, match="did not make"):
            taken_back(pickle.dumps((light, bad)), handover)
    other = Handover(str(folder), secrets.token_bytes(32))
    for tampered, under in ((on_disk[:-40], handover), (on_disk, other)):
        written.write_bytes(tampered)
        with pytest.raises(RuntimeError, match="not sealed by this landing"):
            taken_back(blob, under)
    second = handed_back(prepared, handover)  # another slice's file, under the first's name
    _, second_name = pickle.loads(second)
    (folder / second_name).rename(folder / name)
    with pytest.raises(RuntimeError, match="not sealed by this landing"):
        taken_back(blob, handover)


def test_the_hand_over_folder_is_removed_when_a_landing_stops_half_way(
        spark: Any, tmp_path: Path) -> None:
    """A landing that fails after its first slice (its generator closed, as the landing's
    `finally` does) leaves nothing in the hand-over folder: it is removed whole."""
    path = _extract(tmp_path, "apc")
    job = Job("apc", "20261206-test-0007", "RR8", _keys())
    folder = tmp_path / "handover"
    prepared = spark_file_prepared(spark, path, CONTRACTS["apc"].names, False, ReadStats(),
                                   job, window=2, slice_rows=30, split_bytes=3_000,
                                   handover=folder)
    first = next(prepared)
    assert first.result is not None and folder.is_dir() and any(folder.iterdir())
    prepared.close()
    assert not folder.exists()


def test_a_file_changed_while_it_lands_is_refused(spark: Any, tmp_path: Path) -> None:
    """What the tasks read must be what the driver hashed: a file whose size or time changed
    after the landing began is refused, by a task or by the driver at the end."""
    path = _extract(tmp_path, "apc")
    names = CONTRACTS["apc"].names
    job = Job("apc", "20261207-test-0013", "RR8", _keys())

    def touching(number: int, blob: bytes, job: Job, memo: Any,
                 where: str = str(path)) -> Any:
        import os

        from pipeline.engines.spark_land import read_and_prepare

        os.utime(where, (0, 10**9))  # the next task, or the driver, sees another time
        return read_and_prepare(number, blob, job, memo)

    with pytest.raises(FileRefused, match="the file changed while it was landing"):
        list(spark_file_prepared(spark, path, names, False, ReadStats(), job,
                                 split_bytes=3_000, work=touching))
    seen = Seen.of(path)
    [split] = csv_splits(path)
    blob = pickle.dumps(ToRead(str(path), names, split, 1, 50, seen, 270))
    assert len(list(read_and_prepare(0, blob, executor_job(job), HashMemo()))) == 6
    miscounted = pickle.dumps(ToRead(str(path), names, split, 1, 50, seen, 269))
    with pytest.raises(FileRefused, match="changed"):  # not the split that was counted
        list(read_and_prepare(0, miscounted, executor_job(job), HashMemo()))
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(FileRefused, match="changed"):
        list(read_and_prepare(0, blob, executor_job(job), HashMemo()))
