"""The person index's probabilistic step on Spark: each bucket of persons matched on an executor.

The register's profiles are held in buckets of persons (`linkage.profile_store`: an Arrow
IPC file a bucket, under the link's scratch folder in the data directory), and everything the
matcher decides per person is decided within a bucket (`linkage.index_matcher`). So a bucket
is a partition: `bucket_mapper(spark)` is a drop-in for `index_matcher.in_turn` that runs
each bucket's task (finding the training pairs of one person, or scoring the query rows'
candidate pairs and keeping each row's best) in a Spark task of its own, with what the tasks
share (`BucketJob`: the query rows' keyed encodings, the fitted model, the register's key
counts) in one broadcast. The results come back in bucket order, so the driver combines them
exactly as the embedded engine does: the same links, review pairs and quality figures. They
come back through sealed files in the link's scratch workspace, read one bucket at a time, so
the driver holds one bucket's results however many there are (`spark_buckets`).

What stays on the driver: the survey of the map, writing the buckets, the register's key
tallies (one pass over the buckets, cached per store), the random pairs and the fit of the
model (a fixed number of pairs), combining the buckets' bests, and writing the map.

Keys: none of Haven's is sent. The query rows and profiles are keyed encodings already (landing
made them); the person keys of the map are made on the driver. The one key in the broadcast
seals the call's hand-over files: made for that call, in memory only, of no use after it.
Executors must read the bucket files and write the hand-over's: a local master shares this
machine's disk; on a cluster the data directory (and so its scratch folder) must be on
storage every executor mounts (docs/scale.md).
"""

from __future__ import annotations

import pickle
import secrets
import shutil
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from linkage.index_matcher import BucketMap, in_order
from pipeline.engines.spark_broadcast import broadcast, value_of
from pipeline.engines.spark_handover import Handover, remove, seal, unsealed
from pipeline.engines.spark_land import OUT_SCHEMA, pieces, reassembled
from pipeline.engines.spark_protections import require_protections

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_buckets(spark: SparkSession, task: Callable[[int], Any], count: int,
                  handover: Path | None = None) -> Iterable[Any]:
    """task(0), ..., task(count - 1), each run in a Spark task of its own (one partition a
    bucket), given in bucket order. `task` (a `functools.partial` of a bucket task and its
    `BucketJob`) goes to the executors in one broadcast, destroyed when the job is done.
    A store of one bucket (a register small enough to hold in memory) is matched here.

    Without `handover` every result comes back through Spark and is held at once: a list.
    With it (a folder to make, which executors and driver share: in the stage's scratch
    workspace) each task leaves its result there sealed (`spark_handover`) and the job
    returns only the files' names; the results are then read one at a time as the caller
    comes to them, each file removed as it is read, and the folder when the last is (or the
    caller stops). A caller that folds the results (the matcher keeps each query row's best
    pair) so holds one bucket's at a time, as on the embedded engine, however many buckets
    and query rows there are, with every bucket still matched at once on the executors."""
    if count <= 1:
        return in_order(task, count)
    if handover is not None:
        require_protections(spark)  # the sealing key goes in the broadcast: encrypted
    sealed = Handover.made(handover) if handover is not None else None
    shared = broadcast(spark, (task, sealed))
    try:
        numbers = spark.sparkContext.parallelize([(i,) for i in range(count)], count)
        frame = spark.createDataFrame(numbers, "bucket long")

        def run(chunks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            on_executor, leave_in = value_of(shared)
            for chunk in chunks:
                for number in chunk.column("bucket").to_pylist():
                    found = pickle.dumps(on_executor(number), protocol=pickle.HIGHEST_PROTOCOL)
                    if leave_in is not None:
                        found = seal(leave_in, found, f".bucket-{number}").encode()
                    yield pieces(number, found)

        done = list(reassembled(frame.mapInArrow(run, OUT_SCHEMA).collect(),
                                list(range(count))))
    except BaseException:
        if handover is not None:
            remove(handover, "link")
        raise
    finally:
        shared.destroy()
    if sealed is None:
        return [pickle.loads(blob)  # noqa: S301 - made by this link's executors
                for blob in done]
    assert handover is not None
    results = _read_back(sealed, handover, [name.decode() for name in done])
    # a caller that never starts reading: the folder goes when the results are dropped
    weakref.finalize(results, shutil.rmtree, handover, True)
    return results


def _read_back(sealed: Handover, folder: Path, names: list[str]) -> Iterator[Any]:
    """Each bucket's result from its sealed file, in bucket order; the folder removed when
    the last is read or the caller stops (or, never started, drops the results). RuntimeError
    for a file not sealed by this call's tasks: it is refused before it is unpickled."""
    try:
        for name in names:
            yield pickle.loads(unsealed(sealed, name, "this link"))  # noqa: S301 - sealed above
    finally:
        remove(folder, "link")


def handover_in(scratch: Path) -> Path:
    """A new folder's path in `scratch` for one call's results: never one an earlier call
    used (its results, dropped unread, remove their folder whenever they are collected)."""
    return scratch / f"buckets-{secrets.token_hex(8)}"


def bucket_mapper(spark: SparkSession, scratch: Path | None = None) -> BucketMap:
    """`index_matcher`'s `map_buckets` on Spark: what `pipeline.link` passes to the matcher
    and the quality estimate when HAVEN_ENGINE=spark. With `scratch` (a folder executors and
    driver share) each call's results come back through a folder of their own in it
    (`spark_buckets`' `handover`), read one bucket at a time."""
    def run(task: Callable[[int], Any], count: int) -> Iterable[Any]:
        return spark_buckets(spark, task, count, None if scratch is None else handover_in(scratch))

    return run
