"""No core dumps from Haven's processes: a core file is the process's memory on disk, raw
extract rows and keys in clear, kept by the host's crash collector long after the process.

`forbid()` sets the core-file limit to zero for this process; every process it starts
afterwards inherits the limit (a landing's worker processes, the Spark JVM and its Python
workers). The kernel writes no core file under a zero limit, and crash collectors that take the
dump through a pipe (systemd-coredump, apport) read the limit and store nothing. Only the soft
limit is lowered: a process could raise it again, but none of Haven's (nor Spark's JVM) does,
and a hard limit of zero could never be raised in a long-lived process that embeds Haven (a
notebook's, the test suite's).
"""

from __future__ import annotations

import resource


def forbid() -> None:
    """Set this process's core-file limit to zero (for it and the processes it starts)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
