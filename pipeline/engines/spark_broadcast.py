"""Broadcasts that Spark can send with its I/O encryption on: the value pickled here, sent as
one bytes object, unpickled by the task.

With `spark.io.encryption.enabled` (required: `spark_protections`) PySpark streams a broadcast
to the JVM through a writer that takes only bytes, but pickle (protocol 5) hands a writer a
large NumPy array's buffer as it is (`pickle.PickleBuffer`), and the broadcast fails (PySpark
4.3: "object of type 'pickle.PickleBuffer' has no len()") for any value holding an array of
64 KB or more. At 3,000,000 persons linkage's bucket job did, and `haven link` on Spark failed.
Pickled here, into memory, the value reaches PySpark as bytes, which its writer takes.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from governance import core_dumps

if TYPE_CHECKING:  # pyspark is the optional `spark` extra
    from pyspark import Broadcast
    from pyspark.sql import SparkSession


def broadcast(spark: SparkSession, value: Any) -> Broadcast[bytes]:
    """`value` broadcast to the executors as its pickle (read it there with `value_of`)."""
    return spark.sparkContext.broadcast(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def value_of(shared: Broadcast[bytes]) -> Any:
    """The value a `broadcast` carries, as the driver had it (in a task on an executor). The
    task's Python worker first sets its own core-file limit to zero, for good: what it is
    about to hold (a landing's keys, rows) must never reach a core file, whatever started it
    (a reviewer's `PYSPARK_PYTHON` wrapper raised the limit, and a worker's core held both
    keys)."""
    core_dumps.forbid(hard=True)
    return pickle.loads(shared.value)  # noqa: S301 - pickled by this application's driver
