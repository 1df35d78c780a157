"""The linked copy made on Spark: the executors read the landed rows, filter and type them,
and Spark's shuffle puts them in ranges of persons, written as Parquet.

On the embedded engine one process reads every linked row into a DuckDB file
(`pipeline.linked_copy`); on Spark that was the driver's work, about 1.8 hours of a 60M
persons' monthly refresh of 2.2 (docs/scale.md). Here:

1. the driver hard-links the link map's current generation into the copy's workspace
   (`map_store.hard_linked`: the tasks read one generation though a link swaps in another),
   cuts the landed extracts into pieces of whole row groups (`linked_view.pieces`), and has
   Spark find the ranges of persons from the map's person keys (every `persons_per_range`-th
   distinct key starts a range: `stratify.features.person_ranges`' form, over the map's
   persons rather than the copy's, so a range may hold fewer after the filter);
2. a task a piece reads its rows and their person keys (`linked_view.piece_tables`),
   applies the purpose's filter (the same value the embedded engine applies, broadcast) and
   types them as the DuckDB copy types them (`features.typed_table`), each row given its
   range's number;
3. per source, Spark repartitions by range, sorts by person key and writes
   `parquet/<source>/range=<i>/` in the workspace: range i's rows, in key order.

The result is an `OnDisk` with `ranges` set, which `features.connect` reads as views over the
files, a range's task reading only its range's files. No row passes through the driver. The
rows cross Spark's shuffle, so the session must encrypt its local files and its network
(`spark_protections.require_protections`). What each task kept (source, extract, rows) is
left as a small file in the workspace, for the copy's `ids` and `rows`: the extracts a run is
made of, as the embedded copy gives them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from governance import store
from governance.settings import Settings
from linkage import map_store
from linkage.linked_view import Piece, RowFilter, piece_tables, pieces
from pipeline.engines.spark_broadcast import broadcast, value_of
from pipeline.engines.spark_protections import require_protections
from stratify.features import PARQUET_COPY, OnDisk, copy_schema, typed_table
from stratify.progress import Progress, quiet

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from sqlalchemy import Engine

RANGE = "range"
KEPT = "kept"  # the workspace's folder of what each piece's task kept
_SPARK_TYPES = {pa.timestamp("us"): "timestamp_ntz", pa.float64(): "double",
                pa.bool_(): "boolean", pa.string(): "string"}


def spark_schema(source: str) -> str:
    """The Spark schema (DDL) of a piece task's rows of `source`: the copy's columns and the
    range's number."""
    columns = [f"{field.name} {_SPARK_TYPES[field.type]}" for field in copy_schema(source)]
    return ", ".join([*columns, f"{RANGE} int"])


def copy_on_spark(spark: SparkSession, settings: Settings, engine: Engine,
                  row_filter: RowFilter | None, folder: Path, memory_limit: str,
                  columns: dict[str, list[str]], persons_per_range: int,
                  progress: Progress = quiet) -> OnDisk:
    """The linked rows `row_filter` keeps, of the landed `columns`, as a Parquet copy in
    `folder` (the stage's workspace, on storage every executor mounts), in ranges of about
    `persons_per_range` persons."""
    require_protections(spark)  # the rows go through Spark's shuffle files and network
    maps = map_store.hard_linked(settings, folder / "map")
    if maps is None:
        raise FileNotFoundError("no person index yet: run `haven link` first")
    cut = pieces(settings, engine, columns)
    starts = range_starts(spark, maps, persons_per_range)
    edges: list[str | None] = [None, *starts, None]
    ranges = tuple(zip(edges[:-1], edges[1:], strict=True))
    progress(f"  the linked rows on Spark: {len(cut):,} pieces of landed rows, "
             f"{len(ranges):,} ranges of persons")
    shared = broadcast(spark, (row_filter, starts))
    kept = folder / KEPT
    try:
        kept.mkdir()
        for source in sorted({piece.source for piece in cut}):
            numbered = [(number, piece, _map_file(maps, piece.extract_id))
                        for number, piece in enumerate(cut) if piece.source == source]
            rows = _piece_rows(spark, numbered, shared, source, kept)
            (rows.repartition(len(ranges), RANGE)
             .sortWithinPartitions(RANGE, "person_key")
             .write.mode("overwrite").option("compression", "zstd")
             .partitionBy(RANGE).parquet(str(folder / PARQUET_COPY / source)))
            progress(f"  {source}: {len(numbered):,} pieces copied")
    finally:
        shared.destroy()
        # the map's files (every pseudonym and key of every extract, rows the purpose may
        # not use too) are let go once the copy is made, as the embedded engine's pin is:
        # a destruction meanwhile is not kept alive here until the stage ends
        shutil.rmtree(folder / "map", ignore_errors=True)
    ids, total = _kept(kept)
    progress(f"  {total:,} linked rows copied, in ranges of persons in key order")
    return OnDisk(folder=folder, memory_limit=memory_limit, ids=ids, rows=total,
                  ranges=ranges)


def _map_file(maps: dict[str, Path] | Path, extract_id: str) -> Path | None:
    """The hard-linked map file holding an extract's person keys (None: none of its rows)."""
    return maps if isinstance(maps, Path) else maps.get(extract_id)


def range_starts(spark: SparkSession, maps: dict[str, Path] | Path,
                 persons_per_range: int) -> list[str]:
    """Every `persons_per_range`-th of the map's distinct person keys in key order (not the
    first): where each range after the first starts. Worked out by Spark (a sort and an
    index of the keys), so the driver holds only the starts."""
    paths = [str(maps)] if isinstance(maps, Path) else [str(p) for p in maps.values()]
    if not paths or persons_per_range < 1:
        return []
    step = int(persons_per_range)
    keys = (spark.read.parquet(*paths).select("person_key")
            .where("person_key IS NOT NULL").distinct().orderBy("person_key"))
    return (keys.rdd.zipWithIndex()
            .filter(lambda pair: pair[1] > 0 and pair[1] % step == 0)
            .map(lambda pair: pair[0][0]).collect())


def _piece_rows(spark: SparkSession, numbered: list[tuple[int, Piece, Path | None]],
                shared: Any, source: str, kept: Path) -> DataFrame:
    """A Spark frame of the rows the pieces `numbered` keep (one piece a partition)."""
    table = spark.sparkContext.parallelize([(n,) for n, _, _ in numbered], len(numbered))
    frame = spark.createDataFrame(table, "piece long")
    work = {n: (piece, link) for n, piece, link in numbered}
    schema = copy_schema(source).append(pa.field(RANGE, pa.int32()))

    def run(chunks: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        row_filter, starts = value_of(shared)
        bounds = np.asarray(starts, dtype=object)
        for chunk in chunks:
            for number in chunk.column("piece").to_pylist():
                piece, link = work[number]
                yield from piece_batches(piece, link, row_filter, bounds, schema,
                                         kept / f"{number:08d}.json")

    return frame.mapInArrow(run, spark_schema(source))


def piece_batches(piece: Piece, link: Path | None, row_filter: RowFilter | None,
                  bounds: np.ndarray, schema: pa.Schema, record: Path
                  ) -> Iterator[pa.RecordBatch]:
    """One piece's linked rows that `row_filter` keeps, typed as the copy types them, each
    with the number of its range of persons (`bounds`: the ranges' starts after the first;
    a row without a key goes with the first range, as `person_ranges`' do); what was kept is
    recorded in `record` once the last batch is given (a retried task writes it again)."""
    rows = 0
    for table in piece_tables(piece, link, row_filter):
        typed = typed_table(piece.source, table)
        if typed is None or not typed.num_rows:
            continue
        keys = pc.fill_null(typed.column("person_key"), "").to_numpy(zero_copy_only=False)
        number = np.searchsorted(bounds, keys, side="right") if len(bounds) else \
            np.zeros(len(keys), dtype=np.int64)
        typed = typed.append_column(RANGE, pa.array(number.astype(np.int32)))
        rows += typed.num_rows
        yield from typed.cast(schema).to_batches()
    store.write_whole(lambda partial: partial.write_text(json.dumps(
        {"source": piece.source, "extract_id": piece.extract_id, "rows": rows})), record)


def _kept(folder: Path) -> tuple[dict[str, list[str]], int]:
    """The extracts with a row kept, by source, and the rows kept, from the pieces' records."""
    ids: dict[str, set[str]] = {}
    total = 0
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["rows"]:
            ids.setdefault(record["source"], set()).add(record["extract_id"])
            total += int(record["rows"])
    return {source: sorted(found) for source, found in ids.items()}, total
