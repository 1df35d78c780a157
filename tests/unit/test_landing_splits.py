"""An extract read in splits (linkage.landing.splits) gives what the whole-file reader gives:
the same rows, row numbers, unsplittable rows and refusals, wherever the cuts fall."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linkage.landing.reader import (
    MAX_LINE_BYTES,
    FileRefused,
    LineCheck,
    ReadStats,
    csv_batches,
    parquet_batches,
    quoted_whole,
    sha256_of,
)
from linkage.landing.splits import (
    count_split,
    csv_splits,
    numbered,
    parquet_splits,
    read_split,
    split_batches,
)

NAMES = ["a", "b", "c"]
SIZES = [1, 2, 5, 9, 13, 40, 1 << 20]
BATCH_ROWS = 3


def _whole(path: Path, parquet: bool = False) -> tuple[Any, ...]:
    """The reader's rows, numbers and stats, or its refusal."""
    stats = ReadStats()
    try:
        batches = list(parquet_batches(path, BATCH_ROWS, stats) if parquet
                       else csv_batches(path, NAMES, BATCH_ROWS, stats))
    except FileRefused as exc:
        return ("refused", str(exc))
    return _joined(batches) + (stats.rows_seen, sorted(stats.unsplittable))


def _split(path: Path, size: int) -> tuple[Any, ...]:
    splits = csv_splits(path, size)
    try:
        plan = numbered([count_split(path, NAMES, s) for s in splits])
    except FileRefused as exc:
        return ("refused", str(exc))
    batches = [b for s, first in zip(splits, plan.firsts, strict=True)
               for b in split_batches(path, NAMES, s, first, BATCH_ROWS)]
    assert all(b.table.num_rows <= BATCH_ROWS for b in batches)
    return _joined(batches) + (plan.rows_seen, sorted(plan.unsplittable))


def _joined(batches: list[Any]) -> tuple[Any, ...]:
    values: dict[str, list[Any]] = {}
    numbers: list[int] = []
    for batch in batches:
        for name, column in batch.table.to_pydict().items():
            values.setdefault(name, []).extend(column)
        numbers.extend(batch.rows.to_pylist())
    return (values, numbers)


FILES = {
    "plain": b"a,b,c\n1,2,3\n4,5,6\n7,8,9\n",
    "no final line feed": b"a,b,c\n1,2,3\n4,5,6\n7,8,9",
    "blank lines, crlf and unsplittable rows": (
        b"a,b,c\r\n1,2,3\r\n\r\n4,5\r\n\r\n\r\n6,7,8\r\n9,10,11,12\r\n13,14,15\r\n16\r\n"),
    "quoted commas and an unsplittable last row": (
        b'a,b,c\n"x,y",2,3\n\n"p","q,r","s"\n1,2\n'),
    "byte order mark and blank lines at the end": b"\xef\xbb\xbfa,b,c\n1,2,3\n\n\n",
    "header only": b"a,b,c\n",
    "header only, no line feed": b"a,b,c",
    "unsplittable rows only": b"a,b,c\n1\n2\n\n3,4\n",
    "a bad byte in a row": b"a,b,c\n1,2,3\n4,\xff,6\n7,8,9\n",
    "a bad byte in an unsplittable row before another": (
        b"a,b,c\n1,2,3\n\xfe\n4,5,6\n7,\xff,9\n"),
    "a sequence cut short by the end": b"a,b,c\n1,2,3\n4,5,\xc3",
    "a byte order mark starting a later line": b"a,b,c\n1,2,3\n\xef\xbb\xbf4,5,6\n",
    "a byte order mark alone on a line": b"a,b,c\n\n\xef\xbb\xbf\n1,2,3\n",
    "quotes kept inside a field": b'a,b,c\n5\'11",x,y\n"a"b,"c""d",e\n',
}


@pytest.mark.parametrize("name", list(FILES))
def test_a_csv_read_in_splits_is_read_as_whole(tmp_path: Path, name: str) -> None:
    path = tmp_path / "extract.csv"
    path.write_bytes(FILES[name])
    whole = _whole(path)
    for size in SIZES:
        assert _split(path, size) == whole, f"split size {size}"


def test_the_files_cover_what_they_are_named_for(tmp_path: Path) -> None:
    """The whole-file reader's answers for the trickiest files, so the comparison above
    compares something: numbers skip unsplittable rows and never blank lines, and a bad
    byte refuses the file at its data row."""
    path = tmp_path / "extract.csv"
    path.write_bytes(FILES["blank lines, crlf and unsplittable rows"])
    values, numbers, seen, unsplittable = _whole(path)
    assert values["a"] == ["1", "6", "13"] and numbers == [1, 3, 5]
    assert (seen, unsplittable) == (6, [2, 4, 6])
    path.write_bytes(FILES["a bad byte in a row"])
    assert _whole(path) == ("refused", "the file is not valid UTF-8 (line 3)")
    path.write_bytes(FILES["a bad byte in an unsplittable row before another"])
    assert _whole(path) == ("refused", "the file is not valid UTF-8 (line 3)")


def test_splits_end_after_a_line_feed_and_cover_the_file(tmp_path: Path) -> None:
    path = tmp_path / "extract.csv"
    data = b"a,b,c\n" + b"".join(f"{i},{i},{i}\n".encode() for i in range(500))
    path.write_bytes(data)
    for size in SIZES:
        splits = csv_splits(path, size)
        assert splits[0].start == 0 and splits[-1].end == len(data)
        assert all(s.end == t.start for s, t in zip(splits, splits[1:], strict=False))
        assert all(read_split(path, s).endswith(b"\n") for s in splits)
        # each at least `size` long, and longer only by what finishes its last line
        assert all(size <= s.end - s.start < size + 12 for s in splits[:-1])  # lines <= 12
    # about 100 bytes each (a line is 10 to 12): one a 100 bytes or so, no more
    assert len(data) // 112 <= len(csv_splits(path, 100)) <= len(data) // 100 + 1
    assert len(csv_splits(path, 1 << 20)) == 1


def _parquet(tmp_path: Path, columns: dict[str, pa.Array], group_rows: int) -> Path:
    path = tmp_path / "extract.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=group_rows)
    return path


def _parquet_split(path: Path) -> tuple[Any, ...]:
    splits, rows = parquet_splits(path)
    plan = numbered([_counted(n) for n in rows])
    try:
        batches = [b for s, first in zip(splits, plan.firsts, strict=True)
                   for b in split_batches(path, NAMES, s, first, BATCH_ROWS)]
    except FileRefused as exc:
        return ("refused", str(exc))
    return _joined(batches) + (plan.rows_seen, sorted(plan.unsplittable))


def _counted(rows: int) -> Any:
    from linkage.landing.splits import SplitCount

    return SplitCount(rows)


@pytest.mark.parametrize("group_rows", [1, 4, 5, 100])
def test_a_parquet_file_read_by_row_group_is_read_as_whole(tmp_path: Path,
                                                          group_rows: int) -> None:
    n = 11
    path = _parquet(tmp_path, {
        "A": pa.array([f"x{i}" if i % 4 else None for i in range(n)]),
        " b ": pa.array(range(n)),
        "c": pa.array([datetime.date(2024, 1, 1 + i) for i in range(n)])}, group_rows)
    whole = _whole(path, parquet=True)
    assert whole[1] == list(range(1, n + 1)) and whole[0]["a"][0] == ""
    assert sorted(whole[0]) == ["a", "b", "c"] and whole[0]["c"][2] == "2024-01-03"
    assert _parquet_split(path) == whole


def test_a_parquet_column_that_cannot_be_text_refuses_the_file_the_same_way(
        tmp_path: Path) -> None:
    path = _parquet(tmp_path, {"a": pa.array([[1], [2], [3]]), "b": pa.array(["x"] * 3),
                               "c": pa.array(["y"] * 3)}, 2)
    whole = _whole(path, parquet=True)
    assert whole[0] == "refused" and "column a" in whole[1]
    assert _parquet_split(path) == whole


def test_an_unreadable_parquet_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "extract.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(FileRefused, match="could not be read as Parquet"):
        parquet_splits(path)


def _line_refusal(data: bytes, chunk: int = 1 << 20) -> str | None:
    check = LineCheck()
    for start in range(0, len(data), chunk):
        check.feed(data[start:start + chunk])
    check.finish()
    return check.refusal


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_a_quoted_value_over_a_line_end_or_a_long_line_is_found(chunk: int) -> None:
    """What would make the rows depend on how the file is cut, found in the bytes as they
    are hashed, however they come (in chunks of 1 byte, 3, 1 MiB), naming the line."""
    ok = [b'a,b\n"x,y",2\n"p""q",r\n5\'11",z\n"a"b,c\r\n', b"a,b\n1,2", b'a,b\n"x"']
    for data in ok:
        assert _line_refusal(data, chunk) is None, data
    over = {b'a,b\n1,2\n"x\ny",2\n': 3, b'a,b\n1,"2\n': 2, b'a,b\n"x""\n': 2,
            b'a,b\nx"y,"z\n': 2, b'a,b\n1,2\n"x': 3, b'a,b\n"x\ry",2\n': 2}
    for data, line in over.items():
        why = _line_refusal(data, chunk)
        assert why is not None and why.startswith(f"line {line}: a quoted value runs over"), (
            data, why)


def test_the_array_check_accepts_only_lines_the_line_pattern_accepts() -> None:
    """`quoted_whole`, the fast check, may send a line to the pattern (`_WHOLE_LINES`) but
    never accepts one the pattern refuses (a property over 100,000 random lines of quotes,
    commas and line ends), and accepts the common forms on its own."""
    import random

    from linkage.landing.reader import _WHOLE_LINES

    rng = random.Random(11)
    accepted = 0
    for _ in range(100_000):
        data = bytes(rng.choice(b'a,""" \n\r,') for _ in range(rng.randint(0, 16))) + b"\n"
        if quoted_whole(data):
            accepted += 1
            assert _WHOLE_LINES.fullmatch(data), data
    assert accepted > 10_000
    for common in (b'"a","b",""\n"c",d,"e"\r\n', b"a,b\n", b'"a,b","c d"\n'):
        assert quoted_whole(common), common
    for odd in (b'a",",b\n', b'"a\n"\n', b'"a"b"\n', b'x"y",1\n', b'"a"'):
        assert not quoted_whole(odd), odd


def test_a_line_over_the_limit_is_found_wherever_the_chunks_fall() -> None:
    short = b"1," * (MAX_LINE_BYTES // 2 - 1) + b"1\n"  # MAX_LINE_BYTES - 1 bytes and its LF
    assert _line_refusal(b"a,b\n" + short + short) is None
    long_ = b"x" * (MAX_LINE_BYTES + 1)
    for data in (b"a,b\n" + long_ + b"\n", b"a,b\n" + short + long_, b"a\r1\r" + long_):
        for chunk in (1 << 20, 4096, 333_333):
            why = _line_refusal(data, chunk)
            assert why is not None and "runs over 1 MiB without a line feed" in why


def test_the_hash_is_the_file_s_whatever_the_line_check_finds(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "extract.csv"
    path.write_bytes(b'a,b\n"x\ny",2\n' * 1000)
    check = LineCheck()
    assert sha256_of(path, check) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert check.refusal is not None and check.refusal.startswith("line 2:")


def test_random_files_the_line_check_accepts_read_the_same_in_splits(tmp_path: Path) -> None:
    """A property, on 600 random files of a few awkward bytes (quotes, commas, CR, LF, a
    byte order mark's, a byte that is not UTF-8): for every file the landing does not refuse
    for its lines, the splits give what the whole-file reader gives, at every cut."""
    import random

    rng = random.Random(7)
    alphabet = [b",", b'"', b"\n", b"\r", b"a", b"1", b" ", b"\xff", b"\xef\xbb\xbf", b"\r\n"]
    path = tmp_path / "extract.csv"
    accepted = 0
    for _ in range(600):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        data = b"a,b,c\n" + body
        path.write_bytes(data)
        if _line_refusal(data) is not None:
            continue
        accepted += 1
        whole = _whole(path)
        for size in (1, 2, 5, 13):
            assert _split(path, size) == whole, (data, size)
    assert accepted > 150  # enough of them were compared


def test_a_batch_of_no_rows_asked_for_still_gives_every_row(tmp_path: Path) -> None:
    path = tmp_path / "extract.csv"
    path.write_bytes(b"a,b,c\n1,2,3\n4,5,6\n7,8,9\n")
    [split] = csv_splits(path)
    for rows in (0, -1):
        batches = list(split_batches(path, NAMES, split, 1, rows))
        assert [b.rows.to_pylist() for b in batches] == [[1], [2], [3]]
        assert [b.table.column("a").to_pylist() for b in batches] == [["1"], ["4"], ["7"]]


def test_no_split_is_cut_from_a_file_with_a_line_over_the_limit(tmp_path: Path) -> None:
    """A file without a line feed for over 1 MiB past a cut is refused as it is cut (the
    landing then names the line: `LineCheck`), not read whole into one split."""
    path = tmp_path / "extract.csv"
    path.write_bytes(b"a,b,c\n" + b"x" * (3 * MAX_LINE_BYTES) + b"\n1,2,3\n")
    with pytest.raises(FileRefused, match="runs over 1 MiB without a line feed"):
        csv_splits(path, 1000)


def test_the_first_byte_that_is_not_utf8_is_found_across_chunks(tmp_path: Path) -> None:
    """Read in 1 MiB chunks (a file without line feeds is not read whole), the line of the
    first bad byte, also when its sequence begins in one chunk and breaks in the next."""
    from linkage.landing.reader import first_bad_utf8_row

    path = tmp_path / "extract.csv"
    lines = [b"a,b,c"] + [b"1,2,3"] * 200_000  # about 1.2 MB
    at = (1 << 20) // 6  # the line holding byte 1 MiB
    lines[at] = b"1,2,\xe2\x82"  # a sequence cut short by its line's end
    for shift in range(6):
        data = b"\n".join([b"x" * shift + lines[0], *lines[1:]]) + b"\n"
        path.write_bytes(data)
        assert first_bad_utf8_row(path) == at
    path.write_bytes(b"a,b\n1,\xc3")  # cut short by the file's end: not counted
    assert first_bad_utf8_row(path) is None
