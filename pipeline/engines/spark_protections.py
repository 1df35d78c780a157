"""What a Spark session must and must not be allowed to do before Haven hands it a key or a row.

Settings (`check_settings`, on Haven's own `HAVEN_SPARK_CONF_*`) and a running session
(`require_protections`: a notebook's, a cluster's, or one Haven just started) are both
checked, and SparkRefused says which rule a session breaks, never the value it found (a value
can be a secret put in the wrong setting):

- `REQUIRED`: Spark's I/O encryption, authentication and network encryption (AES-GCM, the
  second handshake, no SASL fall-back). Without them Spark writes broadcasts (a landing's keys)
  and raw slices to its local folders in clear, answers anyone who reaches its ports, and
  sends keys and rows between its processes in clear or open to tampering.
- No memory on disk: no heap dump (`HEAP_DUMPS`, `DUMP_WORDS`), no command run on a JVM error
  (`-XX:OnError`, `-XX:OnOutOfMemoryError`: `gcore %p` writes a core file whatever the core
  limit), no debugger, agent or remote JMX, and no driver JVM whose core-file limit is not
  zero (a `spark-env.sh` can raise it).
- Nothing served: Spark's file server answers a stream request on the driver's port before
  authentication (Spark 4.3), so neither the settings nor a running session may have jars,
  files or archives to serve; a local master's driver listens on loopback alone; and the
  shared secret is never a setting (settings reach the JVM's command line, which every local
  user can read in `ps`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyspark is the optional `spark` extra
    from pyspark.sql import SparkSession


class SparkUnavailable(RuntimeError):
    """The Spark engine was asked for but PySpark or a Java runtime is missing (says which)."""


class SparkRefused(SparkUnavailable):
    """A Spark session (or its settings) would let keys or identifiers out: says which rule."""


@dataclass(frozen=True)
class Protection:
    """A Spark setting Haven requires: its value, Spark's own default (what a session started
    without it has), and what Spark would do without it (said when Haven refuses)."""

    value: str
    default: str
    without: str


_CLEAR = "send keys and identifiers between its processes"
REQUIRED = {
    "spark.io.encryption.enabled": Protection(
        "true", "false", "write keys and identifiers to its local folders in clear"),
    "spark.authenticate": Protection(
        "true", "false", "answer anyone who reaches its ports, without a secret"),
    "spark.network.crypto.enabled": Protection("true", "false", f"{_CLEAR} in clear"),
    "spark.network.crypto.saslFallback": Protection(
        "false", "true", "let a connection whose handshake fails (a man in the middle can "
        f"make it fail) fall back to SASL and {_CLEAR} in clear"),
    "spark.network.crypto.cipher": Protection(
        "AES/GCM/NoPadding", "AES/CTR/NoPadding",
        f"{_CLEAR} encrypted without an integrity check (a man in the middle could flip bits)"),
    "spark.network.crypto.authEngineVersion": Protection(
        "2", "1", "authenticate its connections with the first, weaker handshake"),
}
# HotSpot options that write a JVM's memory to disk in clear (a heap dump holds a landing's raw
# slices and, while it runs, its broadcast keys: Spark's I/O encryption does not cover it). A
# common production flag (`-XX:+HeapDumpOnOutOfMemoryError`), and drivers have run out of heap.
HEAP_DUMPS = ("HeapDumpOnOutOfMemoryError", "HeapDumpBeforeFullGC", "HeapDumpAfterFullGC")
# Commands a JVM runs on an error or on running out of memory: any of them can copy its memory
# out (`gcore %p`, `jcmd %p GC.heap_dump`), and the core-file limit does not stop them.
ERROR_COMMANDS = ("OnError", "OnOutOfMemoryError")
# Environment variables a JVM reads its options from, wherever a setting hands them to one
# (`spark.executorEnv.*`, `spark.yarn.appMasterEnv.*`, `spark.kubernetes.driverEnv.*`).
OPTION_VARIABLES = ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS")
JAVA_OPTIONS = (*(f"spark.{side}.{kind}JavaOptions"
                   for side in ("driver", "executor") for kind in ("extra", "default")),
                *(f"spark.executorEnv.{name}" for name in OPTION_VARIABLES))
# Other ways Java options let a JVM's memory out: dump commands, error commands, a debugger or
# any other agent (`-agentlib:jdwp` lets whoever connects read memory), remote JMX (a heap dump
# on request), and options read from a file Haven cannot see (`-XX:VMOptionsFile`, `@file`).
DUMP_WORDS = ("heap_dump", "dumpheap", "jmap", "gcore", "-xx:onerror", "-xx:onoutofmemoryerror",
              "-agentlib", "-agentpath", "-javaagent", "-xrunjdwp", "jmxremote",
              "vmoptionsfile", "-xx:flags=",
              # undoing `CRASH_OPTIONS` where a setting's options come after Haven's
              # (`_JAVA_OPTIONS`, read after the command line, in an executor's environment),
              # or sending a crash's report elsewhere
              "-xx:+createcoredumponcrash", "-xx:-suppressfatalerrormessage", "-xx:errorfile",
              "errorfiletostdout", "errorfiletostderr")
# Added to every JVM's options: a crash writes no core file even where the limit allows one,
# and no error report (`hs_err_pid<pid>.log` in the working folder: the JVM's command line,
# its registers and a few hundred bytes of the crashing thread's stack, which may hold a
# slice's raw values); the crash is still seen (the JVM exits, Spark reports it).
NO_CORE = "-XX:-CreateCoredumpOnCrash"
ERROR_REPORT_FLAG = "SuppressFatalErrorMessage"
NO_ERROR_REPORT = f"-XX:+{ERROR_REPORT_FLAG}"
CRASH_OPTIONS = (NO_CORE, NO_ERROR_REPORT)
# What Spark's file server would serve to anyone who reaches the driver's port.
SERVED = ("spark.jars", "spark.jars.packages", "spark.files", "spark.submit.pyFiles",
          "spark.archives")
SECRET = "spark.authenticate.secret"
LOCAL_MASTER = re.compile(r"local(\[.*\])?$")
LOOPBACK = "127.0.0.1"


def java_option_keys(conf: dict[str, str]) -> list[str]:
    """Every setting of `conf` that gives a JVM options: `JAVA_OPTIONS`, and any other key
    ending in `JavaOptions` (the YARN application master's) or naming `OPTION_VARIABLES`."""
    return sorted({*JAVA_OPTIONS, *(key for key in conf if key.endswith("JavaOptions")
                                    or key.rsplit(".", 1)[-1] in OPTION_VARIABLES)})


def protected_conf() -> dict[str, str]:
    """The `REQUIRED` settings with the values Haven requires."""
    return {key: protection.value for key, protection in REQUIRED.items()}


def _same(found: str, value: str) -> bool:
    return found.strip().lower() == value.lower()


def check_settings(conf: dict[str, str], master: str) -> dict[str, str]:
    """`conf` (Haven's defaults and the `HAVEN_SPARK_CONF_*` settings) with `REQUIRED` set, no
    core files from any JVM, and a local master's driver on the loopback address; SparkRefused
    naming a setting that undoes a protection, serves files or holds the shared secret."""
    conf = dict(conf)
    for key, need in REQUIRED.items():
        if not _same(conf.get(key, need.value), need.value):
            raise SparkRefused(f"HAVEN_SPARK_CONF sets {key} to a value other than "
                               f"{need.value}: refused, because Spark would then "
                               f"{need.without}")
        conf[key] = need.value
    for key in java_option_keys(conf):
        refuse_memory_on_disk(key, conf.get(key, ""))
    for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        conf[key] = " ".join([conf.get(key, ""), *CRASH_OPTIONS]).strip()  # last: they win
    refuse_served(conf, "HAVEN_SPARK_CONF sets")
    if SECRET in conf:
        raise SparkRefused(f"HAVEN_SPARK_CONF sets {SECRET}: refused, because settings reach "
                           "the JVM's command line, which any local user can read; put the "
                           "secret in the spark-defaults.conf of the driver's Spark "
                           "(SPARK_CONF_DIR, readable by the service account alone)")
    if LOCAL_MASTER.match(master):  # nothing but this host's processes need the ports
        for key in ("spark.driver.bindAddress", "spark.driver.host"):
            if conf.setdefault(key, LOOPBACK) != LOOPBACK:
                raise SparkRefused(f"HAVEN_SPARK_CONF sets {key} for a local master: refused, "
                                   f"because only this host's processes need the driver's "
                                   f"ports (it listens on {LOOPBACK})")
    return conf


def refuse_served(conf: dict[str, str], where: str) -> None:
    """SparkRefused when `conf` has Spark's file server serve anything (`SERVED`)."""
    served = [key for key in SERVED if (conf.get(key) or "").strip()]
    if served:
        raise SparkRefused(f"{where} {served[0]}: refused, because Spark's file server hands "
                           "what it serves to a client that has not authenticated (Haven's "
                           "stage code needs no jars or files)")


def refuse_memory_on_disk(key: str, options: str) -> None:
    """SparkRefused when the JVM options `options` (of setting `key`) ask for a heap dump, a
    crash's core file or error report, or a command run on an error."""
    found = [f"-XX:+{flag}" for flag in HEAP_DUMPS if f"+{flag}" in options]
    found += [word for word in DUMP_WORDS if word in options.lower()]
    found += [token for token in options.split() if token.startswith("@")]  # an argument file
    if found:
        raise SparkRefused(f"{key} turns on {found[0]}: refused, because a heap dump, a "
                           "crash's core or error report, or a command run on an error writes "
                           "the JVM's memory (raw extract rows, the landing's keys) to disk "
                           "in clear")


def require_protections(spark: SparkSession) -> None:
    """SparkRefused unless `spark` was started with every `REQUIRED` setting (settings Spark
    reads only at start, so a running session without one cannot be put right: it must be
    restarted) and its driver JVM writes no memory to disk (`driver_memory_rules`)."""
    conf = spark.sparkContext.getConf()
    settings = dict(conf.getAll()) if hasattr(conf, "getAll") else dict(conf)
    for key, need in REQUIRED.items():
        if not _same(settings.get(key) or need.default, need.value):
            raise SparkRefused(f"the running Spark session does not have {key}={need.value}: "
                               f"Haven refuses to use it, because Spark would {need.without}; "
                               f"start the session with {key}={need.value}")
    for key in java_option_keys(settings):  # executors' JVMs, as the session will start them
        refuse_memory_on_disk(key, settings.get(key) or "")
    refuse_served(settings, "the running Spark session has")
    broken = driver_memory_rules(spark)
    if broken:
        raise SparkRefused(f"the Spark driver's JVM {broken}: refused, because its memory "
                           "(raw extract rows, the landing's keys) would reach disk in clear")


def driver_memory_rules(spark: SparkSession) -> str | None:
    """What the driver's JVM does that could write its memory to disk, as the JVM itself
    reports it (however it was told: its options, JAVA_TOOL_OPTIONS, spark-defaults,
    spark-env.sh); None when nothing. A JVM that cannot be asked breaks the rule too (another
    vendor's: OpenJ9 dumps on running out of memory by default). A stand-in session without a
    JVM has nothing to ask."""
    jvm = getattr(spark.sparkContext, "_jvm", None)
    if jvm is None:
        return None
    try:
        bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
            jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
        options = {flag: str(bean.getVMOption(flag).getValue())
                   for flag in (*HEAP_DUMPS, *ERROR_COMMANDS, ERROR_REPORT_FLAG)}
        pid = int(jvm.java.lang.ProcessHandle.current().pid())
    except Exception:  # noqa: BLE001 - not HotSpot: nothing to ask
        return ("cannot be asked whether it writes heap dumps (it has no HotSpot diagnostic "
                "bean); run Spark on an OpenJDK (HotSpot) Java runtime")
    dumps = [flag for flag in HEAP_DUMPS if options[flag].lower() == "true"]
    if dumps:
        return f"runs with -XX:+{dumps[0]}"
    commands = [flag for flag in ERROR_COMMANDS if options[flag].strip()]
    if commands:
        return f"runs a command on an error (-XX:{commands[0]})"
    if options[ERROR_REPORT_FLAG].lower() != "true":
        return (f"would write an error report of its registers and stack on a crash (start "
                f"it with {NO_ERROR_REPORT}; `_JAVA_OPTIONS` overrides the command line)")
    limit = core_limit(pid)
    if limit != "0":
        return (f"may write a core file (its core-file limit is {limit or 'unknown'}; a "
                "spark-env.sh can raise it)")
    return None


def core_limit(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The soft core-file limit of process `pid` ("0", a size, "unlimited"); None when it
    cannot be read (not Linux, or not this host's process)."""
    try:
        limits = (proc / str(pid) / "limits").read_text()
    except OSError:
        return None
    for row in limits.splitlines():
        if row.startswith("Max core file size"):
            return row.split()[4]
    return None

