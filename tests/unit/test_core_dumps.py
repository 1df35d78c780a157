"""A crashing Haven process leaves no core file: the core is its memory (raw extract rows, keys)
on disk in clear. `haven` sets the core-file limit to zero for itself and all it starts."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A child on a host that allows core files (the soft limit raised to the hard one, as
# `ulimit -c unlimited` would), which may run `haven --help` first, then says its limits and a
# grandchild's, then crashes if asked.
CHILD = """
import os, resource, subprocess, sys
mode, then = sys.argv[1:3]
hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
if mode == "haven":
    from cli.main import main
    main(["--help"])
if mode == "console":  # the `haven` console script
    from cli.main import run
    sys.argv = ["haven", "--help"]
    try:
        run()
    except SystemExit:
        pass
print("own", *resource.getrlimit(resource.RLIMIT_CORE))
print("child", subprocess.run(["sh", "-c", "ulimit -c"], capture_output=True,
                              text=True).stdout.split())
print("raised", subprocess.run(["sh", "-c", "ulimit -c unlimited 2>/dev/null; ulimit -c"],
                               capture_output=True, text=True).stdout.split())
if then == "crash":
    os.abort()
"""


def _child(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_haven_and_every_process_it_starts_may_write_no_core_file(tmp_path: Path) -> None:
    done = _child(tmp_path, "haven", "stay")
    assert done.returncode == 0, done.stderr[-800:]
    assert "own 0 " in done.stdout
    assert "child ['0']" in done.stdout  # inherited


def test_the_haven_command_s_limit_cannot_be_raised_again_by_what_it_starts(
        tmp_path: Path) -> None:
    """A reviewer's `spark-env.sh` (run by Spark's launcher, a child of `haven`) said
    `ulimit -c unlimited`, and the JVM's core file held the keys. The console script lowers
    the hard limit too; `main` alone (a notebook, the tests) lowers the soft one."""
    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("this host allows no core file at all: there is nothing to raise")
    console = _child(tmp_path, "console", "stay")
    assert console.returncode == 0, console.stderr[-800:]
    assert "own 0 0" in console.stdout
    assert "raised ['0']" in console.stdout
    embedded = _child(tmp_path, "haven", "stay")
    assert "own 0 " in embedded.stdout and "own 0 0" not in embedded.stdout
    assert "raised ['unlimited']" in embedded.stdout  # the hard limit was left as it was


def test_a_crash_after_haven_started_leaves_no_core_file(tmp_path: Path) -> None:
    """The crash itself, where the host writes core files into the working folder: a process
    that never ran `haven` does leave one (so the test can see a core), one that did does not."""
    pattern = Path("/proc/sys/kernel/core_pattern")
    if not pattern.exists() or pattern.read_text().strip() not in ("core", "core.%p") \
            or resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("this host does not write core files into the working folder")
    plain, haven = tmp_path / "plain", tmp_path / "haven"
    plain.mkdir()
    haven.mkdir()
    assert _child(plain, "plain", "crash").returncode != 0
    assert _child(haven, "haven", "crash").returncode != 0
    assert [p.name for p in plain.iterdir() if p.name.startswith("core")]  # the control
    assert list(haven.iterdir()) == []
