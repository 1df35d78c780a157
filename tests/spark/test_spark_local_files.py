"""What a landing on Spark leaves in Spark's own local folders: no key and no NHS number in
clear. Without Spark's I/O encryption, PySpark pickled the landing's broadcast (the
pseudonymisation and linkage keys) into a file under `spark.local.dir` and, before executors
read the file themselves, handed the raw slices to the JVM through another; Haven's sessions
now encrypt those files, a setting that turns that off is refused, and so is a running session
started without it. A JVM that would write a heap dump (its memory: keys, and rows the tasks
hand back) is refused too, however it was told to."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spark_fixtures import spark_fixture  # noqa: F401 - the shared `spark` session

from factories import rows_for, write_extract
from governance.keys import Key
from governance.settings import Settings
from linkage.landing.batches import Job, Prepared
from linkage.landing.contracts import CONTRACTS
from linkage.landing.reader import ReadStats
from pipeline.engines.spark_land import spark_file_prepared
from pipeline.engines.spark_protections import (
    JAVA_OPTIONS,
    NO_CORE,
    NO_ERROR_REPORT,
    SparkRefused,
    core_limit,
    driver_memory_rules,
    protected_conf,
    require_protections,
)
from pipeline.engines.spark_session import session, spark_conf


def _found(folder: str, secrets_: list[bytes]) -> list[str]:
    """Files under `folder` holding any of `secrets_` in clear (a file may vanish mid-scan)."""
    hits = []
    for path in Path(folder).rglob("*"):
        try:
            data = path.read_bytes() if path.is_file() else b""
        except OSError:
            continue
        hits += [f"{path.name}: secret {i}" for i, s in enumerate(secrets_) if s in data]
    return hits


def test_a_landing_on_spark_leaves_no_key_or_nhs_number_in_spark_s_local_folders(
        spark: Any, tmp_path: Path) -> None:
    """The folders are searched while the landing runs: inside every task (the broadcast's
    file, the slices handed over) and from the driver, over and over, until it ends."""
    local = spark.sparkContext.getConf().get("spark.local.dir")
    assert local and Path(local).is_dir()
    keys = {p: Key(f"{p[0]}lf1", secrets.token_bytes(32))
            for p in ("pseudonym", "linkage", "vault")}
    rows = rows_for("apc", 400, seed=11)
    path = write_extract(tmp_path, "apc", rows)
    numbers = sorted({row["nhs_number"].encode() for row in rows})[:20]
    secrets_ = [keys["pseudonym"].secret, keys["linkage"].secret, *numbers]

    def searching(number: int, blob: bytes, job: Job, memo: Any, local: str = local,
                  secrets_: list[bytes] = secrets_) -> Iterator[tuple[int, Prepared]]:
        # Runs in a Python worker, which cannot import this test module: self-contained.
        from pathlib import Path

        from pipeline.engines.spark_land import read_and_prepare

        hits = []
        for path in Path(local).rglob("*"):  # the broadcast was read: its file is there
            try:
                data = path.read_bytes() if path.is_file() else b""
            except OSError:
                continue
            hits += [path.name for s in secrets_ if s in data]
        if hits:
            raise AssertionError(f"in clear under spark.local.dir: {hits[:3]}")
        return read_and_prepare(number, blob, job, memo)

    seen: list[str] = []
    scans = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                seen.extend(_found(local, secrets_))
            except OSError:  # a folder removed while it was walked: look again
                continue
            scans.append(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        job = Job("apc", "20261206-local-0001", "RR8", keys)
        prepared = list(spark_file_prepared(
            spark, path, CONTRACTS["apc"].names, False, ReadStats(), job, partitions=2,
            window=2, work=searching, slice_rows=100, split_bytes=20_000,
            handover=Path(local) / "20261206-local-0001.handover"))
    finally:
        done.set()
        watcher.join()
    assert sum(len(p.rows) for p in prepared) == len(rows)
    assert seen == []
    assert len(scans) > 1  # the driver did look, over and over, while the landing ran


def test_haven_turns_spark_s_io_encryption_on_and_refuses_a_setting_that_turns_it_off(
        tmp_path: Path) -> None:
    assert spark_conf(Settings(home=tmp_path))["spark.io.encryption.enabled"] == "true"
    for off in ("false", "False", " no"):
        settings = Settings(home=tmp_path, engine="spark",
                            spark_conf={"spark.io.encryption.enabled": off})
        with pytest.raises(SparkRefused, match="spark.io.encryption.enabled.*refused"):
            spark_conf(settings)


class _Session:
    """A stand-in for a running session started without Spark's I/O encryption."""

    def __init__(self) -> None:
        self.broadcasts = 0
        self.stopped = False
        self.sparkContext = self

    def getConf(self) -> dict[str, str]:  # noqa: N802 - Spark's name
        return {"spark.master": "local[2]"}

    def broadcast(self, value: Any) -> None:
        self.broadcasts += 1

    def stop(self) -> None:
        self.stopped = True


def test_a_running_session_without_io_encryption_is_refused_and_left_running(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyspark.sql import SparkSession

    running = _Session()
    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: running))
    with pytest.raises(SparkRefused, match="start the session with spark.io.encryption"), \
            session(Settings(home=tmp_path, engine="spark")):
        pass
    assert not running.stopped  # not ours to stop


def test_no_key_is_broadcast_on_a_session_without_io_encryption(tmp_path: Path) -> None:
    running = _Session()
    keys = {p: Key(f"{p[0]}lf2", bytes(32)) for p in ("pseudonym", "linkage", "vault")}
    with pytest.raises(SparkRefused):
        list(spark_file_prepared(running, tmp_path / "none.csv", [], False, ReadStats(),
                                 Job("apc", "x", "RR8", keys)))
    assert running.broadcasts == 0
    require_protections_ok = _Session()
    require_protections_ok.getConf = lambda: protected_conf()  # type: ignore[method-assign]
    require_protections(require_protections_ok)  # started with it: accepted


@pytest.mark.parametrize("key", JAVA_OPTIONS)
def test_jvm_options_that_write_heap_dumps_are_refused(tmp_path: Path, key: str) -> None:
    """A heap dump is the JVM's memory on disk: a landing's raw slices and keys in clear (a
    reviewer dumped one with `-XX:+HeapDumpBeforeFullGC` and found both)."""
    for options in ("-Xss4m -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath=/tmp",
                    "-XX:+HeapDumpBeforeFullGC", "-XX:+HeapDumpAfterFullGC"):
        settings = Settings(home=tmp_path, engine="spark", spark_conf={key: options})
        with pytest.raises(SparkRefused, match=f"{key} turns on -XX:\\+HeapDump"):
            spark_conf(settings)
    for options in ("-XX:OnOutOfMemoryError='jcmd %p GC.heap_dump /tmp/d.hprof'",
                    "-XX:OnError='jmap -dump:file=/tmp/d %p'", "-XX:VMOptionsFile=/etc/x",
                    "-XX:OnError='gcore %p'", "-XX:OnOutOfMemoryError=/bin/true",
                    "-agentlib:jdwp=transport=dt_socket,server=y,address=*:5005",
                    "-javaagent:/tmp/a.jar", "-agentpath:/tmp/a.so",
                    "-Dcom.sun.management.jmxremote.port=9999", "@/tmp/options",
                    "-XX:-SuppressFatalErrorMessage", "-XX:+CreateCoredumpOnCrash",
                    "-XX:ErrorFile=/tmp/e.log", "-XX:+ErrorFileToStderr"):
        settings = Settings(home=tmp_path, engine="spark", spark_conf={key: options})
        with pytest.raises(SparkRefused, match="refused, because a heap dump"):
            spark_conf(settings)
    for options in ("-Xss4m", "-XX:-HeapDumpOnOutOfMemoryError"):  # other options, or off
        settings = Settings(home=tmp_path, engine="spark", spark_conf={key: options})
        assert spark_conf(settings)[key].startswith(options)
    running = _Session()
    dumping = {**protected_conf(), key: "-XX:+HeapDumpOnOutOfMemoryError"}
    running.getConf = lambda: dumping  # type: ignore[method-assign]
    with pytest.raises(SparkRefused, match="HeapDumpOnOutOfMemoryError"):
        require_protections(running)


class _NotHotSpot:
    """A JVM gateway whose diagnostic bean cannot be had (another vendor's JVM)."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("no such class")


def test_a_driver_jvm_that_cannot_say_whether_it_dumps_is_refused() -> None:
    running = _Session()
    running.getConf = lambda: protected_conf()  # type: ignore[method-assign]
    running._jvm = _NotHotSpot()  # type: ignore[attr-defined]
    assert "cannot be asked" in (driver_memory_rules(running) or "")
    with pytest.raises(SparkRefused, match="cannot be asked"):
        require_protections(running)


def _session_elsewhere(home: Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Start a Spark session in a second process (a process has one Spark driver) with
    `environ` added; it prints `accepted` or `refused: <why>`."""
    script = ("from pathlib import Path\n"
              "from governance.settings import Settings\n"
              "from pipeline.engines.spark_session import SparkRefused, spark_session\n"
              "try:\n"
              f"    spark_session(Settings(home=Path({str(home)!r}), engine='spark',\n"
              "                           spark_master='local[1]'))\n"
              "    print('accepted')\n"
              "except SparkRefused as exc:\n"
              "    print('refused:', exc)\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240, cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, **environ})


def test_a_driver_jvm_given_heap_dumps_another_way_is_refused(spark: Any, tmp_path: Path
                                                             ) -> None:
    """JAVA_TOOL_OPTIONS reaches the JVM without passing Haven's settings: the JVM is asked
    what it runs with, and the session is refused (and stopped). A second process, since a
    process has one Spark driver; the shared session's own JVM has no dump option."""
    assert driver_memory_rules(spark) is None
    done = _session_elsewhere(tmp_path, {"JAVA_TOOL_OPTIONS": "-XX:+HeapDumpBeforeFullGC"})
    assert "refused: the Spark driver's JVM runs with -XX:+HeapDumpBeforeFullGC" in done.stdout, (
        done.stdout[-500:], done.stderr[-1500:])


def test_spark_s_jvm_and_python_workers_may_write_no_core_file(spark: Any) -> None:
    """A crashing JVM or Python worker would write its memory (raw slices, the broadcast keys)
    as a core file; Haven sets the limit to zero before the JVM starts, and both inherit it."""
    jvm = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    assert core_limit(int(jvm)) == "0"
    workers = spark.sparkContext.parallelize(range(2), 2).map(
        lambda _: (os.getpid(), core_limit(os.getpid()))).collect()
    assert {pid for pid, _ in workers} != {os.getpid()}  # asked in the workers, not here
    assert [limit for _, limit in workers] == ["0", "0"]


def test_every_jvm_haven_starts_is_told_to_write_no_core_on_a_crash(spark: Any,
                                                                    tmp_path: Path) -> None:
    for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        options = spark_conf(Settings(home=tmp_path))[key].split()
        assert NO_CORE in options and NO_ERROR_REPORT in options
    jvm = spark.sparkContext._jvm
    bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
    assert str(bean.getVMOption("CreateCoredumpOnCrash").getValue()) == "false"
    assert str(bean.getVMOption("SuppressFatalErrorMessage").getValue()) == "true"


def test_a_jvm_given_haven_s_options_writes_no_error_report_when_it_crashes(
        tmp_path: Path) -> None:
    """A crashing JVM writes `hs_err_pid<pid>.log` into its working folder (its command line,
    registers, a few hundred bytes of stack); one with the options Haven gives every JVM
    writes nothing there, and still dies. A JVM of its own, so the shared session lives on."""
    source = tmp_path / "Wait.java"
    source.write_text("public class Wait { public static void main(String[] a) throws "
                      "Exception { System.out.println(\"up\"); Thread.sleep(120000); } }\n")
    options = spark_conf(Settings(home=tmp_path))["spark.driver.extraJavaOptions"].split()

    def crashed(name: str, given: list[str]) -> list[str]:
        folder = tmp_path / name
        folder.mkdir()
        jvm = subprocess.Popen(["java", *given, str(source)], cwd=folder, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert jvm.stdout is not None and jvm.stdout.readline().strip() == "up"
        jvm.send_signal(signal.SIGSEGV)
        assert jvm.wait(timeout=60) != 0
        return sorted(path.name for path in folder.iterdir())

    control = crashed("control", [NO_CORE])  # no core file either way
    assert len(control) == 1 and control[0].startswith("hs_err_pid")
    assert crashed("haven", options) == []


def test_a_driver_jvm_told_to_write_error_reports_after_haven_s_options_is_refused(
        tmp_path: Path) -> None:
    """`_JAVA_OPTIONS` is read after the command line, so it overrides Haven's options: the
    JVM is asked what it runs with, and the session is refused."""
    done = _session_elsewhere(tmp_path, {"_JAVA_OPTIONS": "-XX:-SuppressFatalErrorMessage"})
    assert ("refused: the Spark driver's JVM would write an error report of its registers and "
            "stack on a crash") in done.stdout, (done.stdout[-500:], done.stderr[-1500:])


def test_the_core_limit_is_read_from_proc(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max core file size        unlimited            unlimited            bytes\n")
    assert core_limit(7, tmp_path) == "unlimited"
    assert core_limit(8, tmp_path) is None
    assert core_limit(os.getpid()) is not None


def test_a_driver_jvm_whose_core_limit_was_raised_again_is_refused(tmp_path: Path) -> None:
    """A reviewer's `spark-env.sh` said `ulimit -c unlimited`; the JVM it started wrote a
    690 MB core holding the keys when killed. Haven asks the JVM's own limit after it starts.
    (A `haven` command lowers the hard limit too, so there the script cannot raise it.)"""
    import resource

    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("this host allows no core file at all: the limit cannot be raised")
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-env.sh").write_text("ulimit -c unlimited\n")
    done = _session_elsewhere(tmp_path, {"SPARK_CONF_DIR": str(conf_dir)})
    assert "refused: the Spark driver's JVM may write a core file" in done.stdout, (
        done.stdout[-500:], done.stderr[-1500:])


@pytest.mark.parametrize("key", ["spark.yarn.am.extraJavaOptions",
                                 "spark.yarn.appMasterEnv.JAVA_TOOL_OPTIONS",
                                 "spark.kubernetes.driverEnv.JDK_JAVA_OPTIONS"])
def test_java_options_are_checked_wherever_a_setting_gives_them(tmp_path: Path,
                                                                key: str) -> None:
    """A reviewer's options slipped past in settings other than the driver's and executors'."""
    with pytest.raises(SparkRefused, match=f"{key} turns on"):
        spark_conf(Settings(home=tmp_path, spark_conf={key: "-XX:OnError=gcore"}))


def test_a_task_s_python_worker_sets_its_own_core_limit_before_it_reads_a_broadcast(
        tmp_path: Path) -> None:
    """A reviewer's `PYSPARK_PYTHON` wrapper raised the workers' limit (the JVM's stayed zero),
    and a worker's core held both keys. Each worker now lowers its own limit, for good,
    before it reads what a broadcast carries. A second process, for a session of its own."""
    import resource

    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("this host allows no core file at all: the limit cannot be raised")
    wrapper = tmp_path / "python.sh"
    wrapper.write_text(f"#!/bin/sh\nulimit -c unlimited\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    script = f"""
from pathlib import Path
import resource
from governance.settings import Settings
from pipeline.engines.spark_broadcast import broadcast, value_of
from pipeline.engines.spark_session import spark_session
spark = spark_session(Settings(home=Path({str(tmp_path)!r}), engine="spark",
                               spark_master="local[1]"))
shared = broadcast(spark, "held")
def limit(_):
    return resource.getrlimit(resource.RLIMIT_CORE)
def read(_):
    value_of(shared)
    return resource.getrlimit(resource.RLIMIT_CORE)
print("before", spark.sparkContext.parallelize([0], 1).map(limit).collect()[0])
print("after", spark.sparkContext.parallelize([0], 1).map(read).collect()[0])
spark.stop()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240, cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "PYSPARK_PYTHON": str(wrapper)})
    assert "before (-1, -1)" in done.stdout, (done.stdout[-500:], done.stderr[-1500:])
    assert "after (0, 0)" in done.stdout
