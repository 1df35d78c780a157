"""A Spark session made from Haven's settings, passed in to whatever runs on Spark.

There is no global session: `spark_session(settings)` builds one from `HAVEN_SPARK_MASTER` and
`HAVEN_SPARK_CONF_*` (governance.settings) and the caller hands it down and stops it. Haven's
own defaults keep a local session small (a 1 GB driver, few shuffle partitions, no UI); any
`HAVEN_SPARK_CONF_*` value wins over them. Executors run this interpreter (`sys.executable`)
unless the cluster says otherwise, so they import the same stage code.

Some settings are not defaults but conditions, and some sessions are refused whatever their
settings (`spark_protections`): every session Haven starts or uses encrypts what it writes and
sends, authenticates every connection, and writes no JVM memory to disk.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from governance import core_dumps
from governance.settings import Settings
from pipeline.engines.spark_protections import (
    SparkRefused,
    SparkUnavailable,
    check_settings,
    require_protections,
)

if TYPE_CHECKING:  # pyspark is the optional `spark` extra
    from pyspark.sql import SparkSession

KEY_PREFIX = "HAVEN_KEY_"
DEFAULTS = {
    "spark.driver.memory": "1g",
    "spark.sql.shuffle.partitions": "4",
    "spark.ui.enabled": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
}


def missing() -> str | None:
    """Why a Spark session cannot start here (None when it can): PySpark or Java absent."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "PySpark is not installed (pip install 'haven[spark]')"
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        return "no Java runtime (install openjdk-17-jre-headless or set JAVA_HOME)"
    return None


def spark_conf(settings: Settings) -> dict[str, str]:
    """The configuration a session gets: Haven's small defaults (Python workers on this
    interpreter), then the settings' own, then the protections (`check_settings`:
    SparkRefused naming a setting Haven refuses)."""
    return check_settings({**DEFAULTS, "spark.pyspark.python": sys.executable,
                           **dict(settings.spark_conf)}, settings.spark_master)


def spark_session(settings: Settings, app_name: str = "haven") -> SparkSession:
    """A new (or the running) Spark session on `settings.spark_master`; SparkUnavailable when
    PySpark or Java is missing; SparkRefused for settings Haven refuses (checked first)."""
    conf = spark_conf(settings)
    reason = missing()
    if reason:
        raise SparkUnavailable(f"HAVEN_ENGINE=spark cannot start: {reason}")
    from pyspark.sql import SparkSession

    # PySpark started in-process (not by spark-submit) takes its Python workers' interpreter
    # from this variable alone; without it a local worker runs a `python3` lacking Haven's
    # packages. Set only when the deployment has not chosen one.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    from pyspark import SparkContext

    ours = SparkContext._active_spark_context is None  # else getOrCreate hands back another's
    core_dumps.forbid()  # before the JVM starts: it and its Python workers inherit the limit
    with keys_withheld(os.environ):
        spark = builder.getOrCreate()
    try:
        require_protections(spark)  # what the JVM was started with, however it was given
    except SparkRefused:
        if ours:
            spark.stop()
        raise
    return spark


@contextmanager
def keys_withheld(environ: MutableMapping[str, str]) -> Iterator[None]:
    """`environ` without Haven's key variables (`HAVEN_KEY_*`) while the Spark JVM starts,
    then as it was. The JVM copies the environment it starts in, and local executors' Python
    workers copy the JVM's: without this every worker would hold every key (the vault's and
    the release key too). Executors get the keys a job needs in its broadcast, nothing else."""
    withheld = {name: environ.pop(name) for name in list(environ)
                if name.startswith(KEY_PREFIX)}
    try:
        yield
    finally:
        environ.update(withheld)


@contextmanager
def session(settings: Settings, app_name: str = "haven") -> Iterator[SparkSession]:
    """A session for one command, stopped when it is done; a session already running in this
    process (a notebook's, a cluster job's, the tests', another thread's) is used and left
    running. Haven's
    settings are checked either way (`spark_conf`): a setting it refuses is refused even when
    a running session means it would not be applied."""
    spark_conf(settings)
    running = None
    if missing() is None:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession

        running = SparkSession.getActiveSession()  # this thread's
        if running is None and SparkContext._active_spark_context is not None:
            running = SparkSession.builder.getOrCreate()  # another thread's: not ours to stop
    if running is not None:
        require_protections(running)
    spark = running or spark_session(settings, app_name)
    try:
        yield spark
    except BaseException:
        if running is None:
            # A JVM that died (a driver out of memory) cannot be stopped either: the stage's
            # own error is the one to see, not the failed stop's (which used to replace it).
            with suppress(Exception):
                spark.stop()
        raise
    if running is None:
        spark.stop()


def task_cpus() -> int | None:
    """The CPUs Spark gave the task this code runs in (`spark.task.cpus`, 1 by default), or
    None outside a Spark task: what a task's DuckDB may use, so the tasks an executor runs
    side by side do not each take every core of the host."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    context = TaskContext.get()
    return max(1, int(context.cpus())) if context is not None else None
