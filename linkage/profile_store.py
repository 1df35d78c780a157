"""Person profiles held a bucket of persons at a time, so that linking against a register of
millions holds one bucket in memory, never the register.

A profile is a register row with a pseudonym and keyed encodings. Every profile has a position
(its place in the register in landing order: ties between equally good candidates go to the
lowest) and belongs to the bucket of its person (a hash of the pseudonym), so all of a person's
profiles are in one bucket: what is decided per person (the best profile of a person for a
query row, whether a person has a twin) is decided within a bucket, and only per-query sums
and bests cross buckets. A register of up to `BUCKET_ROWS` rows stays one bucket in memory;
larger ones are written, an Arrow IPC file a bucket (read memory-mapped), to a scratch folder
the caller owns.

`without(positions)` is the register with some profiles left out (linkage quality is measured
on rows matched against the others), numbered as if they had never been there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from governance.layout import Layout
from linkage.pseudonym_table import pseudonym_hashes

BUCKET_ROWS = 400_000  # profiles a bucket holds, about: one bucket's encodings and blocks


@dataclass
class ProfileStore:
    """Profiles in buckets of persons: one in-memory frame, or Arrow IPC files with `pos`."""

    buckets: list[pd.DataFrame | Path]
    rows: int
    persons: int
    carried: frozenset[str]
    columns: tuple[str, ...]
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # What callers derive from this view's profiles and keep while it lives (the matcher's
    # whole-register key tallies per blocking pass: read once, not once per match). A view
    # made by `without` starts its own: its profiles are not these.
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> ProfileStore:
        """One in-memory bucket: the frame itself (position = row order)."""
        return cls._made([frame.reset_index(drop=True)])

    @classmethod
    def _made(cls, buckets: list[pd.DataFrame | Path],
              carried: set[str] | None = None) -> ProfileStore:
        """A store of `buckets`, counting rows and persons; `carried` (the encodings with a
        value somewhere), when the caller did not record it, is found by reading them."""
        rows = persons = 0
        columns = tuple(n for n in _names(buckets[0]) if n != "pos")
        found = set(carried or ())
        for bucket in buckets:
            ids = _column(bucket, "person_id")
            rows += len(ids)
            persons += len(pc.drop_null(pc.unique(ids)))
            if carried is None:
                found.update(name for name in columns if name.startswith("lk_")
                             and name not in found and _column(bucket, name).null_count
                             < len(ids))
        return cls(buckets, rows, persons, frozenset(found), columns)

    @property
    def n(self) -> int:
        """Profiles in this view (the register less those left out)."""
        return self.rows - len(self.excluded)

    def has_values(self, column: str) -> bool:
        """Whether any profile has a value in `column` (a register may lack a field)."""
        return column in self.carried

    def frames(self, columns: Sequence[str]) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        """Each bucket's (positions, frame of `columns`), rows in position order."""
        for index in range(len(self.buckets)):
            yield self.bucket(index, columns)

    def bucket(self, index: int, columns: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
        """Bucket `index`'s (positions in this view, frame of `columns`), in position order:
        what one task of a match reads (on an executor, from the bucket's file)."""
        bucket = self.buckets[index]
        if isinstance(bucket, pd.DataFrame):
            positions = np.arange(len(bucket), dtype=np.int64)
            frame = bucket[list(columns)]
        else:
            table = _read(bucket, ["pos", *columns])
            positions = table.column("pos").to_numpy()
            frame = table.drop_columns(["pos"]).to_pandas(types_mapper=pd.ArrowDtype)
        if len(self.excluded):
            keep = ~np.isin(positions, self.excluded)
            frame = frame[keep].reset_index(drop=True)
            positions = positions[keep] - np.searchsorted(self.excluded, positions[keep])
        return positions, frame

    def shipped(self) -> ProfileStore:
        """This view without its memo (what is derived from it stays with the caller): what
        a bucket's task is sent, small when the buckets are files."""
        return ProfileStore(self.buckets, self.rows, self.persons, self.carried, self.columns,
                            self.excluded)

    def gather(self, positions: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
        """The profiles at `positions` (this view's numbering; any order, repeats allowed),
        one row each in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        wanted = self._original(positions)
        if len(self.buckets) == 1 and isinstance(self.buckets[0], pd.DataFrame):
            return self.buckets[0][list(columns)].iloc[wanted].reset_index(drop=True)
        distinct = np.unique(wanted)
        found: list[pa.Table] = []
        for bucket in self.buckets:
            table = _read(bucket, ["pos", *columns])
            hit = np.isin(table.column("pos").to_numpy(), distinct)
            if hit.any():
                found.append(table.filter(pa.array(hit)))
        if not found:
            table = _read(self.buckets[0], ["pos", *columns]).slice(0, 0)
        else:
            table = pa.concat_tables(found)
        held = table.column("pos").to_numpy()
        order = np.argsort(held, kind="stable")
        at = order[np.searchsorted(held[order], wanted)]
        return table.take(pa.array(at)).drop_columns(["pos"]).to_pandas(
            types_mapper=pd.ArrowDtype)

    def whole(self, columns: Sequence[str]) -> pd.DataFrame:
        """Every profile of this view, in position order (only for small registers: tests,
        and the one fit that needs every pair at once)."""
        return self.gather(np.arange(self.n, dtype=np.int64), columns)

    def without(self, positions: np.ndarray) -> ProfileStore:
        """This register less the profiles at `positions` (this view's numbering), the rest
        renumbered in order."""
        gone = np.union1d(self.excluded, self._original(np.asarray(positions, np.int64)))
        view = ProfileStore(self.buckets, self.rows, 0, self.carried, self.columns, gone)
        view.persons = sum(len(pc.drop_null(pc.unique(pa.array(frame["person_id"].array))))
                           for _, frame in view.frames(["person_id"]))
        return view

    def _original(self, positions: np.ndarray) -> np.ndarray:
        """This view's positions as the register's (the k-th profile kept)."""
        if not len(self.excluded):
            return positions
        shifted = self.excluded - np.arange(len(self.excluded))
        return positions + np.searchsorted(shifted, positions, side="right")


def _names(bucket: pd.DataFrame | Path) -> list[str]:
    if isinstance(bucket, pd.DataFrame):
        return [str(c) for c in bucket.columns]
    return _opened(bucket).schema.names


def _column(bucket: pd.DataFrame | Path, name: str) -> pa.Array | pa.ChunkedArray:
    if isinstance(bucket, pd.DataFrame):
        series = bucket[name]
        if isinstance(series.dtype, pd.ArrowDtype):
            return pa.array(series.array)
        return pa.array(series.to_numpy(dtype=object), from_pandas=True)
    return _read(bucket, [name]).column(name)


def _read(bucket: pd.DataFrame | Path, columns: Sequence[str]) -> pa.Table:
    if isinstance(bucket, pd.DataFrame):
        table = pa.Table.from_pandas(bucket[[c for c in columns if c != "pos"]],
                                     preserve_index=False)
        return table.append_column("pos", pa.array(np.arange(len(bucket), dtype=np.int64)))
    return _opened(bucket).read_all().select(list(columns))


def _opened(path: Path) -> pa.ipc.RecordBatchFileReader:
    """A bucket's file, memory-mapped: reading it decodes nothing and touches only the
    columns used (a Parquet bucket took about half a second to decode at each of the tens of
    reads a link makes of it: the matching's and the quality estimate's passes, the random
    pairs, the tallies)."""
    return pa.ipc.open_file(pa.memory_map(str(path)))


class ProfileWriter:
    """Builds a `ProfileStore` from tables of profiles given in register order: in memory up
    to `BUCKET_ROWS` expected rows, else an Arrow IPC file per bucket under `folder`."""

    def __init__(self, folder: Path | None, expected_rows: int, schema: pa.Schema,
                 bucket_rows: int | None = None):
        size = bucket_rows or BUCKET_ROWS
        self.count = max(1, math.ceil(expected_rows / size)) if folder is not None else 1
        self.schema = pa.schema([*schema, pa.field("pos", pa.int64())])
        self.position = 0
        self.tables: list[pa.Table] = []
        self.paths: list[Path] = []
        self.writers: list[pa.ipc.RecordBatchFileWriter] = []
        self.carried: set[str] = set()  # encodings with a value in some profile added
        if self.count > 1:
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
            self.paths = [Layout.profile_bucket(folder, i) for i in range(self.count)]
            self.writers = [pa.ipc.new_file(str(p), self.schema) for p in self.paths]

    def add(self, table: pa.Table) -> None:
        """Append profiles (any subset of the schema's columns; the rest null)."""
        table = _conformed(table, self.schema.remove(self.schema.get_field_index("pos")))
        self.carried.update(name for name in table.column_names if name.startswith("lk_")
                            and table.column(name).null_count < table.num_rows)
        positions = np.arange(self.position, self.position + table.num_rows, dtype=np.int64)
        self.position += table.num_rows
        table = table.append_column("pos", pa.array(positions))
        if self.count == 1:
            self.tables.append(table)
            return
        bucket = person_buckets(table.column("person_id"), self.count)
        for i, writer in enumerate(self.writers):
            part = table.filter(pa.array(bucket == i))
            if part.num_rows:
                writer.write_table(part)

    def close(self) -> ProfileStore:
        """The store of everything added."""
        if self.count == 1:
            table = pa.concat_tables(self.tables or [self.schema.empty_table()])
            return ProfileStore.from_frame(table.drop_columns(["pos"]).to_pandas(
                types_mapper=pd.ArrowDtype))
        for writer in self.writers:
            writer.close()
        return ProfileStore._made(list(self.paths), self.carried)


def person_buckets(person_ids: pa.ChunkedArray | pa.Array, count: int) -> np.ndarray:
    """Bucket of each pseudonym (0..count-1): a person's profiles always share one."""
    return (pseudonym_hashes(person_ids) % np.uint64(count)).astype(np.int64)


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in its order, missing ones null."""
    columns = []
    for item in schema:
        if item.name in table.column_names:
            try:
                columns.append(table.column(item.name).cast(item.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise ValueError(f"profile column {item.name}: values do not fit "
                                 f"{item.type} (an encoding of another length?)") from error
        else:
            columns.append(pa.nulls(table.num_rows, item.type))
    return pa.Table.from_arrays(columns, schema=schema)
