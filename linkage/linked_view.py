"""The linked, pseudonymised view later stages read: landed rows of each source with person_key.

Only extracts that are landed (not destroyed) are read, and an optional row filter (the
opt-out rules for a purpose, from governance) drops what that purpose may not use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine

from governance.settings import Settings
from linkage import map_store
from linkage.person_index import landed_extracts
from linkage.pseudonym_table import dictionary_of

# Given a source's linked rows (with person_id, extract_id, sender), a mask of rows to keep.
RowFilter = Callable[[pd.DataFrame, str], "pd.Series"]


def load_sources(settings: Settings, engine: Engine, row_filter: RowFilter | None = None,
                 sources: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Every landed source as one frame with `person_key`, linkage encodings left out."""
    if not map_store.exists(settings):
        raise FileNotFoundError("no person index yet: run `haven link` first")
    link_map = map_store.read_table(settings, ["extract_id", "row", "person_key"])
    landed = landed_extracts(engine)
    out: dict[str, pd.DataFrame] = {}
    for source, group in landed.groupby("source"):
        if sources is not None and source not in sources:
            continue
        tables = []
        for item in group.itertuples():
            path = settings.layout.rows(item.extract_id)
            names = [n for n in pq.read_schema(path).names if not n.startswith("lk_")]
            table = pq.read_table(path, columns=names)
            table = table.append_column("sender", pa.array([item.sender] * table.num_rows,
                                                           pa.string()))
            tables.append(table)
        if not tables:
            continue
        table = pa.concat_tables(tables, promote_options="default")
        joined = table.join(link_map, keys=["extract_id", "row"], join_type="inner")
        frame = joined.to_pandas()
        if row_filter is not None and len(frame):
            frame = frame[row_filter(frame, str(source)).to_numpy()]
        out[str(source)] = frame.reset_index(drop=True)
    return out


def linked_tables(settings: Settings, engine: Engine, row_filter: RowFilter | None = None,
                  sources: list[str] | None = None, batch_rows: int = 250_000,
                  columns: dict[str, list[str]] | None = None,
                  window_rows: int = 1_000_000) -> Iterator[tuple[str, str, pa.Table]]:
    """`linked_batches` as Arrow tables: the same rows, no frame of Python objects per row.

    `row_filter` is asked about one row of each distinct (pseudonym, person key) of a batch,
    with only the columns it decides by (`extract_id`, `person_id`, `person_key`, `sender`:
    the batch's extract and sender are one), and its verdict is spread to the rest: at a
    million persons the filter saw 48M rows of Python strings, for about a million persons."""
    for piece, link in _pinned_extracts(settings, engine, sources, columns):
        for table in piece_tables(piece, link, row_filter, batch_rows, window_rows):
            yield piece.source, piece.extract_id, table


def _verdicts(table: pa.Table, row_filter: RowFilter, source: str) -> np.ndarray:
    """`row_filter`'s mask over `table` (one extract's batch), asked once per distinct
    (pseudonym, person key): rows alike in every column it reads get one verdict."""
    names = table.column_names
    person = (table.column("person_id") if "person_id" in names
              else pa.nulls(table.num_rows, pa.string()))
    codes = []
    for column in (person, table.column("person_key")):
        encoded = dictionary_of(column)
        codes.append((pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
                      .astype(np.int64) + 1, len(encoded.dictionary) + 1))
    (ids, id_span), (keys, _) = codes
    _, first, inverse = np.unique(keys * id_span + ids, return_index=True,
                                  return_inverse=True)
    asked = table.take(pa.array(first)).select(
        [c for c in ("extract_id", "person_id", "person_key", "sender") if c in names])
    verdict = np.asarray(row_filter(asked.to_pandas(), source), dtype=bool)
    return verdict[inverse.ravel()]


def linked_batches(settings: Settings, engine: Engine, row_filter: RowFilter | None = None,
                   sources: list[str] | None = None, batch_rows: int = 250_000,
                   columns: dict[str, list[str]] | None = None,
                   window_rows: int = 1_000_000) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """`load_sources`' rows a batch at a time: (source, extract id, rows with `person_key`),
    the same rows after the same filter, in memory bounded by a batch and a window of the
    link map, not by the population or an extract.

    `columns`: per source, the landed columns wanted (besides those the filter and the key
    need: `extract_id`, `row`, `person_id`); default all but the linkage encodings. A batch's
    person keys come from a window of the extract's slice of the link map (`window_rows` rows
    from the batch's first row, read with filters on extract id and row, so Parquet's row
    group statistics skip the rest) searched by row number.
    """
    for piece, link in _pinned_extracts(settings, engine, sources, columns):
        for table in _piece_batches(piece, link, batch_rows, window_rows):
            frame = table.to_pandas()
            del table
            if row_filter is not None and len(frame):
                frame = frame[row_filter(frame, piece.source).to_numpy()]
            if len(frame):
                yield piece.source, piece.extract_id, frame.reset_index(drop=True)


def _pinned_extracts(settings: Settings, engine: Engine, sources: list[str] | None,
                     columns: dict[str, list[str]] | None
                     ) -> Iterator[tuple[Piece, BinaryIO | None]]:
    """Every landed extract whole (`linked_batches`, `linked_tables`), with its file of the
    map, from one generation of the map from the first extract to the last, though a link
    swaps in another meanwhile (its files held open)."""
    if not map_store.exists(settings):
        raise FileNotFoundError("no person index yet: run `haven link` first")
    with map_store.Pinned(settings) as pinned:
        for piece in _whole_extracts(settings, engine, sources, columns):
            yield piece, pinned.extract(piece.extract_id)


def _whole_extracts(settings: Settings, engine: Engine, sources: list[str] | None,
                    columns: dict[str, list[str]] | None) -> Iterator[Piece]:
    """Every landed extract of `sources` (None: all) as one piece, in source and id order."""
    landed = landed_extracts(engine)
    for item in landed.sort_values(["source", "extract_id"]).itertuples():
        source = str(item.source)
        if sources is not None and source not in sources:
            continue
        path = settings.layout.rows(item.extract_id)
        yield Piece(source, str(item.extract_id), item.sender, path,
                    _present(path, source, columns), None)


@dataclass(frozen=True)
class Piece:
    """Row groups of one landed extract's rows (all when `row_groups` is None) and the
    landed columns to read: a part of the linked rows one process reads
    (`piece_tables`), anywhere the data directory is mounted (a Spark executor)."""

    source: str
    extract_id: str
    sender: str | None
    rows_path: Path
    columns: tuple[str, ...]
    row_groups: tuple[int, ...] | None


def _present(path: Path, source: str, columns: dict[str, list[str]] | None
             ) -> tuple[str, ...]:
    """The landed columns of `path` to read: all but the linkage encodings, or `columns`'
    for the source (and what the filter and the key need)."""
    present = [n for n in pq.read_schema(path).names if not n.startswith("lk_")]
    if columns is not None and source in columns:
        keep = {"extract_id", "row", "person_id", *columns[source]}
        present = [n for n in present if n in keep]
    return tuple(present)


def pieces(settings: Settings, engine: Engine, columns: dict[str, list[str]] | None = None,
           rows_per_piece: int = 2_000_000) -> list[Piece]:
    """The landed extracts' rows cut into pieces of whole row groups, about `rows_per_piece`
    rows each, in the order `linked_tables` reads them."""
    out = []
    for whole in _whole_extracts(settings, engine, None, columns):
        meta = pq.ParquetFile(whole.rows_path).metadata
        group: list[int] = []
        held = 0
        for number in range(meta.num_row_groups):
            group.append(number)
            held += meta.row_group(number).num_rows
            if held >= rows_per_piece or number == meta.num_row_groups - 1:
                out.append(replace(whole, row_groups=tuple(group)))
                group, held = [], 0
    return out


def piece_tables(piece: Piece, link_path: Path | BinaryIO | None,
                 row_filter: RowFilter | None = None,
                 batch_rows: int = 250_000, window_rows: int = 1_000_000
                 ) -> Iterator[pa.Table]:
    """`linked_tables`' batches of one piece, its person keys from `link_path` (the map's
    file of the extract: held open by `map_store.Pinned`, or `map_store.hard_linked`)."""
    for table in _piece_batches(piece, link_path, batch_rows, window_rows):
        if row_filter is not None and table.num_rows:
            table = table.filter(pa.array(_verdicts(table, row_filter, piece.source)))
        if table.num_rows:
            yield table


def _piece_batches(piece: Piece, link: Path | BinaryIO | None, batch_rows: int,
                   window_rows: int) -> Iterator[pa.Table]:
    """A piece's rows that the map holds, a batch at a time, with `person_key` and `sender`,
    unfiltered."""
    window = _Window(link, piece.extract_id, window_rows)
    for batch in pq.ParquetFile(piece.rows_path).iter_batches(
            batch_size=batch_rows, columns=list(piece.columns), row_groups=piece.row_groups):
        table = pa.Table.from_batches([batch])
        wanted = table.column("row").to_numpy()
        found, person_keys = window.keys_of(wanted)
        table = table.filter(pa.array(found)).append_column("person_key", person_keys)
        yield table.append_column("sender", pa.repeat(
            pa.scalar(piece.sender, pa.string()), table.num_rows))


class _Window:
    """Person keys of an extract's rows, read from the link map a window of rows at a time."""

    def __init__(self, link_path: Path | BinaryIO | None, extract_id: str, rows: int
                 ) -> None:
        self.link_path, self.extract_id, self.rows = link_path, extract_id, max(rows, 1)
        self.low = self.high = 0  # rows [low, high) are held
        self.numbers = np.zeros(0, dtype=np.int64)
        self.keys = pa.array([], pa.string())

    def keys_of(self, wanted: np.ndarray) -> tuple[np.ndarray, pa.Array]:
        """Which of the `wanted` rows the map holds, and their person keys (in that order)."""
        if not len(wanted):
            return np.zeros(0, dtype=bool), pa.array([], pa.string())
        low, high = int(wanted.min()), int(wanted.max()) + 1
        if low < self.low or high > self.high:
            self._read(low, max(high, low + self.rows))
        at = np.minimum(np.searchsorted(self.numbers, wanted), max(len(self.numbers) - 1, 0))
        found = (self.numbers[at] == wanted) if len(self.numbers) else \
            np.zeros(len(wanted), dtype=bool)
        return found, self.keys.take(pa.array(at[found]))

    def _read(self, low: int, high: int) -> None:
        if self.link_path is None:  # the map holds none of the extract's rows
            self.low, self.high = low, high
            return
        table = pq.read_table(self.link_path, columns=["row", "person_key"], filters=[
            ("extract_id", "=", self.extract_id), ("row", ">=", low), ("row", "<", high)])
        table = table.sort_by("row")
        self.low, self.high = low, high
        self.numbers = table.column("row").to_numpy()
        self.keys = table.column("person_key").combine_chunks()
