"""The link map's files: one Parquet file per extract, in a generation folder swapped in whole.

A generation (`Layout.map_generation`) holds `<extract_id>.parquet` (the map's rows of that
extract), `_persons/<extract_id>.parquet` (each pseudonym in it, its first row's person key and
its rows) and `_manifest.json` (the extracts in map order, with source, rows and rows per
method). `Layout.link_map` is a symlink to the current generation. An update writes the next
generation beside it, hard-linking the files it does not change, then swaps the symlink in one
rename and removes the old folder: a reader sees the old map or the new, never a mixture, and a
killed update leaves only folders that `partial` names and the next update removes.
The new generation is flushed to disk before the swap, and the swap before the old one goes.
A read of several passes or extracts pins one generation (`Pinned`: its files held open).
The symlink must name a `map-<token>` folder of the index and an extract id must be a plain
file name: nothing is read, written or removed outside the index.

Why: a month's refresh then writes the month's extracts and the few older ones whose rows it
changes, not the whole history; destroying an extract removes its files.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from governance.settings import Settings
from linkage.persons_file import PersonsOfFile, persons_part

MAP_SCHEMA = pa.schema([
    ("extract_id", pa.string()), ("source", pa.string()), ("row", pa.int64()),
    ("person_id", pa.string()), ("person_key", pa.string()), ("method", pa.string()),
    ("weight", pa.float64()), ("via_extract", pa.string()), ("client_key", pa.string()),
])
MANIFEST = "_manifest.json"
PERSONS = "_persons"
READ_ROWS = 1_000_000
PARTIAL_SUFFIXES = (".tmp", ".rekey", ".new")  # left behind by a killed run
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class MapBatch:
    """A batch of map rows already in `MAP_SCHEMA`, with its persons (`persons_part`'s
    table) when the caller has them at hand: written without a pandas frame."""

    table: pa.Table
    persons: pa.Table | None = None


@dataclass(frozen=True)
class Entry:
    """One extract's file in a generation: its source, rows and rows per linkage method."""

    extract_id: str
    source: str
    rows: int
    methods: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Generation:
    """A generation folder and its manifest's entries, in map order."""

    folder: Path
    entries: tuple[Entry, ...]

    def path(self, extract_id: str) -> Path:
        return self.folder / f"{safe_extract_id(extract_id)}.parquet"

    def persons(self, extract_id: str) -> Path:
        return self.folder / PERSONS / f"{safe_extract_id(extract_id)}.parquet"

    @property
    def rows(self) -> int:
        return sum(e.rows for e in self.entries)

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per source and method, from the manifest (no file is read)."""
        counted: dict[str, dict[str, int]] = {}
        for entry in self.entries:
            into = counted.setdefault(entry.source, {})
            for method, n in entry.methods.items():
                into[method] = into.get(method, 0) + n
        return counted


def current(settings: Settings, attempt: int = 0) -> Generation | None:
    """The current generation (None when nothing is indexed, or only a legacy single file)."""
    link = settings.layout.link_map
    if link.is_symlink():
        folder = _live_folder(link)
    elif link.is_dir():  # a home copied without its symlinks (shutil.copytree, cp -L)
        folder = link
    else:
        return None
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:  # swapped out and removed between the symlink and the manifest
        if attempt == 2:
            raise
        return current(settings, attempt + 1)
    return Generation(folder, tuple(Entry(**e) for e in manifest["extracts"]))


def _live_folder(link: Path) -> Path:
    """The generation folder the `link_map` symlink names, refused unless it is a folder of
    index/ named `map-<token>` (not a symlink itself): an update removes the generation it
    replaces, so a planted symlink must never lead a read or a removal out of the index."""
    name = os.readlink(link)
    folder = link.parent / name
    if (not SAFE_NAME.fullmatch(name) or not name.startswith("map-")
            or name.endswith(PARTIAL_SUFFIXES) or folder.is_symlink()):
        raise ValueError("index/link_map does not name a generation folder of index/ "
                         "(map-<token>, not a symlink): restore the symlink to the current "
                         "generation, or remove it and re-link from scratch")
    return folder


def safe_extract_id(extract_id: str) -> str:
    """An extract id usable as a map file's name (letters, digits, `.`, `_`, `-`, not
    starting with `.` or `_`), else a ValueError naming the field: a map file is written
    inside its generation folder, never beside or above it."""
    if not SAFE_NAME.fullmatch(extract_id) or extract_id[0] in "._":
        raise ValueError("link map row: extract_id is not a plain file name (letters, digits, "
                         "'.', '_', '-'; not starting with '.' or '_'): refused")
    return extract_id


def exists(settings: Settings) -> bool:
    """Whether an index has been written (a generation, or a legacy single file)."""
    link = settings.layout.link_map
    return link.is_symlink() or link.is_dir() or settings.layout.legacy_link_map.exists()


def files(settings: Settings) -> list[Path]:
    """The map's Parquet files in map order (the legacy single file if that is what there is)."""
    generation = current(settings)
    if generation is not None:
        return [generation.path(e.extract_id) for e in generation.entries]
    legacy = settings.layout.legacy_link_map
    return [legacy] if legacy.exists() else []


def batches(settings: Settings, columns: Sequence[str] | None = None,
            batch_rows: int = READ_ROWS) -> Iterator[pa.RecordBatch]:
    """The whole map a batch at a time, in map order, from one generation (pinned: a link
    swapping in another meanwhile neither fails the read nor mixes the two)."""
    with Pinned(settings) as pinned:
        yield from pinned.batches(columns, batch_rows)


def hard_linked(settings: Settings, into: Path) -> dict[str, Path] | Path | None:
    """The current generation's files hard-linked into `into` (made here, on the data
    directory's filesystem), for processes that cannot share this one's open files (Spark's
    executors): they read one generation whole though an update swaps in another and removes
    it meanwhile, as `Pinned` does for this process (a hard link outlives the name it was
    made from, and a generation's files never change in place). Extract id -> file; the
    legacy single file; None when nothing is indexed."""
    for attempt in range(3):
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        try:
            generation = current(settings)
            if generation is None:
                legacy = settings.layout.legacy_link_map
                if not legacy.exists():
                    return None
                os.link(legacy, into / "legacy.parquet")
                return into / "legacy.parquet"
            linked = {}
            for entry in generation.entries:
                target = into / f"{safe_extract_id(entry.extract_id)}.parquet"
                os.link(generation.path(entry.extract_id), target)
                linked[entry.extract_id] = target
            return linked
        except FileNotFoundError:  # an update swapped generations while this linked
            if attempt == 2:
                raise
    return None  # not reached


class Pinned:
    """One generation's files, every one opened at once and held open: a read of several
    passes (or of one extract, then another) sees that generation whole, though an update
    swaps a new one in and removes it meanwhile (an open file outlives its last name)."""

    def __init__(self, settings: Settings) -> None:
        self.handles: list[BinaryIO] = []
        for attempt in range(3):
            try:
                generation = current(settings)
                ids = [e.extract_id for e in generation.entries] if generation else []
                paths = [generation.path(e) for e in ids] if generation else files(settings)
                for path in paths:
                    self.handles.append(path.open("rb"))
                break
            except FileNotFoundError:  # an update swapped generations while this opened
                self.close()
                if attempt == 2:
                    raise
        self.legacy = generation is None
        self.by_extract = {} if self.legacy else dict(zip(ids, self.handles, strict=True))

    def files(self) -> Iterator[pq.ParquetFile]:
        """The map's files in map order, each opened as it is reached and readable any number
        of times. A file is let go once the next is asked for: a `ParquetFile` read through
        holds memory of its reading until it goes (reading a 3M persons' map through: 1.6 GB
        with its 13 files held at once, 0.8 GB one at a time)."""
        for handle in self.handles:
            yield pq.ParquetFile(handle)

    def extract(self, extract_id: str) -> BinaryIO | None:
        """The open file holding an extract's rows (the single file of an older home, to
        filter on `extract_id`), for `pq.read_table`; None when the map holds none."""
        if self.legacy:
            return self.handles[0] if self.handles else None
        return self.by_extract.get(extract_id)

    def batches(self, columns: Sequence[str] | None = None,
                batch_rows: int = READ_ROWS) -> Iterator[pa.RecordBatch]:
        """The pinned map a batch at a time, in map order (as `batches`)."""
        for parquet in self.files():
            yield from parquet.iter_batches(batch_size=batch_rows,
                                            columns=list(columns) if columns else None)

    def close(self) -> None:
        """Close every file (the generation's rows are freed if it was removed meanwhile)."""
        for handle in self.handles:
            handle.close()
        self.handles = []

    def __enter__(self) -> Pinned:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_table(settings: Settings, columns: Sequence[str] | None = None,
               filters: pc.Expression | None = None) -> pa.Table:
    """The map's rows (those `filters` keeps), as one table with the map's schema."""
    names = list(columns) if columns else MAP_SCHEMA.names
    schema = pa.schema([MAP_SCHEMA.field(c) for c in names])
    for attempt in range(3):
        try:
            parts = [pq.read_table(p, columns=names, filters=filters) for p in files(settings)]
            break
        except FileNotFoundError:  # an update swapped generations while this read: again
            if attempt == 2:
                raise
    return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()


def partial(settings: Settings) -> list[Path]:
    """What a killed update or key rotation left in the index: half-written files and
    folders, and generation folders that are not the current one (any may hold rows of any
    extract: destruction counts them as left over until they are removed), and the single-file
    map of an older home once a generation holds its rows (a split killed before removing
    it). A `link_map` symlink leading out of the index is refused (ValueError) before
    anything is named: every generation folder would look stale beside it."""
    folder = settings.layout.index_dir
    if not folder.exists():
        return []
    link = settings.layout.link_map
    live = _live_folder(link).name if link.is_symlink() else None  # (a copied home: a folder)
    found = []
    for path in folder.iterdir():
        stale = path.name.startswith("map-") and path.is_dir() and path.name != live
        if path.suffix in PARTIAL_SUFFIXES or stale:
            found.append(path)
    legacy = settings.layout.legacy_link_map
    if legacy.exists() and (link.is_symlink() or link.is_dir()):
        found.append(legacy)
    return sorted(found)


def remove(path: Path) -> None:
    """Remove a file, symlink or folder."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class NextGeneration:
    """The next generation, written beside the current one and swapped in by `commit`.

    `keep` hard-links an unchanged extract's files from the current generation; `write`
    writes an extract's rows (and its persons) afresh. Entries go to the manifest in the
    order they were kept or written."""

    def __init__(self, settings: Settings, base: Generation | None) -> None:
        self.settings = settings
        self.base = base
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.token = f"{stamp}-{secrets.token_hex(4)}"
        self.final = settings.layout.map_generation(self.token)
        self.folder = self.final.with_name(self.final.name + ".tmp")
        (self.folder / PERSONS).mkdir(parents=True)
        self.entries: list[Entry] = []

    def path(self, extract_id: str) -> Path:
        return self.folder / f"{safe_extract_id(extract_id)}.parquet"

    def persons(self, extract_id: str) -> Path:
        return self.folder / PERSONS / f"{safe_extract_id(extract_id)}.parquet"

    def keep(self, entry: Entry) -> None:
        """Take an extract's files unchanged from the current generation (hard links)."""
        assert self.base is not None
        os.link(self.base.path(entry.extract_id), self.path(entry.extract_id))
        os.link(self.base.persons(entry.extract_id), self.persons(entry.extract_id))
        self.entries.append(entry)

    def write(self, extract_id: str, source: str,
              frames: Iterable[pd.DataFrame | MapBatch]) -> Entry:
        """Write an extract's map rows (frames with the map's columns, or `MapBatch`es) and
        its persons."""
        methods: dict[str, int] = {}
        persons = PersonsOfFile(self.folder, safe_extract_id(extract_id))
        rows = 0
        columns = MAP_SCHEMA.names
        try:
            with pq.ParquetWriter(self.path(extract_id), MAP_SCHEMA,
                                  compression="zstd") as writer:
                for frame in frames:
                    if isinstance(frame, MapBatch):
                        table, part = frame.table, frame.persons
                        counted = pc.value_counts(table["method"])
                        counts = zip(counted.field("values").to_pylist(),
                                     counted.field("counts").to_pylist(), strict=True)
                    else:
                        table = pa.Table.from_pandas(frame[columns], schema=MAP_SCHEMA,
                                                     preserve_index=False)
                        part = None
                        counts = frame["method"].value_counts(sort=False).items()
                    for method, n in counts:
                        methods[str(method)] = methods.get(str(method), 0) + int(n)
                    rows += table.num_rows
                    persons.add(persons_part(table) if part is None else part)
                    writer.write_table(table)
            persons.write(self.persons(extract_id))
        finally:
            persons.close()
        entry = Entry(extract_id, source, rows, methods)
        self.entries.append(entry)
        return entry

    def commit(self) -> Generation:
        """Swap the new generation in (one rename of the symlink) and remove the old one."""
        layout = self.settings.layout
        manifest = {"extracts": [asdict(e) for e in self.entries]}
        (self.folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        _durable(self.folder)
        os.rename(self.folder, self.final)
        pointer = layout.link_map.with_name(layout.link_map.name + ".new")
        pointer.unlink(missing_ok=True)
        os.symlink(self.final.name, pointer)
        old = self.base.folder if self.base is not None else None
        if layout.link_map.is_dir() and not layout.link_map.is_symlink():
            # a copied home's generation, a folder in the symlink's place: moved aside first
            old = layout.map_generation(f"{self.token}-copied")
            os.rename(layout.link_map, old)
        os.replace(pointer, layout.link_map)
        _durable_folder(layout.index_dir)  # the swap on disk before the old map goes
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        layout.legacy_link_map.unlink(missing_ok=True)
        return Generation(self.final, tuple(self.entries))

    def abandon(self) -> None:
        """Remove what was written (the current generation is untouched)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _durable(folder: Path) -> None:
    """Every file and folder of a generation flushed to disk before it is swapped in: after
    a power cut the symlink must not name a generation of empty files while the old one,
    and the person keys it kept, are gone."""
    for path in sorted(folder.rglob("*")):
        _durable_folder(path)
    _durable_folder(folder)


def _durable_folder(path: Path) -> None:
    """One file or folder flushed to disk (a folder: the names in it)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def split_legacy(settings: Settings) -> int:
    """A home's single-file map (as homes linked before generations hold it) split into a
    generation, rows and order unchanged, streamed; returns the rows moved (0 if none).
    An extract's rows are one run in such a map (an update appended each extract whole)."""
    legacy = settings.layout.legacy_link_map
    link = settings.layout.link_map
    if not legacy.exists() or link.is_symlink() or link.is_dir():
        return 0
    generation = NextGeneration(settings, None)
    try:
        runs = _runs(pq.ParquetFile(legacy).iter_batches(batch_size=READ_ROWS))
        for extract_id, parts in itertools.groupby(runs, key=lambda run: run[0]):
            if generation.path(extract_id).exists():
                raise ValueError("the single-file link map holds an extract's rows in more "
                                 "than one run; re-link from scratch (haven link after "
                                 "removing index/link_map.parquet)")
            frames = (frame for _, frame in parts)
            first = next(frames)
            generation.write(extract_id, str(first["source"].iloc[0]),
                             itertools.chain([first], frames))
        generation.commit()
    except BaseException:
        generation.abandon()
        raise
    return sum(e.rows for e in generation.entries)


def _runs(source: Iterable[pa.RecordBatch]) -> Iterator[tuple[str, pd.DataFrame]]:
    """Consecutive runs of one extract's rows, batch by batch."""
    for batch in source:
        frame = batch.to_pandas()
        ids = frame["extract_id"].to_numpy(dtype=object)
        if not len(ids):
            continue
        bounds = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
        for start, end in itertools.pairwise(bounds):
            yield str(ids[start]), frame.iloc[start:end]
