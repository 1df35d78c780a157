"""What Haven broadcasts reaches the executors whatever it holds. With Spark's I/O encryption
on, PySpark 4.3 could not broadcast a value holding a NumPy array of 64 KB or more (pickle hands
its writer a `PickleBuffer`, which the writer cannot take): at 3,000,000 persons `haven link` on
Spark failed so. Every broadcast now goes through `spark_broadcast`."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from spark_fixtures import spark_fixture  # noqa: F401 - the shared `spark` session

from pipeline.engines.spark_broadcast import broadcast, value_of
from pipeline.engines.spark_link import spark_buckets


def test_a_value_holding_a_large_array_reaches_a_task(spark: Any) -> None:
    values = np.arange(1_000_000, dtype=np.int64)  # 8 MB
    assert spark.sparkContext.getConf().get("spark.io.encryption.enabled") == "true"
    shared = broadcast(spark, {"values": values, "name": "held"})
    try:
        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            found = value_of(shared)
            for batch in batches:
                yield pa.RecordBatch.from_pydict({
                    "id": batch.column("id"),
                    "total": pa.array([int(found["values"].sum())] * batch.num_rows),
                    "name": pa.array([found["name"]] * batch.num_rows)})

        rows = spark.range(2).mapInArrow(run, "id long, total long, name string").collect()
    finally:
        shared.destroy()
    assert {(r["total"], r["name"]) for r in rows} == {(int(values.sum()), "held")}


def test_linkage_buckets_whose_job_holds_a_large_array_run_on_spark(spark: Any) -> None:
    """The failing call itself: a bucket task whose job holds arrays as large as 3,000,000
    persons' (the register's columns)."""
    values = np.arange(500_000, dtype=np.int64) * 3
    task = functools.partial(operator.getitem, values)  # importable on the executors
    assert spark_buckets(spark, task, 2) == [0, 3]
