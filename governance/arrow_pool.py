"""Which allocator Arrow's buffers come from in a Haven process: jemalloc, which hands freed
pages back to the system a second after they are freed.

pyarrow's default on Linux is mimalloc, which keeps the pages a stage freed for its next
allocations. After scoring's linked copy (tens of millions of rows passing through Arrow
batches) the process held about 200 MB at 1M persons and 350 to 430 MB at 3M that nothing
referenced, under every later phase (issue #12; `release_unused` gave back 15 to 30 MB).
An `ARROW_DEFAULT_MEMORY_POOL` in the environment given to Haven is honoured as Arrow
honours it.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

SETTING = "ARROW_DEFAULT_MEMORY_POOL"
POOLS = {"jemalloc": pa.jemalloc_memory_pool, "mimalloc": pa.mimalloc_memory_pool,
         "system": pa.system_memory_pool}


def choose(environ: Mapping[str, str]) -> str:
    """Make Arrow's default pool the one `environ` names (else jemalloc, when this pyarrow
    has it); returns the pool's name. A name Arrow does not know leaves Arrow's own choice
    (Arrow warns of it on import)."""
    wanted = environ.get(SETTING, "jemalloc").strip().lower()
    if wanted not in POOLS:
        return pa.default_memory_pool().backend_name
    try:
        pool = POOLS[wanted]()
    except NotImplementedError:  # a pyarrow built without it: keep the default
        return pa.default_memory_pool().backend_name
    pa.set_memory_pool(pool)
    return pool.backend_name
