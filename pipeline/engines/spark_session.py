"""A Spark session made from Haven's settings, passed in to whatever runs on Spark.

There is no global session: `spark_session(settings)` builds one from `HAVEN_SPARK_MASTER` and
`HAVEN_SPARK_CONF_*` (governance.settings) and the caller hands it down and stops it. Haven's
own defaults keep a local session small (a 1 GB driver, few shuffle partitions, no UI); any
`HAVEN_SPARK_CONF_*` value wins over them. Executors run this interpreter (`sys.executable`)
unless the cluster says otherwise, so they import the same stage code.

Four settings are not defaults but conditions (`REQUIRED`). Spark's I/O encryption: without it
Spark writes what it moves to its local folders in clear: PySpark pickles a broadcast (a
landing's pseudonymisation and linkage keys) into a file there, hands driver data to the JVM
through another (a landing's raw slices, NHS numbers and names), and the block manager spills
task results to disk. Spark's authentication and network encryption, with no fall-back to
unencrypted SASL: without them anyone who can reach the driver's or an executor's port (every
Spark process listens on one, even in local mode) can talk to it unauthenticated, and blocks (a
broadcast of keys, shuffled rows) cross the network in clear. Haven sets all four, refuses a
setting that undoes one, and refuses a running session (a notebook's, a cluster's) started
without them. It refuses JVMs that would write a heap dump too (`HEAP_DUMPS`): a dump is the
JVM's memory, raw rows and keys in clear.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from governance import core_dumps
from governance.settings import Settings

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


@dataclass(frozen=True)
class Protection:
    """A Spark setting Haven requires: its value, Spark's own default (what a session started
    without it has), and what Spark would do without it (said when Haven refuses)."""

    value: str
    default: str
    without: str


# I/O encryption: what Spark writes to local disk (broadcasts, blocks, spills, PySpark's
# hand-over files) under a key each application makes in memory. Authentication: every RPC and
# block connection proves it holds the application's secret (local, YARN and Kubernetes masters
# make one; a standalone cluster is given one, `spark.authenticate.secret`). Network encryption:
# what crosses between the driver and executors (tasks, broadcasts, shuffle blocks) is encrypted,
# with no fall-back to SASL, whose connections are not encrypted by default: a client whose
# handshake fails (a man in the middle can make it fail) would otherwise retry over SASL.
REQUIRED = {
    "spark.io.encryption.enabled": Protection(
        "true", "false", "write keys and identifiers to its local folders in clear"),
    "spark.authenticate": Protection(
        "true", "false", "answer anyone who reaches its ports, without a secret"),
    "spark.network.crypto.enabled": Protection(
        "true", "false", "send keys and identifiers between its processes in clear"),
    "spark.network.crypto.saslFallback": Protection(
        "false", "true", "let a connection whose handshake fails fall back to SASL, which "
        "sends keys and identifiers in clear"),
}


def protected_conf() -> dict[str, str]:
    """The `REQUIRED` settings with the values Haven requires."""
    return {key: protection.value for key, protection in REQUIRED.items()}
# HotSpot options that write a JVM's memory to disk in clear (a heap dump holds a landing's raw
# slices and, while it runs, its broadcast keys: Spark's I/O encryption does not cover it). A
# common production flag (`-XX:+HeapDumpOnOutOfMemoryError`), and drivers have run out of heap.
HEAP_DUMPS = ("HeapDumpOnOutOfMemoryError", "HeapDumpBeforeFullGC", "HeapDumpAfterFullGC")
JAVA_OPTIONS = (*(f"spark.{side}.{kind}JavaOptions"
                   for side in ("driver", "executor") for kind in ("extra", "default")),
                *(f"spark.executorEnv.{name}"  # what executors' JVMs read from their environment
                  for name in ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS")))
# Other ways Java options ask for a dump: a command run on an error (`jcmd %p GC.heap_dump`,
# `jmap`), or options read from a file Haven cannot see.
DUMP_WORDS = ("heap_dump", "dumpheap", "jmap", "vmoptionsfile", "-xx:flags=")


class SparkUnavailable(RuntimeError):
    """The Spark engine was asked for but PySpark or a Java runtime is missing (says which)."""


class SparkRefused(SparkUnavailable):
    """A Spark session (or its settings) would write keys or identifiers to disk in clear."""


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
    interpreter), then the settings' own, then `REQUIRED` (SparkRefused naming a setting that
    would turn one off)."""
    conf = {**DEFAULTS, "spark.pyspark.python": sys.executable, **dict(settings.spark_conf)}
    for key, need in REQUIRED.items():
        if conf.get(key, need.value).strip().lower() != need.value:
            raise SparkRefused(f"HAVEN_SPARK_CONF sets {key}={conf[key]}: refused, because "
                               f"Spark would then {need.without} ({key} must be {need.value})")
        conf[key] = need.value
    for key in JAVA_OPTIONS:
        _refuse_heap_dumps(key, conf.get(key, ""))
    return conf


def _refuse_heap_dumps(key: str, options: str) -> None:
    """SparkRefused when the JVM options `options` (of setting `key`) turn a heap dump on."""
    dumps = [f"-XX:+{flag}" for flag in HEAP_DUMPS if f"+{flag}" in options]
    dumps += [word for word in DUMP_WORDS if word in options.lower()]
    if dumps:
        raise SparkRefused(f"{key} turns on {dumps[0]}: refused, because a heap dump "
                           "writes the JVM's memory (raw extract rows, the landing's keys) "
                           "to disk in clear")


def require_protections(spark: SparkSession) -> None:
    """SparkRefused unless `spark` was started with every `REQUIRED` setting (settings Spark
    reads only at start, so a running session without one cannot be put right: it must be
    restarted)."""
    conf = spark.sparkContext.getConf()
    for key, need in REQUIRED.items():
        found = (conf.get(key) or need.default).strip().lower()
        if found != need.value:
            raise SparkRefused(f"the running Spark session has {key}={found}: Haven refuses to "
                               f"use it, because Spark would {need.without}; start the "
                               f"session with {key}={need.value}")
    for key in JAVA_OPTIONS:  # executors' JVMs, as the session will start them
        _refuse_heap_dumps(key, conf.get(key) or "")
    dumps = driver_heap_dumps(spark)
    if dumps is None:
        raise SparkRefused("Haven cannot tell whether the Spark driver's JVM writes heap dumps "
                           "(it has no HotSpot diagnostic bean to ask): refused; run Spark on "
                           "an OpenJDK (HotSpot) Java runtime")
    if dumps:
        raise SparkRefused(f"the Spark driver's JVM runs with -XX:+{dumps[0]} (from its "
                           "options, JAVA_TOOL_OPTIONS or spark-defaults): refused, because a "
                           "heap dump writes its memory (raw extract rows, the landing's keys) "
                           "to disk in clear")


def driver_heap_dumps(spark: SparkSession) -> list[str] | None:
    """The `HEAP_DUMPS` options the driver's JVM is running with, as HotSpot reports them
    (however they were given); None when there is no HotSpot diagnostic bean to ask (another
    JVM, e.g. OpenJ9, which dumps on running out of memory by default). A session without a
    JVM of its own here (a stand-in) has nothing to ask: empty."""
    jvm = getattr(spark.sparkContext, "_jvm", None)
    if jvm is None:
        return []
    try:
        bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
            jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
        return [flag for flag in HEAP_DUMPS
                if str(bean.getVMOption(flag).getValue()).lower() == "true"]
    except Exception:  # noqa: BLE001 - not HotSpot: nothing to ask
        return None


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
    process (a notebook's, a cluster job's, the tests') is used and left running. Haven's
    settings are checked either way (`spark_conf`): a setting it refuses is refused even when
    a running session means it would not be applied."""
    spark_conf(settings)
    running = None
    if missing() is None:
        from pyspark.sql import SparkSession

        running = SparkSession.getActiveSession()
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
