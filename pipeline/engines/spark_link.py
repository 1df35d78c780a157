"""The person index's probabilistic step on Spark: each bucket of persons matched on an executor.

The register's profiles are held in buckets of persons (`linkage.profile_store`: an Arrow
IPC file a bucket, under the link's scratch folder in the data directory), and everything the
matcher decides per person is decided within a bucket (`linkage.index_matcher`). So a bucket
is a partition: `bucket_mapper(spark)` is a drop-in for `index_matcher.in_turn` that runs
each bucket's task (finding the training pairs of one person, or scoring the query rows'
candidate pairs and keeping each row's best) in a Spark task of its own, with what the tasks
share (`BucketJob`: the query rows' keyed encodings, the fitted model, the register's key
counts) in one broadcast. The results come back in bucket order, so the driver combines them
exactly as the embedded engine does: the same links, review pairs and quality figures.

What stays on the driver: the survey of the map, writing the buckets, the register's key
tallies (one pass over the buckets, cached per store), the random pairs and the fit of the
model (a fixed number of pairs), combining the buckets' bests, and writing the map.

Keys: none is sent. The query rows and profiles are keyed encodings already (landing made
them); the person keys of the map are made on the driver. Executors must read the bucket
files: a local master shares this machine's disk; on a cluster the data directory (and so its
scratch folder) must be on storage every executor mounts (docs/scale.md).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from linkage.index_matcher import BucketMap, in_order
from pipeline.engines.spark_broadcast import broadcast, value_of
from pipeline.engines.spark_land import OUT_SCHEMA, pieces, reassembled

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_buckets(spark: SparkSession, task: Callable[[int], Any], count: int) -> list[Any]:
    """[task(0), ..., task(count - 1)], each run in a Spark task of its own (one partition a
    bucket), collected in bucket order. `task` (a `functools.partial` of a bucket task and its
    `BucketJob`) goes to the executors in one broadcast, destroyed when the results are back.
    A store of one bucket (a register small enough to hold in memory) is matched here."""
    if count <= 1:
        return in_order(task, count)
    shared = broadcast(spark, task)
    try:
        numbers = spark.sparkContext.parallelize([(i,) for i in range(count)], count)
        frame = spark.createDataFrame(numbers, "bucket long")

        def run(chunks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            on_executor = value_of(shared)
            for chunk in chunks:
                for number in chunk.column("bucket").to_pylist():
                    found = on_executor(number)
                    yield pieces(number, pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL))

        done = frame.mapInArrow(run, OUT_SCHEMA).collect()
        return [pickle.loads(blob)  # noqa: S301 - made by this link's executors
                for blob in reassembled(done, list(range(count)))]
    finally:
        shared.destroy()


def bucket_mapper(spark: SparkSession) -> BucketMap:
    """`index_matcher`'s `map_buckets` on Spark: what `pipeline.link` passes to the matcher
    and the quality estimate when HAVEN_ENGINE=spark."""

    def run(task: Callable[[int], Any], count: int) -> list[Any]:
        return spark_buckets(spark, task, count)

    return run
