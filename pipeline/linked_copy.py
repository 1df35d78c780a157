"""A stage's working copy of the linked rows a purpose may use, typed into a DuckDB file.

Scoring and the model report read every linked row of a purpose. Held as pandas frames that
cost about 40 KB per person (issue #12), so a million persons did not fit on one machine.
Here the rows are read a batch at a time as Arrow tables (`linkage.linked_view.linked_tables`:
the same rows and the same opt-out filter as `load_sources`, the filter asked once per person
of a batch) and typed into a DuckDB file (`stratify.features.append_table`) in a scratch
workspace of this process (`governance.store.scratch_workspace`), which DuckDB reads with a
memory limit (`Settings.duckdb_memory`) and spills past it. The copy is an
`stratify.features.OnDisk`, which every stage function that reads sources through
`stratify.features.connect` takes in place of the frames; it is removed when the stage ends.

DuckDB keeps the rows appended since a connection opened in its memory (up to its limit) until
the connection closes and writes them to the file: appended through one connection, the copy
held 0.6 GB of a million persons' 48M rows by its end (issue #12: growing with the
population). The connection is closed and opened again every `REOPEN_ROWS` rows, so what
DuckDB holds is bounded by those rows, not by the population; the rows in the file are the
same.

A stage that asks for a purpose's rows (`PurposeRows`: the purpose, the opt-outs it applies
and how its filter is made) is given the last copy made for the same rows, if nothing they
depend on changed since (`pipeline.linked_cache`): a copy of one file instead of reading the
linked rows again; the filter (which reads the link map) is made only when a copy is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from governance import store
from linkage.linked_view import RowFilter, linked_tables
from pipeline import linked_cache
from pipeline.context import Context, Progress, quiet
from pipeline.engines.spark_copy import copy_on_spark
from pipeline.engines.spark_score import PERSONS_PER_TASK
from pipeline.engines.spark_session import session
from stratify.features import OnDisk, append_table, cluster_by_person, connect_on_disk
from stratify.sources import COLUMNS, PERSON_FIELDS

PROGRESS_EVERY = 5_000_000
# Rows appended through one connection before it is closed (its rows written to the file and
# DuckDB's memory of them freed) and another opened.
REOPEN_ROWS = 4_000_000
# Only the landed columns the copy keeps are read (besides what the opt-out filter needs).
WANTED = {source: [*columns, *PERSON_FIELDS] for source, columns in COLUMNS.items()}


@dataclass(frozen=True)
class PurposeRows:
    """The rows a purpose may use under `applied` (what `optouts_applied` recorded):
    `make_filter` makes that purpose's filter under `applied`, only when a copy is made."""

    purpose: str
    applied: dict[str, Any]
    make_filter: Callable[[], RowFilter]


@contextmanager
def linked_copy(ctx: Context, rows: RowFilter | PurposeRows | None,
                progress: Progress = quiet) -> Iterator[OnDisk]:
    """The linked rows `rows` keeps (a row filter, or a purpose's rows), copied into a DuckDB
    file for the stage's span; a purpose's copy is taken from, or kept in, the linked cache."""
    with store.scratch_workspace(ctx.settings) as folder:
        if not isinstance(rows, PurposeRows):
            yield _made(ctx, folder, rows, progress)
            return
        form = "parquet" if ctx.settings.engine == "spark" else "duckdb"
        key = linked_cache.cache_key(ctx, rows.purpose, rows.applied, WANTED, form)
        kept = linked_cache.take(ctx, key, folder) if key is not None else None
        if kept is not None:
            progress(f"  {kept['rows']:,} linked rows: the copy the last stage made of the "
                     "same rows (nothing they depend on changed since)")
            ranges = kept.get("ranges")
            yield OnDisk(folder=folder, memory_limit=ctx.settings.duckdb_memory,
                         ids=kept["ids"], rows=kept["rows"],
                         ranges=None if ranges is None else tuple(
                             (low, high) for low, high in ranges))
            return
        copy = _made(ctx, folder, rows.make_filter(), progress)
        if key is not None:
            meta: dict[str, Any] = {"ids": copy.ids, "rows": copy.rows}
            if copy.ranges is not None:
                meta["ranges"] = [list(pair) for pair in copy.ranges]
            linked_cache.keep(
                ctx, key, lambda: linked_cache.cache_key(ctx, rows.purpose, rows.applied,
                                                         WANTED, form),
                folder, meta)
        yield copy


def _made(ctx: Context, folder: Path, row_filter: RowFilter | None, progress: Progress
          ) -> OnDisk:
    """Read the linked rows `row_filter` keeps a batch at a time into `folder`'s DuckDB file
    (on Spark: Parquet in ranges of persons, made by the executors: `spark_copy`)."""
    if ctx.settings.engine == "spark":
        with session(ctx.settings, "haven-linked-copy") as spark:
            return copy_on_spark(spark, ctx.settings, ctx.engine, row_filter, folder,
                                 ctx.settings.duckdb_memory, WANTED, PERSONS_PER_TASK,
                                 progress)
    con = connect_on_disk(folder, ctx.settings.duckdb_memory)
    ids: dict[str, set[str]] = {}
    rows = since = 0
    try:
        for source, extract_id, table in linked_tables(ctx.settings, ctx.engine,
                                                       row_filter, columns=WANTED):
            added = append_table(con, source, table)
            if added:
                ids.setdefault(source, set()).add(extract_id)
                rows += added
                since += added
                if rows // PROGRESS_EVERY != (rows - added) // PROGRESS_EVERY:
                    progress(f"  {rows:,} linked rows read")
            if since >= REOPEN_ROWS:
                con.close()
                con = connect_on_disk(folder, ctx.settings.duckdb_memory, create=False)
                since = 0
    finally:
        con.close()
        # Arrow's allocator keeps the pages the batches freed: handed back to the system,
        # so the stage's next steps do not sit on top of the copy's making.
        pa.default_memory_pool().release_unused()
    cluster_by_person(folder, ctx.settings.duckdb_memory)
    progress(f"  {rows:,} linked rows copied, in person-key order")
    return OnDisk(folder=folder, memory_limit=ctx.settings.duckdb_memory,
                  ids={s: sorted(found) for s, found in ids.items()}, rows=rows)
