"""Landing's costly part on Spark: the file read, and each slice of it checked and
pseudonymised, by the executors.

`spark_file_prepared` is the Spark counterpart of reading a file with
`linkage.landing.reader` and preparing its batches with `linkage.landing.batches.
prepared_batches`. The driver cuts the file into splits (`linkage.landing.splits`: a few bytes
read at each cut), a job counts each split's rows where a task reads it, which numbers every
split's first row as the whole-file reader would, and then each task reads its split, numbers
it and prepares it, in slices of at most `SLICE_ROWS` rows, with the same partition-pure
`prepare_batch`, in `mapInArrow`; the slices are handed back in file order (a slice is a batch
of its own to the landing, whose results do not depend on where batches end). The raw rows
never pass through the driver or Spark's JVM. What spans the file (a record id repeated
across batches, persons already sealed, opt-out senders, the vault, the receipt, the audit
event) stays with the landing on the driver, against the embedded or PostgreSQL database.

Keys: executors get only what preparing a batch uses, the `pseudonym` and `linkage` keys of
the landing's job (`executor_job`), in one broadcast destroyed when the landing's batches are
back. The vault and release keys never leave the driver (the vault is sealed there); no key
provider, key file or environment is shipped. Nothing is handed to Spark unless the session
encrypts its local files (`spark_protections.require_protections`): PySpark writes a
broadcast to a file there. See docs/scale.md, "Keys on executors".
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from linkage.landing.batches import Job, Prepared, prepare_batch
from linkage.landing.pseudonymise import HashMemo
from linkage.landing.reader import FileRefused, ReadStats
from linkage.landing.splits import (
    SPLIT_BYTES,
    Split,
    SplitCount,
    count_split,
    csv_splits,
    numbered,
    parquet_splits,
    split_batches,
)
from pipeline.engines.spark_broadcast import broadcast, value_of
from pipeline.engines.spark_handover import Handover, remove, seal, unsealed
from pipeline.engines.spark_protections import require_protections

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

EXECUTOR_KEYS = ("pseudonym", "linkage")
OUT_SCHEMA = "batch long, part long, parts long, prepared binary, refused string"
COUNT_SCHEMA = "split long, counted binary"
# What a Spark task hands back at once: its split (about 4 MB of the file,
# `splits.SPLIT_BYTES`) is prepared in slices of at most this many rows, each handed to the
# landing as a batch of its own (the landing's results do not depend on where batches end).
# A whole 200,000-row batch's prepared result (tens of MB) moved through a 1 or 2 GB
# driver's JVM in several copies at once and ran it out of heap.
SLICE_ROWS = 20_000
# Splits in one Spark job, per partition: more amortise a job's fixed cost (8 slices in
# flight on local[2]: 15.8 s against 17.5 s for 4, for 1,000,000 rows), fewer keep fewer
# prepared slices waiting for the driver at once.
WINDOW_PER_PARTITION = 4
# A prepared slice comes back in values of at most this many bytes.
PIECE_BYTES = 1 << 20

# What `LandingContext.file_preparer` is: (path, columns, parquet, batch_rows, stats, job).
FilePreparer = Callable[[Path, list[str], bool, int, ReadStats, Job], Iterator[Prepared]]
# What a task does with one payload of a window: the prepared slices it makes, numbered.
Work = Callable[[int, bytes, Job, HashMemo], Iterator[tuple[int, Prepared]]]


def executor_job(job: Job) -> Job:
    """The job as executors get it: only the keys preparing a batch uses (KeyError naming a
    missing purpose)."""
    missing = [p for p in EXECUTOR_KEYS if p not in job.keys]
    if missing:
        raise KeyError(f"landing job has no {', '.join(missing)} key")
    return replace(job, keys={p: job.keys[p] for p in EXECUTOR_KEYS})


def handed_back(prepared: Prepared, handover: Handover | None) -> bytes:
    """What a task sends the driver for a prepared slice, pickled. With a `handover` the
    slice's landed rows are left in its folder as a sealed Arrow IPC file (`spark_handover`;
    named in what is sent, the table itself sent empty): they reach the driver from disk, not
    through Spark's JVM, which copied them several times and spent three times the CPU the
    preparing did. The rows are pseudonymised, but they are all of the slice's rows, before
    the landing drops repeated ids and opted-out persons: sealed, a file a crash leaves
    behind, or one read by anyone else, is ciphertext."""
    if handover is None or prepared.result is None:
        return pickle.dumps((prepared, None), protocol=pickle.HIGHEST_PROTOCOL)
    table = prepared.result.table
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    name = seal(handover, sink.getvalue().to_pybytes(), ".arrow")
    light = replace(prepared, result=replace(prepared.result, table=table.schema.empty_table()))
    return pickle.dumps((light, name), protocol=pickle.HIGHEST_PROTOCOL)


def taken_back(blob: bytes, handover: Handover | None) -> Prepared:
    """`handed_back` read on the driver: the prepared slice with its landed rows read from
    the hand-over folder, whose file is then removed. RuntimeError for a name this landing's
    tasks did not make or a file not sealed under its key for that name (swapped, cut short,
    altered)."""
    prepared, name = pickle.loads(blob)  # noqa: S301 - made by this landing's executors
    if name is None:
        return prepared
    if handover is None:
        raise RuntimeError("a prepared slice named a hand-over file this landing did not make")
    opened = unsealed(handover, name, "this landing")
    table = pa.ipc.open_file(pa.py_buffer(opened)).read_all()
    prepared.result = replace(prepared.result, table=table)
    return prepared


@dataclass(frozen=True)
class ToRead:
    """A split of the file for a task to read itself: where (an absolute path), which
    columns, the number of its first data row (`splits.numbered`), and the file as the driver
    found it (`Seen`)."""

    path: str
    names: list[str]
    split: Split
    first: int
    slice_rows: int
    seen: Seen
    rows: int  # the rows the split was counted to hold (`SplitCount.split_rows`)


@dataclass(frozen=True)
class Seen:
    """A file's size and modification time (whole seconds: what every file system an
    executor mounts reports alike) as the driver found them when the landing began: a task
    that finds others refuses the file (it changed while it landed, so what the tasks read
    may not be what the driver hashed and the manifest names)."""

    size: int
    mtime: int

    @classmethod
    def of(cls, path: Path) -> Seen:
        found = path.stat()
        return cls(found.st_size, found.st_mtime_ns // 10**9)

    def check(self, path: Path) -> None:
        """FileRefused unless `path` is still the file seen."""
        if Seen.of(path) != self:
            raise FileRefused("the file changed while it was landing")


def read_and_prepare(number: int, blob: bytes, job: Job,
                     memo: HashMemo) -> Iterator[tuple[int, Prepared]]:
    """A split (`ToRead`, pickled) read and numbered where the task runs, in slices of its
    `slice_rows`, each prepared: slices numbered on from `number`."""
    to_read: ToRead = pickle.loads(blob)  # noqa: S301 - made by this landing's driver
    to_read.seen.check(Path(to_read.path))
    batches = list(split_batches(Path(to_read.path), to_read.names, to_read.split,
                                 to_read.first, to_read.slice_rows))
    if sum(batch.table.num_rows for batch in batches) != to_read.rows:
        # not the split that was counted: its slices' numbers would run into the next's
        raise FileRefused("the file changed while it was landing")
    for offset, batch in enumerate(batches):
        yield number + offset, prepare_batch(batch, job, memo)


def split_counts(spark: SparkSession, path: Path, names: list[str], splits: list[Split],
                 seen: Seen,
                 count: Callable[[Path, list[str], Split], SplitCount] = count_split,
                 ) -> list[SplitCount]:
    """Every CSV split counted by a task that reads it (`splits.count_split`), in one job;
    only the counts come back (FileRefused if a task finds the file changed: `Seen`)."""
    frame = spark.createDataFrame(pa.Table.from_batches([
        pa.RecordBatch.from_arrays([pa.array([split.index], pa.int64()),
                                    pa.array([pickle.dumps(split)], pa.binary())],
                                   names=["split", "payload"])
        for split in splits]))
    where = str(path)

    def run(chunks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for chunk in chunks:
            for index, blob in zip(chunk.column("split").to_pylist(),
                                   chunk.column("payload").to_pylist(), strict=True):
                try:
                    seen.check(Path(where))
                except FileRefused:
                    counted = SplitCount(0, refusal="changed")
                else:
                    counted = count(Path(where), names, pickle.loads(blob))  # noqa: S301
                yield pa.RecordBatch.from_pydict(
                    {"split": [index], "counted": [pickle.dumps(counted)]},
                    schema=pa.schema([("split", pa.int64()), ("counted", pa.binary())]))

    by_index = {row["split"]: pickle.loads(row["counted"])  # noqa: S301 - this job's tasks'
                for row in frame.mapInArrow(run, COUNT_SCHEMA).collect()}
    if len(by_index) != len(splits):
        raise RuntimeError(f"Spark counted {len(by_index)} of the file's {len(splits)} splits")
    return [by_index[split.index] for split in splits]


def spark_file_prepared(spark: SparkSession, path: Path, names: list[str], parquet: bool,
                        stats: ReadStats, job: Job, partitions: int = 2,
                        window: int | None = None, slice_rows: int = SLICE_ROWS,
                        split_bytes: int = SPLIT_BYTES, handover: Path | None = None,
                        work: Work = read_and_prepare) -> Iterator[Prepared]:
    """The file prepared on Spark by tasks that read it themselves: its rows never pass
    through the driver. Yields what `prepared_batches` yields for the file's batches (in
    more, smaller batches) and leaves in `stats` what the whole-file reader would (rows
    seen, unsplittable rows).

    The driver cuts the file into splits (`splits.csv_splits`: a few bytes read at each
    cut; a Parquet file's row groups); one job counts every CSV split's rows where it is
    read (`split_counts`), which numbers each split's first row and refuses a file the
    reader would refuse, with its message, before anything is prepared; then windows of
    `window` splits are read, numbered, sliced and prepared by `work` (`read_and_prepare`),
    a split a task, their landed rows handed back through `handover` (else through Spark).
    The file must be where every executor can read it (`spark_file_preparer` sees to it).
    """
    window = window or WINDOW_PER_PARTITION * partitions
    require_protections(spark)  # before a key is handed to Spark
    path = path.resolve()  # executors do not share the driver's working folder
    seen = Seen.of(path)
    if parquet:
        splits, group_rows = parquet_splits(path)
        counts = [SplitCount(rows) for rows in group_rows]
    else:
        splits = csv_splits(path, split_bytes)
        counts = split_counts(spark, path, names, splits, seen)
    if any(count.refusal == "changed" for count in counts):
        raise FileRefused("the file changed while it was landing")
    plan = numbered(counts)
    stats.rows_seen, stats.unsplittable = plan.rows_seen, list(plan.unsplittable)
    shared = None
    try:
        sealed = None if handover is None else Handover.made(handover)
        shared = broadcast(spark, (executor_job(job), sealed))
        pending: list[tuple[int, bytes]] = []
        expected: list[int] = []
        number = 0
        for split, first, count in zip(splits, plan.firsts, counts, strict=True):
            slices = -(-count.split_rows // max(slice_rows, 1))
            if not slices:
                continue
            to_read = ToRead(str(path), names, split, first, slice_rows, seen,
                             count.split_rows)
            pending.append((number, pickle.dumps(to_read)))
            expected.extend(range(number, number + slices))
            number += slices
            if len(pending) >= window:
                yield from _prepare_window(spark, pending, shared, work, sealed, expected)
                pending, expected = [], []
        if pending:
            yield from _prepare_window(spark, pending, shared, work, sealed, expected)
        seen.check(path)  # and not since the tasks read it
    finally:
        try:
            if shared is not None:
                shared.destroy()
        finally:
            if handover is not None:
                remove(handover, "landing")


def _prepare_window(spark: SparkSession, shipped: list[tuple[int, bytes]], shared: Any,
                    work: Work, handover: Handover | None,
                    expected: list[int]) -> Iterator[Prepared]:
    """One window of payloads (splits of the file to read, `ToRead`), one per partition,
    each prepared by `work` in `mapInArrow` in one job and collected (the window is what the
    driver holds), then handed on in file order: the slices numbered `expected`. The landed
    rows come back through files (`handed_back`).

    No sort, no cache and no `toLocalIterator`: a global sort (`orderBy`) ran the preparation
    twice (once to sample the sort keys) and shuffled every prepared batch; reading back a
    partition of several prepared batches, or a cached one, held them whole in the driver's
    JVM; and `toLocalIterator` left about 10 MB in the driver's JVM for every 20,000-row
    slice it served, so a 1 GB driver ran out of heap after about 1.6 million rows. Nor the
    slices themselves in the tasks: shipped from the driver inside each task (the way before
    2026-12-07), eight slices of a wide extract at once ran a 1 GB driver's JVM out of heap
    as it serialised them, and Spark then waited for ever.
    """
    # Handed to Spark as Arrow, a record batch (so a partition) a split: Spark reads Arrow
    # into its rows directly, where Python tuples (`parallelize`) were unpickled in the JVM.
    frame = spark.createDataFrame(pa.Table.from_batches([
        pa.RecordBatch.from_arrays([pa.array([number], pa.int64()), pa.array([blob], pa.binary())],
                                   names=["batch", "payload"])
        for number, blob in shipped]))

    def run(chunks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        memo = HashMemo()  # spares re-hashing within a partition; changes no output
        on_executor, sealed = value_of(shared)
        for chunk in chunks:
            numbers = chunk.column("batch").to_pylist()
            blobs = chunk.column("payload").to_pylist()
            for number, blob in zip(numbers, blobs, strict=True):
                try:
                    for slice_number, prepared in work(number, blob, on_executor, memo):
                        yield pieces(slice_number, handed_back(prepared, sealed))
                except FileRefused as refused:
                    yield refusal(number, refused)

    done = frame.mapInArrow(run, OUT_SCHEMA).collect()
    for blob in reassembled(done, expected):
        yield taken_back(blob, handover)


_PIECES = pa.schema([("batch", pa.int64()), ("part", pa.int64()), ("parts", pa.int64()),
                     ("prepared", pa.binary()), ("refused", pa.string())])


def pieces(number: int, prepared: bytes, size: int = PIECE_BYTES) -> pa.RecordBatch:
    """One prepared slice as rows of at most `size` bytes, numbered, with their count."""
    starts = range(0, len(prepared), size)
    return pa.RecordBatch.from_pydict(
        {"batch": [number] * len(starts), "part": list(range(len(starts))),
         "parts": [len(starts)] * len(starts),
         "prepared": [prepared[start:start + size] for start in starts],
         "refused": [None] * len(starts)}, schema=_PIECES)


def refusal(number: int, refused: FileRefused) -> pa.RecordBatch:
    """What a task sends instead of its pieces when what it reads refuses the whole file
    (the reader's message: it names a row or column, never a value)."""
    return pa.RecordBatch.from_pydict({"batch": [number], "part": [0], "parts": [1],
                                       "prepared": [b""], "refused": [str(refused)]},
                                      schema=_PIECES)


def reassembled(rows: Iterable[Any], expected: list[int]) -> Iterator[bytes]:
    """Each slice's prepared bytes, joined from its pieces (rows with batch, part, parts,
    prepared, refused, in any order) and yielded in the order of `expected` as soon as each
    is whole; FileRefused when a task's reading refused the file, RuntimeError when a slice
    never comes whole."""
    expected = list(expected)
    waiting: dict[int, list[bytes | None]] = {}
    for row in rows:
        if row["refused"] is not None:
            raise FileRefused(row["refused"])
        parts = waiting.setdefault(row["batch"], [None] * row["parts"])
        parts[row["part"]] = row["prepared"]
        while expected and all(p is not None for p in waiting.get(expected[0], [None])):
            yield b"".join(p for p in waiting.pop(expected.pop(0)) if p is not None)
    if expected:
        raise RuntimeError(f"Spark returned no whole prepared batch for {len(expected)} "
                           f"batch(es) of the window")


def spark_file_preparer(spark: SparkSession, partitions: int = 2,
                        handover: Callable[[Job], Path] | None = None,
                        readable: Callable[[Path], bool] = lambda path: True,
                        inbound: Callable[[Job], Path] | None = None,
                        split_bytes: int = SPLIT_BYTES) -> FilePreparer:
    """What `pipeline.land` puts in `LandingContext.file_preparer` when HAVEN_ENGINE=spark:
    the file read and prepared by the tasks (`spark_file_prepared`). A file the executors
    cannot reach (`readable` says no: a cluster's driver's own folder) is first copied into
    `inbound(job)`, a folder in the data directory they mount, removed with the copy when
    the landing's batches are done (and by the next landing's recovery after a crash).
    `handover(job)`: the folder the landed rows come back through."""

    def prepare(path: Path, names: list[str], parquet: bool, batch_rows: int,
                stats: ReadStats, job: Job) -> Iterator[Prepared]:
        folder = None if handover is None else handover(job)
        if readable(path):
            return spark_file_prepared(spark, path, names, parquet, stats, job, partitions,
                                       split_bytes=split_bytes, handover=folder)
        if inbound is None:
            raise RuntimeError("the executors cannot read the file and no folder they can "
                               "read was given to copy it into")
        return _from_copy(inbound(job), path, lambda copy: spark_file_prepared(
            spark, copy, names, parquet, stats, job, partitions, split_bytes=split_bytes,
            handover=folder))

    return prepare


def _from_copy(folder: Path, path: Path,
               prepared: Callable[[Path], Iterator[Prepared]]) -> Iterator[Prepared]:
    """`prepared` of a copy of `path` in `folder` (made here, new, readable by this user
    only: the copy is the raw extract), removed at the end (RuntimeError if it cannot be)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700)
    try:
        copy = folder / f"extract{path.suffix.lower()}"
        with path.open("rb") as source, os.fdopen(
                os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        yield from prepared(copy)
    finally:
        remove(folder, "landing", "copy of the file could not be removed from the staging folder")
