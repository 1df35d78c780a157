"""Stream an extract (CSV or Parquet) as batches of text columns, with 1-based data row numbers.

Every column is read as text: type inference would turn identifiers into integers and drop
leading zeros. Rows the CSV parser cannot split are reported by row number, never by content.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


class FileRefused(ValueError):
    """The whole file is refused; the message says why and where, never what a value was."""


class NotText(FileRefused):
    """The file (or its header) is not UTF-8 text: said before anything its "lines" would
    say, since bytes that are not text have none (`land._land_locked`)."""


@dataclass
class Batch:
    """A batch of text columns and the 1-based data row number of each of its rows."""

    table: pa.Table
    rows: pa.Array


@dataclass
class ReadStats:
    rows_seen: int = 0
    unsplittable: list[int] = field(default_factory=list)


def sha256_of(path: Path, lines: LineCheck | None = None) -> str:
    """The file's SHA-256 (hex); its bytes fed to `lines` in the same pass, if given."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            if lines is not None:
                lines.feed(chunk)
    if lines is not None:
        lines.finish()
    return digest.hexdigest()


# A CSV line may be at most this long: the parser reads 4 MiB blocks, and whether a longer
# row parses depends on where its blocks fall (in the whole file, or in a split of it).
MAX_LINE_BYTES = 1 << 20
# A line whose every field is whole: quoted ones close on the line (`""` a quote inside),
# text after a closing quote and quotes inside an unquoted field are kept as the parser keeps
# them. A field that opens a quote and does not close it runs over the line's end (LF or CR,
# each a line end to the parser). (`*+`, possessive: as the parser reads a quoted field, a
# doubled quote is a quote, never a closing one followed by another; a run of plain bytes is
# taken at once, `[^"\r\n]++`: twice as fast on a file quoted everywhere as a byte at a time).
_FIELD = rb'(?:"(?:[^"\r\n]++|"")*+"[^,\r\n]*+|[^,"\r\n][^,\r\n]*+|)'
_LINE = _FIELD + rb"(?:," + _FIELD + rb")*+"
_WHOLE_LINE = re.compile(_LINE)
# Many whole lines, each with its line end, matched at once (one regex over a chunk's lines,
# not a Python step a line: a file quoted on every short line checked 10 times as fast).
_WHOLE_LINES = re.compile(rb"(?:" + _LINE + rb"[\r\n])*+")


_FIELD_EDGE = np.zeros(256, dtype=bool)
_FIELD_EDGE[[ord(","), ord("\n"), ord("\r")]] = True


def quoted_whole(lines: bytes) -> bool:
    """Whether every quote in `lines` (whole lines, the last ending in LF or CR) pairs with the
    next one, on its line, into a value quoted whole: the first of a pair after a comma or a
    line's start, the second before a comma or the line's end. Enough for no quoted value to
    run over a line's end, and decided by array operations: a file quoted everywhere is
    checked at about 250 MB/s, twice as fast as `_WHOLE_LINES`, which decides the rest."""
    if not lines.endswith((b"\n", b"\r")):
        return False  # not whole lines: the pattern decides
    data = np.frombuffer(lines, dtype=np.uint8)
    quotes = np.flatnonzero(data == ord('"'))
    if len(quotes) % 2:
        return False
    if not len(quotes):
        return True
    opens, closes = quotes[0::2], quotes[1::2]
    before = data[opens - 1]
    if opens[0] == 0:  # a quote starting the lines follows a line's start, as after a comma
        before[0] = ord(",")
    if not _FIELD_EDGE[before].all() or not _FIELD_EDGE[data[closes + 1]].all():
        return False  # (`lines` ends in a line end, so no quote is its last byte)
    line_ends = np.flatnonzero((data == ord("\n")) | (data == ord("\r")))
    return not (np.searchsorted(quotes, line_ends) % 2).any()  # no pair spans a line end


class LineCheck:
    """What the CSV's lines must be for its rows to be the same however the file is cut
    (whole, in the parser's blocks, or in splits, `linkage.landing.splits`): no quoted value
    running over a line's end (a line break in a value: the contract has none, and the
    parser splits such a row where its blocks fall), and no line over `MAX_LINE_BYTES`. Fed
    the file's bytes in order; `refusal` names the first line (1 is the header) that is not."""

    def __init__(self) -> None:
        self.lines = 0  # line feeds seen
        self.since = 0  # bytes of the current line seen so far
        self.pending = b""  # the current line's bytes so far
        self.refusal: str | None = None

    def feed(self, chunk: bytes) -> None:
        if self.refusal is not None or not chunk:
            return
        if len(chunk) > MAX_LINE_BYTES:  # a line within one piece is then within the limit
            for start in range(0, len(chunk), MAX_LINE_BYTES):
                self.feed(chunk[start:start + MAX_LINE_BYTES])
            return
        first = chunk.find(b"\n")
        if first < 0:
            first = len(chunk)
        if self.since + first > MAX_LINE_BYTES:
            self.refusal = (f"line {self.lines + 1} runs over {MAX_LINE_BYTES >> 20} MiB without "
                            "a line feed: rows must be shorter, each ending in LF or CRLF")
            return
        last = chunk.rfind(b"\n")
        if b'"' in chunk or b'"' in self.pending:
            self._quotes(chunk, last)
            if self.refusal is not None:
                return
        else:
            self.pending = chunk[last + 1:] if last >= 0 else self.pending + chunk
        self.since = len(chunk) - last - 1 if last >= 0 else self.since + len(chunk)
        self.lines += chunk.count(b"\n")

    def _quotes(self, chunk: bytes, last: int) -> None:
        """The complete lines of `chunk` (with the part of a line before it) checked at once,
        and line by line only to name a line that fails; the unfinished last line is kept."""
        if last < 0:
            self.pending += chunk
            return
        whole = self.pending + chunk[:last + 1]
        self.pending = chunk[last + 1:]
        if quoted_whole(whole) or _WHOLE_LINES.fullmatch(whole):
            return
        for offset, line in enumerate(whole[:-1].split(b"\n")):
            if not all(_WHOLE_LINE.fullmatch(part)
                       for part in line.removesuffix(b"\r").split(b"\r")):
                self.refusal = (f"line {self.lines + offset + 1}: a quoted value runs over the "
                                "line's end (a line break inside a value is not accepted)")
                return

    def finish(self) -> None:
        """The last line, when the file does not end in a line feed."""
        if self.refusal is None and b'"' in self.pending:
            self._quotes(b"\n", 0)


class Checksum:
    """A file's SHA-256, computed on a thread of its own (hashing releases the GIL) while the
    file is read for landing; `hexdigest` waits for it. With `lines`, the same pass checks a
    CSV's lines (`LineCheck`); `line_refusal` says what it found."""

    def __init__(self, path: Path, lines: bool = False) -> None:
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._lines = LineCheck() if lines else None
        self._path = path
        self.seen = _seen(path)  # the file as its hashing began
        self._thread = threading.Thread(target=self._run, args=(path,), name="landing-sha256",
                                        daemon=True)
        self._thread.start()

    def changed(self) -> bool:
        """Whether the file's size or modification time is not what they were when its
        hashing began (what was read, here or by Spark's tasks, may not be what was hashed),
        or it is gone."""
        try:
            return _seen(self._path) != self.seen
        except OSError:
            return True

    def _run(self, path: Path) -> None:
        try:
            self._digest = sha256_of(path, self._lines)
        except BaseException as exc:  # noqa: BLE001 - raised by `hexdigest` in the caller
            self._error = exc

    def line_refusal(self) -> str | None:
        """Why the CSV's lines refuse the file (`LineCheck`), once read; None if they do not."""
        self.hexdigest()
        return None if self._lines is None else self._lines.refusal

    def hexdigest(self) -> str:
        """The digest (hex), once computed; raises what computing it raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest


def _seen(path: Path) -> tuple[int, int]:
    found = path.stat()
    return found.st_size, found.st_mtime_ns


def is_parquet(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"PAR1"


def first_bad_utf8_row(path: Path) -> int | None:
    """The 0-based line (the header is line 0) holding the first byte that is not UTF-8, or
    None if all is. Read in 1 MiB chunks: a file without line feeds is not read whole."""
    with path.open("rb") as handle:
        return first_bad_utf8_line(iter(lambda: handle.read(1 << 20), b""))


def first_bad_utf8_line(chunks: Iterable[bytes]) -> int | None:
    """The 0-based line of the first byte that is not UTF-8 in `chunks` (a file's bytes in
    order, or a split's), or None if all is (a sequence cut short by the end is not
    counted: the decoder is never told the end has come)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 0
    for chunk in chunks:
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            # the bad sequence may have begun in the previous chunk: at worst 3 bytes
            # before this one, never across a line feed (which is never part of one)
            return line + chunk.count(b"\n", 0, max(exc.start, 0))
        line += chunk.count(b"\n")
    return None


def read_header(path: Path) -> list[str]:
    """The CSV header's column names, or FileRefused when there is none."""
    with path.open("rb") as handle:
        first = handle.readline(1 << 16)
    if not first.strip():
        raise FileRefused("the file is empty: no header row")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotText("the header row is not valid UTF-8") from exc
    names = [n.strip().strip('"').strip().lower() for n in text.rstrip("\r\n").split(",")]
    if len(set(names)) != len(names):
        raise FileRefused("the header row names a column twice")
    return names


def csv_options(names: list[str], on_invalid: Callable[[pacsv.InvalidRow], str],
                skip_rows: int) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions,
                                         pacsv.ConvertOptions]:
    """How an extract's CSV is parsed, whole (`csv_batches`) or in splits
    (`linkage.landing.splits`): every column text, no row split across lines."""
    read = pacsv.ReadOptions(column_names=names, skip_rows=skip_rows, use_threads=False,
                             block_size=1 << 22, encoding="utf8")
    parse = pacsv.ParseOptions(invalid_row_handler=on_invalid, newlines_in_values=False)
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
    return read, parse, convert


def csv_batches(path: Path, names: list[str], batch_rows: int,
                stats: ReadStats) -> Iterator[Batch]:
    """Yield batches from a CSV whose header is `names`; unsplittable rows go to stats."""
    line_of_invalid: list[int] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        line_of_invalid.append((row.number or 0) - 1)
        return "skip"

    read_options, parse, convert = csv_options(names, on_invalid, skip_rows=1)
    try:
        reader = pacsv.open_csv(path, read_options=read_options, parse_options=parse,
                                convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise _refusal(path, exc) from None
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    try:
        for record_batch in reader:
            pending.append(record_batch)
            pending_rows += record_batch.num_rows
            if pending_rows >= batch_rows:
                yield _numbered(pending, stats, line_of_invalid)
                pending, pending_rows = [], 0
    except pa.ArrowInvalid as exc:
        raise _refusal(path, exc) from None
    if pending:
        yield _numbered(pending, stats, line_of_invalid)
    stats.unsplittable.extend(line_of_invalid)
    stats.rows_seen += len(line_of_invalid)
    line_of_invalid.clear()


def _numbered(batches: list[pa.RecordBatch], stats: ReadStats,
              invalid: list[int]) -> Batch:
    """Number rows 1.. in file order, skipping the numbers of rows the parser could not split."""
    table = pa.Table.from_batches(batches)
    n = table.num_rows
    start = stats.rows_seen + 1
    # Each unsplittable row seen so far occupies a row number.
    skipped = np.array(sorted(r for r in invalid if r >= start), dtype=np.int64)
    candidates = np.arange(start, start + n + len(skipped), dtype=np.int64)
    numbers = candidates[~np.isin(candidates, skipped)][:n]
    last = int(numbers[-1]) if n else start - 1
    for row in skipped[skipped < last].tolist():  # passed over while numbering this batch
        stats.unsplittable.append(row)
        invalid.remove(row)
    stats.rows_seen = last
    return Batch(table, pa.array(numbers, pa.int64()))


def _refusal(path: Path, exc: Exception) -> FileRefused:
    message = str(exc)
    # A byte that is not UTF-8 in a row the parser cannot split fails the parser's own
    # handling of that row, with no word of UTF-8: the file is looked through either way.
    row = first_bad_utf8_row(path)
    if row is not None or "UTF8" in message or "utf8" in message.lower():
        where = f" (line {row + 1})" if row else ""
        return NotText(f"the file is not valid UTF-8{where}")
    return FileRefused("the file could not be parsed as CSV")


def parquet_batches(path: Path, batch_rows: int, stats: ReadStats) -> Iterator[Batch]:
    """Yield batches from a Parquet file with every column cast to text."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileRefused("the file could not be read as Parquet") from exc
    for record_batch in parquet.iter_batches(batch_size=batch_rows):
        table = as_text(record_batch)
        start = stats.rows_seen + 1
        stats.rows_seen += table.num_rows
        yield Batch(table, pa.array(range(start, start + table.num_rows), pa.int64()))


def as_text(record_batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """A Parquet batch with every column cast to text (nulls empty) and its names as the
    header's are read; FileRefused naming a column that cannot be text."""
    columns, names = [], []
    for name, column in zip(record_batch.schema.names, record_batch.columns, strict=True):
        names.append(name.strip().lower())
        if pa.types.is_date(column.type):
            column = column.cast(pa.string())
        elif not pa.types.is_string(column.type):
            try:
                column = column.cast(pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise FileRefused(f"column {name}: type {column.type} cannot be read as "
                                  "text") from exc
        columns.append(column.fill_null(""))
    return pa.Table.from_arrays(columns, names=names)


def parquet_columns(path: Path) -> list[str]:
    try:
        return [n.strip().lower() for n in pq.read_schema(path).names]
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileRefused("the file could not be read as Parquet") from exc
