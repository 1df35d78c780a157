"""No core dumps from Haven's processes: a core file is the process's memory on disk, raw
extract rows and keys in clear, kept by the host's crash collector long after the process.

`forbid()` sets the core-file limit to zero for this process; every process it starts
afterwards inherits the limit (a landing's worker processes, the Spark JVM and its Python
workers). The kernel writes no core file under a zero limit, and crash collectors that take the
dump through a pipe (systemd-coredump, apport) read the limit and store nothing. At a process's
entry point (`haven`, the API's workers) the hard limit is lowered too, so nothing started
later can raise it again (a reviewer's `spark-env.sh` with `ulimit -c unlimited` did, and the
Spark JVM's core file held the keys); code that embeds Haven in a process of its own (a
notebook, the tests) lowers the soft limit only.
"""

from __future__ import annotations

import resource


def forbid(hard: bool = False) -> None:
    """Set this process's core-file limit to zero (for it and the processes it starts); with
    `hard`, for good: no process of this tree can raise it again."""
    _, ceiling = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0 if hard else ceiling))
