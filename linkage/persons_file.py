"""An extract's persons file: each pseudonym of the extract's map rows with its first row's
person key and its number of rows, in order of first appearance (`_persons/` of a map
generation; what `KeptKeys` and the coverage counts read instead of the rows).

Made a batch of map rows at a time, out of core: each batch's persons go to a Parquet file
in the generation's folder and DuckDB groups them within `PERSONS_MEMORY`, so the biggest
extract's persons are never all in memory at once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PERSONS_SCHEMA = pa.schema([("person_id", pa.string()), ("person_key", pa.string()),
                            ("rows", pa.int64())])
PARTS_SCHEMA = PERSONS_SCHEMA.append(pa.field("nth", pa.int64()))  # a batch's persons, numbered
PERSONS_MEMORY = "256MB"  # DuckDB's limit grouping an extract's persons (it spills past it)
READ_ROWS = 1_000_000  # persons written to the file at a time


def persons_part(table: pa.Table) -> pa.Table:
    """Each pseudonym of a table of map rows (a batch) with its first row's person key and
    its rows, in order of first appearance (Arrow's grouping keeps no order of its own: each
    group's first row number orders them)."""
    known = table.select(["person_id", "person_key"]).filter(pc.is_valid(table["person_id"]))
    at = pa.array(np.arange(known.num_rows, dtype=np.int64))
    grouped = known.append_column("at", at).group_by("person_id", use_threads=False).aggregate(
        [("person_key", "first"), ("person_key", "count", pc.CountOptions(mode="all")),
         ("at", "min")]).sort_by("at_min")
    return pa.table([grouped["person_id"], grouped["person_key_first"],
                     grouped["person_key_count"]], schema=PERSONS_SCHEMA)


class PersonsOfFile:
    """An extract's persons, gathered a batch at a time: each batch's (`persons_part`) goes to
    a Parquet file in the generation's folder, numbered in order, and `write` groups them into
    the persons file (first key, rows summed, in order of first appearance) with DuckDB
    within `PERSONS_MEMORY`, spilling to that folder. Memory holds a batch's persons, not
    every person of the biggest extract (at 3M persons, grouping them all in memory took
    1.2 GB over the 0.3 GB they fill)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.parts = folder / f"{name}.persons-parts.tmp"
        self.spill = folder / f"{name}.spill.tmp"
        self.writer = pq.ParquetWriter(self.parts, PARTS_SCHEMA, compression="zstd")
        self.seen = 0

    def add(self, part: pa.Table) -> None:
        """Take one batch's persons (`persons_part`), after every batch before it."""
        nth = pa.array(np.arange(self.seen, self.seen + part.num_rows, dtype=np.int64))
        self.writer.write_table(part.append_column("nth", nth).cast(PARTS_SCHEMA))
        self.seen += part.num_rows

    def write(self, target: Path) -> None:
        """The persons file at `target` (`PERSONS_SCHEMA`)."""
        self.writer.close()
        pa.default_memory_pool().release_unused()  # the batches' pages, before DuckDB's
        parts = str(self.parts).replace("'", "''")
        con = duckdb.connect(config={"memory_limit": PERSONS_MEMORY, "threads": 1,
                                     "temp_directory": str(self.spill),
                                     "preserve_insertion_order": True})
        try:
            grouped = con.sql(f"""
                SELECT person_id,
                    arg_min(person_key, nth) FILTER (WHERE person_key IS NOT NULL) AS person_key,
                    sum(rows)::BIGINT AS rows
                FROM read_parquet('{parts}') GROUP BY person_id ORDER BY min(nth)""")
            with pq.ParquetWriter(target, PERSONS_SCHEMA, compression="zstd") as writer:
                for batch in grouped.to_arrow_reader(READ_ROWS):
                    writer.write_batch(batch.cast(PERSONS_SCHEMA))
        finally:
            con.close()
        self.close()

    def close(self) -> None:
        """Remove the parts and DuckDB's spill (written or given up)."""
        self.writer.close()
        self.parts.unlink(missing_ok=True)
        shutil.rmtree(self.spill, ignore_errors=True)
