"""An extract read in independent splits, numbered as the whole-file reader numbers it.

What lets Spark's executors read a raw file themselves, so its rows never pass through the
driver: the driver cuts the file into splits (byte ranges that end at a line's end, or a
Parquet file's row groups), reading only a few bytes at each cut; each split is counted where
it is read (`count_split`); the counts give every split the number of its first data row
(`numbered`); and each split's rows are then read and numbered (`split_batches`) exactly as
`reader.csv_batches` and `reader.parquet_batches` number them in one pass: the same rows,
the same row numbers, the same unsplittable rows and the same refusals.

CSV splits rely on every line feed ending a row, so that a cut after one never falls inside a
row. The parser does not quite promise that (`newlines_in_values=False` still keeps a quoted
line feed inside a value within one of its blocks), so the landing refuses, whichever engine
reads the file, a CSV in which a quoted value runs over a line's end or a line is longer than
1 MiB (`reader.LineCheck`, checked as the file is hashed): for every other file the splits
give what the whole-file reader gives. Rows are numbered as the CSV parser numbers them:
empty lines take no number, rows it cannot split do (`reader._numbered`).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from linkage.landing.reader import (
    MAX_LINE_BYTES,
    Batch,
    FileRefused,
    NotText,
    as_text,
    csv_options,
    first_bad_utf8_line,
)

# A CSV split is about this many bytes (the reader's own block), some 20,000 rows of apc.
SPLIT_BYTES = 1 << 22
# The cut is found by reading on from where it would fall, this much at a time.
_SCAN = 1 << 16


@dataclass(frozen=True)
class Split:
    """Bytes `start` to `end` of a CSV file (the first split holds the header), or Parquet
    row group `start` (`end` unused)."""

    index: int
    start: int
    end: int
    parquet: bool = False

    @property
    def header(self) -> bool:
        return not self.parquet and self.start == 0


@dataclass
class SplitCount:
    """What numbering a split needs from reading it: its data rows (`rows`, parsed or
    not), the positions (1-based, in the split) of those the parser could not split, its
    line feeds, and what would refuse the file."""

    rows: int
    unsplittable: list[int] = field(default_factory=list)
    lines: int = 0
    refusal: str | None = None  # "utf8" or "csv": the reader's refusal met in this split
    bad_line: int | None = None  # 0-based line (in the split) of its first byte not UTF-8

    @property
    def split_rows(self) -> int:
        """The rows the parser could split: those reading the split gives."""
        return self.rows - len(self.unsplittable)


@dataclass
class Numbered:
    """Every split's first data row number, and what the whole-file reader's `ReadStats`
    would hold at the end: rows seen and the unsplittable rows' numbers."""

    firsts: list[int]
    rows_seen: int
    unsplittable: list[int]


def csv_splits(path: Path, size: int = SPLIT_BYTES) -> list[Split]:
    """The file as byte ranges of about `size`, each ending just after a line feed (or at
    the end of the file); the first starts at byte 0, so it holds the header."""
    total = path.stat().st_size
    starts = [0]
    with path.open("rb") as handle:
        while starts[-1] + size < total:
            cut = _line_start_from(handle, starts[-1] + max(size, 1), total)
            if cut >= total:
                break
            starts.append(cut)
    ends = [*starts[1:], total]
    return [Split(i, s, e) for i, (s, e) in enumerate(zip(starts, ends, strict=True))]


def _line_start_from(handle: object, position: int, total: int) -> int:
    """The first line start at or after `position`: just after the line feed at or after
    `position - 1` (or `total`). FileRefused past `MAX_LINE_BYTES` without a line feed (the
    landing names the line: `reader.LineCheck`), rather than a split read whole."""
    handle.seek(position - 1)  # type: ignore[attr-defined]
    offset = position - 1
    while offset < total:
        chunk = handle.read(_SCAN)  # type: ignore[attr-defined]
        if not chunk:
            break
        found = chunk.find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += len(chunk)
        if offset - position > MAX_LINE_BYTES:
            raise FileRefused(f"a line runs over {MAX_LINE_BYTES >> 20} MiB without a line feed")
    return total


def parquet_splits(path: Path) -> tuple[list[Split], list[int]]:
    """A Parquet file's row groups as splits, with each group's rows (from its footer)."""
    try:
        metadata = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileRefused("the file could not be read as Parquet") from exc
    groups = range(metadata.num_row_groups)
    return ([Split(g, g, g + 1, parquet=True) for g in groups],
            [metadata.row_group(g).num_rows for g in groups])


def read_split(path: Path, split: Split) -> bytes:
    with path.open("rb") as handle:
        handle.seek(split.start)
        return handle.read(split.end - split.start)


def count_split(path: Path, names: list[str], split: Split) -> SplitCount:
    """A CSV split read once to count its rows (the parser's own count) and find what
    would refuse the file."""
    data = read_split(path, split)
    count = SplitCount(0, lines=data.count(b"\n"), bad_line=first_bad_utf8_line([data]))
    try:
        for record_batch in _parsed(data, names, split, count.unsplittable):
            count.rows += record_batch.num_rows
    except pa.ArrowInvalid as exc:
        message = str(exc)
        count.refusal = "utf8" if "UTF8" in message or "utf8" in message.lower() else "csv"
    count.rows += len(count.unsplittable)
    return count


def numbered(counts: list[SplitCount]) -> Numbered:
    """Each split's first row number, from every split's count in file order; FileRefused,
    with the reader's message, for the first split that would refuse the file."""
    firsts, unsplittable = [], []
    seen = 0
    for count in counts:
        if count.refusal is not None:
            raise _refusal(count.refusal, counts)
        firsts.append(seen + 1)
        unsplittable.extend(seen + p for p in count.unsplittable)
        seen += count.rows
    return Numbered(firsts, seen, unsplittable)


def _refusal(kind: str, counts: list[SplitCount]) -> FileRefused:
    """The reader's refusal (`reader._refusal`): not UTF-8, at the file's first bad line
    (the header is line 1), when the parser said so or the file has such a byte; else not
    CSV."""
    line, bad = 0, False
    for count in counts:
        if count.bad_line is not None:
            line, bad = line + count.bad_line, True
            break
        line += count.lines
    if kind != "utf8" and not bad:
        return FileRefused("the file could not be parsed as CSV")
    where = f" (line {line + 1})" if bad and line else ""
    return NotText(f"the file is not valid UTF-8{where}")


def split_batches(path: Path, names: list[str], split: Split, first: int,
                  batch_rows: int) -> Iterator[Batch]:
    """A split's rows in batches of at most `batch_rows`, numbered from `first` (its first
    data row's number, from `numbered`) as the whole-file reader numbers them."""
    if split.parquet:
        yield from _parquet_split_batches(path, split, first, batch_rows)
        return
    unsplittable: list[int] = []
    parsed = list(_parsed(read_split(path, split), names, split, unsplittable))
    rows = sum(b.num_rows for b in parsed) + len(unsplittable)
    positions = np.arange(1, rows + 1, dtype=np.int64)
    if unsplittable:
        positions = positions[~np.isin(positions, np.array(unsplittable, dtype=np.int64))]
    numbers = positions + (first - 1)
    table = pa.Table.from_batches(parsed) if parsed else None
    size = max(batch_rows, 1)
    for start in range(0, len(numbers), size):
        assert table is not None
        yield Batch(table.slice(start, size), pa.array(numbers[start:start + size], pa.int64()))


def _parsed(data: bytes, names: list[str], split: Split,
            unsplittable: list[int]) -> Iterator[pa.RecordBatch]:
    """A CSV split parsed as the reader parses the file (`reader.csv_options`); positions of
    rows it cannot split are added to `unsplittable` (1-based in the split: the parser counts
    the header's row in the first)."""
    skip = 1 if split.header else 0

    def on_invalid(row: pacsv.InvalidRow) -> str:
        unsplittable.append((row.number or 0) - skip)
        return "skip"

    if not split.header and data.startswith(codecs.BOM_UTF8):
        # The parser drops a byte order mark that starts what it reads, where the whole file
        # keeps one that starts a later line: an empty line before it (which takes no row
        # number) keeps it.
        data = b"\n" + data
    read, parse, convert = csv_options(names, on_invalid, skip)
    yield from pacsv.open_csv(pa.BufferReader(data), read_options=read, parse_options=parse,
                              convert_options=convert)


def _parquet_split_batches(path: Path, split: Split, first: int,
                           batch_rows: int) -> Iterator[Batch]:
    """A row group's rows as text (`reader.as_text`), numbered from `first`."""
    group = pq.ParquetFile(path).read_row_group(split.start)
    size = max(batch_rows, 1)
    for start in range(0, group.num_rows, size):
        table = as_text(group.slice(start, size))
        yield Batch(table, pa.array(range(first + start, first + start + table.num_rows),
                                    pa.int64()))
