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
hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
if sys.argv[1] == "haven":
    from cli.main import main
    main(["--help"])
print("own", *resource.getrlimit(resource.RLIMIT_CORE))
print("child", subprocess.run(["sh", "-c", "ulimit -c"], capture_output=True,
                              text=True).stdout.split())
if sys.argv[2] == "crash":
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
