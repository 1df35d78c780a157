"""Test helper: `--dist loadfile` handing out the longest test files first.

pytest-xdist's own loadfile scheduler sends files in order of how many tests they hold, so
the files of one or two long tests (a whole pipeline end to end, a model report on both
backends) came last, and one worker ran them alone while the other had finished. Here each
file goes, whole, to the next worker that is free, longest first (by `durations.json`, the
seconds each file took in a full run; a file not listed counts as `UNKNOWN` seconds): the
largest-first rule that keeps the last file to finish short. Which tests run, and that a
file's tests run in one process in their order (a module's fixture made once), is as
before; only the order of files changes.

`python tests/longest_first.py JUNIT.xml` rewrites `durations.json` from a run's
`--junitxml` report (a file's seconds: the sum of its tests' setup, call and teardown).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

DURATIONS = Path(__file__).with_name("durations.json")
UNKNOWN = 5.0  # seconds: about the median file
TOGETHER = ("tests/spark/",)  # folders whose files run in one worker, one after the other


def file_seconds() -> dict[str, float]:
    """{test file path as in a node id: seconds}; empty when the file is missing or bad."""
    try:
        seconds = json.loads(DURATIONS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in seconds.items()} if isinstance(seconds, dict) else {}


def scheduler(config: Any, log: Any) -> Any:
    """A LoadFileScheduling that assigns the longest remaining file first."""
    from xdist.scheduler import LoadFileScheduling

    seconds = file_seconds()

    class LongestFileFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return next((folder for folder in TOGETHER if path.startswith(folder)), path)

        def _seconds(self, scope: str) -> float:
            if scope not in TOGETHER:
                return seconds.get(scope, UNKNOWN)
            files = {self._split_file(nodeid) for nodeid in self.workqueue[scope]}
            return sum(seconds.get(path, UNKNOWN) for path in files)

        @staticmethod
        def _split_file(nodeid: str) -> str:
            return nodeid.split("::", 1)[0]

        def _assign_work_unit(self, node: Any) -> None:
            # The base class gives `node` the first unit of its queue: put the longest first.
            longest = max(self.workqueue, key=self._seconds)
            self.workqueue.move_to_end(longest, last=False)
            super()._assign_work_unit(node)

    return LongestFileFirst(config, log)


def from_junit(report: Path) -> dict[str, float]:
    """{test file: seconds} from a pytest --junitxml report."""
    import xml.etree.ElementTree as ET

    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(report).iter("testcase"):
        parts = (case.get("classname") or "").split(".")
        modules = [i for i, part in enumerate(parts) if part.startswith("test_")]
        if modules:
            path = "/".join(parts[: modules[-1] + 1]) + ".py"
            seconds[path] += float(case.get("time") or 0)
    return {path: round(s, 1) for path, s in sorted(seconds.items())}


if __name__ == "__main__":
    DURATIONS.write_text(json.dumps(from_junit(Path(sys.argv[1])), indent=1) + "\n",
                         encoding="utf-8")
