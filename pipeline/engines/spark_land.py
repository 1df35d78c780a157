"""Landing's costly part on Spark: each batch checked and pseudonymised on an executor.

`spark_prepared` is the Spark counterpart of `linkage.landing.batches.prepared_batches`: the
same batches (read and numbered by `linkage.landing.reader`, so row numbers are the embedded
engine's), each prepared by the same partition-pure `prepare_batch` inside `mapInArrow`, and
handed back in file order. What spans the file (a record id repeated across batches, persons
already sealed, opt-out senders, the vault, the receipt, the audit event) stays with the
landing on the driver, against the embedded or PostgreSQL database, as today.

Keys: executors get only what preparing a batch uses, the `pseudonym` and `linkage` keys of
the landing's job (`executor_job`), in one broadcast destroyed when the landing's batches are
back. The vault and release keys never leave the driver (the vault is sealed there); no key
provider, key file or environment is shipped. See docs/scale.md, "Keys on executors".
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from linkage.landing.batches import Job, Prepared, prepare_batch
from linkage.landing.pseudonymise import HashMemo
from linkage.landing.reader import Batch

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

EXECUTOR_KEYS = ("pseudonym", "linkage")
ROW = "__haven_row"
OUT_SCHEMA = "batch long, prepared binary"


def executor_job(job: Job) -> Job:
    """The job as executors get it: only the keys preparing a batch uses (KeyError naming a
    missing purpose)."""
    missing = [p for p in EXECUTOR_KEYS if p not in job.keys]
    if missing:
        raise KeyError(f"landing job has no {', '.join(missing)} key")
    return replace(job, keys={p: job.keys[p] for p in EXECUTOR_KEYS})


def batch_bytes(batch: Batch) -> bytes:
    """A batch (its text columns and row numbers) as one Arrow IPC stream."""
    table = batch.table.append_column(ROW, batch.rows)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def batch_from_bytes(blob: bytes) -> Batch:
    """`batch_bytes` read back."""
    table = pa.ipc.open_stream(pa.py_buffer(blob)).read_all()
    rows = table.column(ROW).combine_chunks()
    return Batch(table.drop_columns([ROW]), rows)


def prepare_blob(blob: bytes, job: Job, memo: HashMemo) -> bytes:
    """One shipped batch prepared, as the landing will read it back (vault entries are
    decided by the landing from `persons`, as for the embedded pool's workers: not sent)."""
    prepared = prepare_batch(batch_from_bytes(blob), job, memo)
    if prepared.result is not None:
        prepared.result.vault_entries = ([], [])
    return pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL)


def spark_prepared(spark: SparkSession, batches: Iterable[Batch], job: Job,
                   partitions: int = 2, window: int | None = None,
                   prepare: Callable[[bytes, Job, HashMemo], bytes] = prepare_blob
                   ) -> Iterator[Prepared]:
    """Each batch prepared on Spark, yielded in file order (what `prepared_batches` yields).

    Batches go to Spark `window` at a time (default two per partition), so the driver holds a
    window of batches, not the file. This slice ships the driver's batches to the executors;
    reading the raw file on the executors (splits with row offsets) is the next step
    (docs/scale.md). `prepare`: what runs on a shipped batch (`prepare_blob`; a test may wrap
    it to count the calls).
    """
    window = window or 2 * partitions
    shared = spark.sparkContext.broadcast(executor_job(job))
    try:
        pending: list[tuple[int, bytes]] = []
        for number, batch in enumerate(batches):
            pending.append((number, batch_bytes(batch)))
            if len(pending) >= window:
                yield from _prepare_window(spark, pending, shared, prepare)
                pending = []
        if pending:
            yield from _prepare_window(spark, pending, shared, prepare)
    finally:
        shared.destroy()


def _prepare_window(spark: SparkSession, shipped: list[tuple[int, bytes]], shared: Any,
                    prepare: Callable[[bytes, Job, HashMemo], bytes]) -> Iterator[Prepared]:
    """One window of shipped batches, one batch per partition, prepared by `prepare` in
    `mapInArrow` all at once (one job, its results kept on the executors' disks), then read
    back a partition at a time, in file order.

    No sort and no shuffle: a global sort (`orderBy`) would run the preparation twice (once
    to sample the sort keys) and shuffle every prepared batch, and reading a partition of
    several prepared batches back held them all in the driver's JVM at once (100,000
    synthetic persons did not land with a 1 GB driver).
    """
    from pyspark import StorageLevel

    rdd = spark.sparkContext.parallelize(shipped, len(shipped))  # partition i: batch i
    frame = spark.createDataFrame(rdd, "batch long, payload binary")

    def run(chunks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        memo = HashMemo()  # spares re-hashing within a partition; changes no output
        on_executor = shared.value
        for chunk in chunks:
            numbers = chunk.column("batch").to_pylist()
            blobs = chunk.column("payload").to_pylist()
            for number, blob in zip(numbers, blobs, strict=True):
                yield pa.RecordBatch.from_pydict(
                    {"batch": [number], "prepared": [prepare(blob, on_executor, memo)]},
                    schema=pa.schema([("batch", pa.int64()), ("prepared", pa.binary())]))

    done = frame.mapInArrow(run, OUT_SCHEMA).persist(StorageLevel.DISK_ONLY)
    try:
        done.count()  # every batch of the window prepared, in parallel, once
        expected = [number for number, _ in shipped]
        waiting: dict[int, bytes] = {}
        for row in done.toLocalIterator():
            waiting[row["batch"]] = row["prepared"]
            while expected and expected[0] in waiting:
                blob = waiting.pop(expected.pop(0))
                yield pickle.loads(blob)  # noqa: S301 - made by this landing's executors
    finally:
        done.unpersist()


def spark_preparer(spark: SparkSession, partitions: int = 2
                   ) -> Callable[[Iterator[Batch], Job, int], Iterator[Prepared]]:
    """A drop-in for `prepared_batches(batches, job, workers)` that prepares on Spark (the
    `workers` hint is the embedded pool's and is not used): what the landing will take once
    it accepts a preparer (docs/scale.md, "Not done yet")."""

    def prepare(batches: Iterator[Batch], job: Job, workers: int) -> Iterator[Prepared]:
        return spark_prepared(spark, batches, job, partitions)

    return prepare
