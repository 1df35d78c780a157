"""The person index: every landed row mapped to one person key, built and then updated in place.

How a row is linked, strongest first:
1. `nhs_number`: rows with a valid NHS number share their pseudonym's person.
2. `client`: social care rows of one council client (same keyed `client_id`) are one person,
   and take the pseudonym any of them carries.
3. `probabilistic`: rows with no valid NHS number are compared, on their keyed encodings only,
   with the person profiles (register rows that carry both a pseudonym and encodings:
   `gp_patients`, `social_care`) by the engine in `linkage/probabilistic/`. Links above the
   upper threshold are taken; those in the review band go to the review list, never silently in.
4. `unlinked`: anything else keeps a person key of its own.
A person key is `P` + a keyed hash of the person's pseudonym (or, for unlinked rows, of their
first row), so it is stable while nothing it depends on changes.

Incremental: `update` links only the extracts not yet indexed, plus rows still unlinked (a new
register may now place them); `forget_extracts` drops destroyed extracts' rows and re-links
the rows whose link rested on them (`via_extract`: the profile's extract for a probabilistic
link, the carrier's for a client link); `forget_rows` does the same for rows an opt-out purge
removed. `leftovers` measures what the index still holds of given extracts (destruction
certifies that measurement, not what was asked for).

Storage (`linkage.map_store`): one Parquet file per extract in a generation folder. An update
writes the next generation: new extracts' files, and the files of extracts whose rows change
(rows purged, links resting on a destroyed extract, social care's client links, rows given a
probabilistic link); every other extract's files are the current ones, hard-linked, so a
month's refresh writes the month and what it changed, not the history.

Memory: `update` reads the extracts it writes twice, `PASS_ROWS` rows at a time: a survey
pass that finds the rows to link and the client rows, then a writing pass. A new extract's
rows go through both in Arrow (`_new_tables`, `_Survey.take_new`, `_map_batch`), and so do
the rows of an extract rewritten only to take new links through the writing pass
(`_map_tables`); extracts whose rows leave or lose links, and social care's, go as frames.
Of the others it reads their persons files and their unlinked rows. It holds a batch, the
social care client rows, each pseudonym's person key (`KeptKeys`, about 90 bytes a person)
and what the probabilistic step reads (a bucket of the register's profiles and the pending
rows): it grows with persons, not rows. An extract's persons file is made out of core
(`linkage.persons_file`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine, select

from governance import store
from governance.drift_policy import load_drift
from governance.keys import Key
from governance.schema import extracts
from governance.settings import Settings
from linkage import kept_models, map_store
from linkage.index_matching import (
    PROFILE_SOURCES,
    Matched,
    Matcher,
    Register,
    landed_rows,
    match_pending,
    registered_persons,
)
from linkage.landing.pseudonymise import keyed_hashes
from linkage.map_store import MAP_SCHEMA
from linkage.persons_file import PERSONS_SCHEMA
from linkage.profile_store import ProfileStore
from linkage.pseudonym_table import PseudonymTable

BATCH_ROWS = 1_000_000
# Rows a batch of the survey and the writing pass: their per-row frames of Python objects
# (a million rows a batch took the survey 0.9 GB over its start at a million persons).
PASS_ROWS = 250_000
MEMO_PERSONS = 250_000  # person keys remembered between batches of the writing pass


def partial_files(settings: Settings) -> list[Path]:
    """What a killed update or key rotation left half-written in the index (it may hold rows
    of any extract: destruction counts it as left over until it is removed)."""
    return map_store.partial(settings)


def discard_partial_files(settings: Settings) -> int:
    """Remove what a killed run left half-written in the index, under the index lock."""
    with store.data_lock(settings, "index"):
        return clear_partial_files(settings)


def clear_partial_files(settings: Settings) -> int:
    """Remove what a killed run left half-written in the index (the caller holds the lock)."""
    found = partial_files(settings)
    for path in found:
        map_store.remove(path)
    return len(found)


@dataclass
class LinkSummary:
    """What a linkage run did, per source and method, and its quality estimates."""

    extracts_added: list[str] = field(default_factory=list)
    extracts_removed: list[str] = field(default_factory=list)
    rows: int = 0
    by_source_method: dict[str, dict[str, int]] = field(default_factory=dict)
    review_pairs: int = 0
    quality: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def read_link_map(settings: Settings, columns: list[str] | None = None) -> pd.DataFrame:
    """The current link map (empty frame with the schema when nothing is indexed yet)."""
    return map_store.read_table(settings, columns).to_pandas()


def indexed_extracts(settings: Settings) -> list[str]:
    """The extracts the map holds rows of, sorted (from the manifest)."""
    generation = map_store.current(settings)
    if generation is None:
        return sorted(set(pc.unique(map_store.read_table(
            settings, ["extract_id"]).column("extract_id")).to_pylist()))
    return sorted(e.extract_id for e in generation.entries if e.rows)


def link_rows(settings: Settings, column: str, values: Sequence[str]) -> list[dict]:
    """(person_id, person_key) of the index rows whose `column` is one of `values`, rows
    without a pseudonym left out."""
    if not values:
        return []
    table = map_store.read_table(settings, ["person_id", "person_key"],
                                 pc.field(column).isin(pa.array(list(values), pa.string())))
    return table.filter(pc.is_valid(table.column("person_id"))).to_pylist()


def pseudonyms_behind_bare_rows(settings: Settings, batch_rows: int = 1_000_000
                                ) -> pd.DataFrame:
    """(person_key, person_id) of every person with a row that carries no pseudonym of its
    own (linked probabilistically or by client id, or unlinked: any method but `nhs_number`;
    the map gives such a row its person's pseudonym): every pseudonym the index gives them,
    sorted (Arrow's grouping uses threads, so its order is not fixed).

    Read in two streaming passes over the link map (the keys, then their pseudonyms), so
    memory holds those persons' pairs, not the map; both passes read one generation
    (`map_store.Pinned`), though an update swaps another in between them.
    """
    with map_store.Pinned(settings) as pinned:
        return _bare_pairs(pinned, batch_rows)


def _bare_pairs(pinned: map_store.Pinned, batch_rows: int) -> pd.DataFrame:
    """`pseudonyms_behind_bare_rows` over a pinned generation."""
    empty = pd.DataFrame({"person_key": pd.Series(dtype=object),
                          "person_id": pd.Series(dtype=object)})
    keys: set[str] = set()
    for batch in pinned.batches(["person_key", "method"], batch_rows):
        bare = pc.not_equal(batch.column("method"), "nhs_number")
        keys.update(pc.unique(pc.filter(batch.column("person_key"), bare)).to_pylist())
    keys.discard(None)
    if not keys:
        return empty
    wanted = pa.array(sorted(keys), pa.string())
    del keys
    found: list[pa.Table] = []
    held, fold_at = 0, batch_rows
    for batch in pinned.batches(["person_key", "person_id"], batch_rows):
        table = pa.Table.from_batches([batch])
        table = table.filter(pc.and_(pc.is_in(table.column("person_key"), value_set=wanted),
                                     pc.is_valid(table.column("person_id"))))
        found.append(_distinct_pairs([table]))
        held += found[-1].num_rows
        if held > fold_at:  # the pairs met so far folded into distinct pairs: what is held
            found = [_distinct_pairs(found)]  # is about twice those, not every batch's
            held = found[0].num_rows
            # the next fold waits for at least as many new pairs as it keeps: linear work
            fold_at = max(batch_rows, 2 * held)
    pairs = _distinct_pairs(found).sort_by([("person_key", "ascending"),
                                            ("person_id", "ascending")])
    return pairs.to_pandas() if pairs.num_rows else empty


def _distinct_pairs(tables: list[pa.Table]) -> pa.Table:
    """The distinct (person_key, person_id) rows of `tables`."""
    return pa.concat_tables(tables).group_by(["person_key", "person_id"]).aggregate([])


def person_keys(person_ids: pa.Array, key: Key, memo: dict[str, str] | None = None
                ) -> pa.Array:
    """Person key of each pseudonym: `P` + 20 hex of a keyed hash (a second pseudonym domain);
    `memo` carries hashes already made from one batch to the next."""
    hashed = keyed_hashes(person_ids, key, domain="person_key", length=20, memo=memo)
    return pc.binary_join_element_wise(pa.scalar("P"), hashed, "")


def landed_extracts(engine: Engine) -> pd.DataFrame:
    """The extracts landed now: extract_id, source, sender and rows_landed (lowered by a
    purge, which is how a kept linkage model learns its training rows changed)."""
    with engine.connect() as connection:
        rows = connection.execute(select(extracts.c.extract_id, extracts.c.source,
                                         extracts.c.sender, extracts.c.rows_landed)
                                  .where(extracts.c.status == "landed")).all()
    return pd.DataFrame(rows, columns=["extract_id", "source", "sender", "rows_landed"])


def _write(settings: Settings, target: Path, table: pa.Table) -> None:
    settings.layout.index_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, target)


def _rows_in(frame: pd.DataFrame, rows: dict[str, Sequence[int]], extract: str = "extract_id",
             row: str = "row") -> np.ndarray:
    """Mask of `frame`'s rows whose (extract, row) is one of `rows` ({extract_id: rows})."""
    wanted = pd.MultiIndex.from_tuples(
        [(e, int(r)) for e, listed in rows.items() for r in listed], names=["e", "r"])
    if frame.empty or wanted.empty:
        return np.zeros(len(frame), dtype=bool)
    found = pd.MultiIndex.from_arrays([frame[extract].astype(object),
                                       frame[row].astype("int64")])
    return np.asarray(found.isin(wanted), dtype=bool)


@dataclass
class _Plan:
    """What an update changes: extracts gone and new, rows purged (and the extracts holding
    them), whether registers changed."""

    new: pd.DataFrame
    gone: list[str]
    drop_rows: dict[str, Sequence[int]]
    purged: set[str] = field(default_factory=set)
    profiles_changed: bool = False

    def touched(self, entry: map_store.Entry) -> bool:
        """Whether an extract already in the map is read whole and rewritten: its rows may
        leave (purged) or lose their link (a destroyed extract's), or it holds client rows
        (social care: client links are made across extracts each run)."""
        return bool(self.gone) or entry.extract_id in self.purged or entry.source == "social_care"


class KeptKeys:
    """Each pseudonym's person key as the map gives it (its first row's), gathered a batch at
    a time in Arrow and looked up through a `PseudonymTable`: a million persons' keys as a
    dict of Python strings cost a quarter of a gigabyte that stayed with the process."""

    def __init__(self) -> None:
        self.ids: list[pa.Array] = []
        self.keys: list[pa.Array] = []
        self.seen: pa.Array | None = None
        self.table: PseudonymTable | None = None

    def add(self, rows: pa.Table | pd.DataFrame) -> None:
        """Keys of the pseudonyms of `rows` (person_id, person_key) not seen in an earlier
        batch (first row's wins), found in Arrow: a persons file read as a frame of Python
        strings took 11 s of a month's link at a million persons."""
        if isinstance(rows, pd.DataFrame):
            rows = pa.table({c: pa.array(rows[c].to_numpy(dtype=object), pa.string(),
                                         from_pandas=True)
                             for c in ("person_id", "person_key")})
        ids = rows.column("person_id").combine_chunks().cast(pa.string())
        keys = rows.column("person_key").combine_chunks().cast(pa.string())
        known = pc.is_valid(ids)
        ids, keys = ids.filter(known), keys.filter(known)
        codes = pc.dictionary_encode(ids).indices.to_numpy(zero_copy_only=False)
        first = np.sort(np.unique(codes, return_index=True)[1])  # each one's first row
        ids, keys = ids.take(pa.array(first)), keys.take(pa.array(first))
        if self.seen is not None and len(self.seen):
            fresh = pc.invert(pc.is_in(ids, value_set=self.seen))
            ids, keys = ids.filter(fresh), keys.filter(fresh)
        self.ids.append(ids)
        self.keys.append(keys)
        self.seen = pa.concat_arrays([a for a in (self.seen, ids) if a is not None])

    def freeze(self) -> PseudonymTable | None:
        """The table of every key gathered (None if none was)."""
        self.seen = None
        if any(len(a) for a in self.ids):
            self.table = PseudonymTable.from_arrow(pa.chunked_array(self.ids, pa.string()),
                                                   pa.chunked_array(self.keys, pa.string()))
        self.ids, self.keys = [], []
        return self.table


def _kept_keys(base: map_store.Generation | None) -> KeptKeys:
    """Each pseudonym's person key from the current generation's persons files, in map order,
    destroyed extracts' included (keys already given to persons stay theirs, also across a
    key rotation): a file's persons, not its rows, are read."""
    kept = KeptKeys()
    for entry in base.entries if base is not None else ():
        kept.add(pq.read_table(base.persons(entry.extract_id),
                               columns=["person_id", "person_key"]))
    return kept


def _old_frames(base: map_store.Generation, entry: map_store.Entry, plan: _Plan,
                batch_rows: int) -> Iterator[pd.DataFrame]:
    """A touched extract's map rows that stay, a batch at a time, those whose link rested on
    a destroyed extract (probabilistic or client) reset to unlinked and marked `retry`."""
    gone = set(plan.gone)
    for batch in pq.ParquetFile(base.path(entry.extract_id)).iter_batches(
            batch_size=batch_rows):
        frame = batch.to_pandas()
        leaving = _rows_in(frame, plan.drop_rows)
        # Links to a purged row's pseudonym are kept: they are that person's rows, and the
        # objection covers them.
        retry = frame["via_extract"].isin(gone).to_numpy()
        if gone:
            retry |= (frame["method"] == "client").to_numpy()
        frame = frame[~leaving]
        frame["retry"] = retry[~leaving]
        frame["new"] = False
        if frame["retry"].any():
            for column, value in (("method", "unlinked"), ("person_id", None),
                                  ("weight", np.nan), ("via_extract", None)):
                frame.loc[frame["retry"], column] = value
        yield frame.reset_index(drop=True)


def _new_frames(settings: Settings, extract_id: str, source: str, batch_rows: int
                ) -> Iterator[pd.DataFrame]:
    """A new extract's rows, a batch at a time: linked by NHS number where they carry a
    pseudonym, else unlinked; social care rows carry their keyed client id."""
    path = settings.layout.rows(extract_id)
    names = pq.read_schema(path).names
    wanted = ["extract_id", "row"] + [c for c in ("person_id", "record_key") if c in names]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=wanted):
        rows = batch.to_pandas()
        frame = pd.DataFrame({
            "extract_id": rows["extract_id"], "source": source, "row": rows["row"],
            "person_id": rows.get("person_id"),
            "person_key": None, "method": "unlinked", "weight": np.nan,
            "via_extract": None, "client_key": None, "retry": False, "new": True,
        })
        frame.loc[frame["person_id"].notna(), "method"] = "nhs_number"
        if source == "social_care" and "record_key" in rows:
            frame["client_key"] = rows["record_key"].to_numpy()
        yield frame


def _new_tables(settings: Settings, extract_id: str, source: str, batch_rows: int
                ) -> Iterator[pa.Table]:
    """`_new_frames` as Arrow tables in `MAP_SCHEMA` (person keys still null), for the
    survey and the writing pass: no Python object per row (at a million persons the two
    passes spent about half their time making and converting frames of objects)."""
    path = settings.layout.rows(extract_id)
    names = pq.read_schema(path).names
    wanted = ["extract_id", "row"] + [c for c in ("person_id", "record_key") if c in names]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=wanted):
        n = batch.num_rows
        nothing = pa.nulls(n, pa.string())
        person_id = (batch.column("person_id").cast(pa.string()) if "person_id" in names
                     else nothing)
        client = (batch.column("record_key").cast(pa.string())
                  if source == "social_care" and "record_key" in names else nothing)
        yield pa.table([
            batch.column("extract_id").cast(pa.string()), pa.repeat(pa.scalar(source), n),
            batch.column("row").cast(pa.int64()), person_id, nothing,
            pc.if_else(pc.is_valid(person_id), "nhs_number", "unlinked"),
            pa.nulls(n, pa.float64()), nothing, client], schema=MAP_SCHEMA)


class _RowLinks:
    """Links keyed by (extract, row), found for a batch of one extract's rows by a binary
    search on that extract's rows (the Arrow counterpart of `_found_rows`)."""

    TYPES = {"person_id": pa.string(), "method": pa.string(), "via_extract": pa.string(),
             "weight": pa.float64()}

    def __init__(self, frame: pd.DataFrame | None, columns: list[str]) -> None:
        self.of: dict[str, tuple[np.ndarray, pa.Table]] = {}
        if frame is None or frame.empty:
            return
        schema = pa.schema([(c, self.TYPES[c]) for c in columns])
        for extract_id, part in frame.groupby("extract_id", sort=False):
            part = part.sort_values("row", kind="stable")
            self.of[str(extract_id)] = (
                part["row"].to_numpy(dtype=np.int64),
                pa.Table.from_pandas(part[columns], schema=schema, preserve_index=False))

    def spread(self, extract_id: str, rows: np.ndarray, asked: np.ndarray
               ) -> tuple[pa.Array, dict[str, pa.Array]] | None:
        """Of the rows under `asked`, which have a link (a boolean array over the batch),
        and the links' columns over the batch (null elsewhere); None if none has."""
        held = self.of.get(extract_id)
        if held is None or not asked.any():
            return None
        known, values = held
        at = np.minimum(np.searchsorted(known, rows), len(known) - 1)
        found = asked & (known[at] == rows)
        if not found.any():
            return None
        taken = values.take(pa.array(at, mask=~found))
        return pa.array(found), {name: taken.column(name).combine_chunks()
                                 for name in taken.column_names}


def _map_batch(table: pa.Table, clients: _RowLinks, links: _RowLinks, key: Key,
               kept: PseudonymTable | None, memo: dict[str, str]) -> map_store.MapBatch:
    """A batch of map rows (a new extract's, `_new_tables`, or an untouched extract's,
    `_map_tables`) given its client and probabilistic links and its person keys, with its
    persons: what `finished` makes of the same rows as a frame through `_apply_clients`,
    `_apply_links` and `_assign_keys`, value for value, in Arrow."""
    table = table.combine_chunks()
    column = {name: table.column(name).chunk(0) if table.column(name).num_chunks
              else pa.array([], table.schema.field(name).type) for name in MAP_SCHEMA.names}
    extract_id = column["extract_id"][0].as_py() if table.num_rows else ""
    rows = column["row"].to_numpy(zero_copy_only=False)
    found = clients.spread(extract_id, rows,
                           pc.is_valid(column["client_key"]).to_numpy(zero_copy_only=False))
    if found is not None:
        has, got = found
        for name in ("person_id", "method", "via_extract", "weight"):
            column[name] = pc.if_else(has, got[name], column[name])
    found = links.spread(extract_id, rows,
                         pc.is_null(column["person_id"]).to_numpy(zero_copy_only=False))
    if found is not None:
        has, got = found
        for name in ("person_id", "via_extract", "weight"):
            column[name] = pc.if_else(has, got[name], column[name])
        column["method"] = pc.if_else(has, pa.scalar("probabilistic"), column["method"])
    person_id = column["person_id"]
    anchor = person_id
    if anchor.null_count:
        anchor = pc.coalesce(anchor, pc.binary_join_element_wise(
            "client:", column["client_key"], ""))
    if anchor.null_count:
        anchor = pc.coalesce(anchor, pc.binary_join_element_wise(
            "row:", column["extract_id"], ":", column["row"].cast(pa.string()), ""))
    encoded = pc.dictionary_encode(anchor)
    person_key = person_keys(encoded.dictionary, key, memo).take(encoded.indices)
    if kept is not None:
        person_key = pc.coalesce(kept.lookup_arrow(person_id), person_key)
    column["person_key"] = person_key
    out = pa.table([column[name] for name in MAP_SCHEMA.names], schema=MAP_SCHEMA)
    return map_store.MapBatch(out, _persons_of(encoded, person_id, person_key))


def _persons_of(encoded: pa.DictionaryArray, person_id: pa.Array, person_key: pa.Array
                ) -> pa.Table:
    """`persons_file.persons_part` of a batch whose anchors are `encoded` (a row with a
    pseudonym is anchored on it): grouped on the anchors' codes, not on the text again."""
    known = pc.is_valid(person_id).to_numpy(zero_copy_only=False)
    codes = encoded.indices.to_numpy(zero_copy_only=False)[known]
    distinct, first, counts = np.unique(codes, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return pa.table([encoded.dictionary.take(pa.array(distinct[order])),
                     person_key.filter(pa.array(known)).take(pa.array(first[order])),
                     pa.array(counts[order], pa.int64())], schema=PERSONS_SCHEMA)


def _map_tables(base: map_store.Generation, entry: map_store.Entry, batch_rows: int
                ) -> Iterator[pa.Table]:
    """An extract's map rows as they are, a batch at a time (what `_old_frames` gives of
    an extract the update does not touch: no row leaves, no link is reset)."""
    for batch in pq.ParquetFile(base.path(entry.extract_id)).iter_batches(
            batch_size=batch_rows):
        yield pa.Table.from_batches([batch]).cast(MAP_SCHEMA)


def _in_scope(frame: pd.DataFrame, plan: _Plan) -> np.ndarray:
    """Rows worth (re)trying: new extracts' rows, rows whose link rested on a destroyed
    extract, and, when the registers changed, every row still unlinked."""
    scope = frame["new"].to_numpy() | frame["retry"].to_numpy()
    if plan.profiles_changed:
        scope |= (frame["method"] == "unlinked").to_numpy()
    return scope


@dataclass
class _Survey:
    """The first pass's findings: client rows (whole), rows to link, pseudonym counts per
    source, and the review list's rows found in the map (with whether they are retried)."""

    clients: list[pd.DataFrame] = field(default_factory=list)
    todo: list[pd.DataFrame] = field(default_factory=list)
    counts: dict[str, list[int]] = field(default_factory=dict)
    review_rows: list[pd.DataFrame] = field(default_factory=list)
    rows: int = 0

    def count(self, frame: pd.DataFrame, registered: Register | None) -> None:
        """Add `frame`'s rows with a pseudonym, and those of a registered person, per source."""
        known = frame.loc[frame["person_id"].notna(), ["source", "person_id"]]
        if known.empty:
            return
        found = (registered.contains(known["person_id"]) if registered is not None
                 else np.zeros(len(known), dtype=bool))
        sums = pd.DataFrame({"source": known["source"].to_numpy(), "found": found}).groupby(
            "source", sort=False)["found"].agg(["size", "sum"])
        for source, (size, hits) in sums.iterrows():
            self.add(str(source), int(size), int(hits))

    def add(self, source: str, size: int, hits: int) -> None:
        total = self.counts.setdefault(source, [0, 0])
        total[0] += size
        total[1] += hits

    def take(self, frame: pd.DataFrame, plan: _Plan, registered: Register | None,
             review_keys: pd.MultiIndex | None) -> None:
        """Everything the linking steps need of a frame of rows read whole."""
        self.rows += len(frame)
        is_client = frame["client_key"].notna().to_numpy()
        if is_client.any():
            self.clients.append(frame[is_client])
        rest = frame[~is_client]
        self.count(rest, registered)
        scope = _in_scope(rest, plan)
        self.todo.append(rest.loc[scope & rest["person_id"].isna().to_numpy(),
                                  ["extract_id", "row"]])
        if review_keys is not None:
            self.review_rows.append(_found(rest, review_keys, scope))


    def take_new(self, table: pa.Table, source: str, registered: Register | None,
                 review_keys: pd.MultiIndex | None) -> None:
        """`take` for a batch of a new extract without client rows (`_new_tables`), in
        Arrow: every row is in scope, and only the rows without a pseudonym become a frame."""
        self.rows += table.num_rows
        person_id = table.column("person_id")
        known = pc.is_valid(person_id).to_numpy(zero_copy_only=False)
        if known.any():
            hits = (registered.contains(person_id.filter(pa.array(known)))
                    if registered is not None else np.zeros(0, dtype=bool))
            self.add(source, int(known.sum()), int(hits.sum()))
        bare = np.flatnonzero(~known)
        rows = table.column("row").to_numpy()
        self.todo.append(pd.DataFrame({
            "extract_id": table.column("extract_id").take(pa.array(bare)).to_numpy(
                zero_copy_only=False), "row": rows[bare]}, index=bare))
        if review_keys is not None:
            near = np.flatnonzero(np.isin(rows, review_keys.get_level_values(1).to_numpy(
                dtype=np.int64)))
            frame = pd.DataFrame({"extract_id": table.column("extract_id").take(
                pa.array(near)).to_numpy(zero_copy_only=False), "row": rows[near]},
                index=near)
            self.review_rows.append(_found(frame, review_keys, np.ones(len(near), dtype=bool)))


def _survey(settings: Settings, base: map_store.Generation | None, plan: _Plan,
            batch_rows: int, say: Callable[[str], None], registered: Register | None,
            earlier: pd.DataFrame) -> _Survey:
    """First pass over the rows of the new map: everything the linking steps need to know.
    An extract already in the map that the update does not touch is not read whole: its
    pseudonym counts come from its persons file, its rows to retry (unlinked, when the
    registers changed) and its review rows from a filtered read."""
    survey = _Survey()
    review_keys = _review_keys(earlier)
    gone = set(plan.gone)
    for entry in base.entries if base is not None else ():
        if entry.extract_id in gone:
            continue
        if plan.touched(entry):
            for frame in _old_frames(base, entry, plan, batch_rows):
                survey.take(frame, plan, registered, review_keys)
            continue
        survey.rows += entry.rows
        persons = pq.read_table(base.persons(entry.extract_id), columns=["person_id", "rows"])
        hits = registered.contains(persons.column("person_id")) if (
            registered is not None) else np.zeros(persons.num_rows, dtype=bool)
        counts = persons.column("rows").to_numpy()
        survey.add(entry.source, int(counts.sum()), int(counts[hits].sum()))
        survey.todo.append(_untouched_rows(base, entry, plan, survey, review_keys))
    for item in plan.new.itertuples():
        say(f"indexing {item.extract_id} ({item.source})")
        if item.source == "social_care":  # client rows: the frames' way (a small extract)
            for frame in _new_frames(settings, item.extract_id, item.source, batch_rows):
                survey.take(frame, plan, registered, review_keys)
            continue
        for table in _new_tables(settings, item.extract_id, item.source, batch_rows):
            survey.take_new(table, item.source, registered, review_keys)
    return survey


def _untouched_rows(base: map_store.Generation, entry: map_store.Entry, plan: _Plan,
                    survey: _Survey, review_keys: pd.MultiIndex | None) -> pd.DataFrame:
    """An untouched extract's rows to link (its unlinked rows, when the registers changed),
    read filtered; its rows on the review list go to `survey` with whether they are retried."""
    unlinked = pc.field("method") == "unlinked"
    none = pd.DataFrame({"extract_id": pd.Series(dtype=object),
                         "row": pd.Series(dtype="int64")})
    listed = None
    if review_keys is not None:
        mine = review_keys[review_keys.get_level_values(0) == entry.extract_id]
        if len(mine):
            listed = pa.array(mine.get_level_values(1).astype("int64"), pa.int64())
            found = pq.read_table(base.path(entry.extract_id), columns=["row", "method"],
                                  filters=pc.field("row").isin(listed)).to_pandas()
            survey.review_rows.append(pd.DataFrame({
                "extract_id": entry.extract_id, "row": found["row"],
                "retried": plan.profiles_changed & (found["method"] == "unlinked")}))
    if not plan.profiles_changed or not entry.methods.get("unlinked"):
        return none
    rows = pq.read_table(base.path(entry.extract_id), columns=["row", "person_id"],
                         filters=unlinked).to_pandas()
    rows = rows[rows["person_id"].isna()]
    return pd.DataFrame({"extract_id": entry.extract_id, "row": rows["row"].to_numpy()})


def _review_keys(earlier: pd.DataFrame) -> pd.MultiIndex | None:
    if earlier.empty:
        return None
    return pd.MultiIndex.from_arrays(
        [pd.concat([earlier["query_extract"], earlier["profile_extract"]]).astype(object),
         pd.concat([earlier["query_row"], earlier["profile_row"]]).astype("int64")]).unique()


def _found(frame: pd.DataFrame, keys: pd.MultiIndex, scope: np.ndarray) -> pd.DataFrame:
    """The review list's rows among `frame`'s, with whether this run retries them."""
    near = frame["extract_id"].isin(set(keys.get_level_values(0))).to_numpy() & frame[
        "row"].isin(set(keys.get_level_values(1))).to_numpy()
    if not near.any():
        return pd.DataFrame({"extract_id": [], "row": [], "retried": []})
    hits = frame.loc[near, ["extract_id", "row"]].assign(retried=scope[near])
    inside = pd.MultiIndex.from_frame(hits[["extract_id", "row"]]).isin(keys)
    return hits[inside]


def _purged_extracts(base: map_store.Generation | None,
                     drop_rows: dict[str, Sequence[int]]) -> set[str]:
    """The extracts in the map that still hold any of `drop_rows`."""
    held = {e.extract_id for e in base.entries} if base is not None else set()
    found = set()
    for extract_id, rows in drop_rows.items():
        if extract_id not in held or not len(rows):
            continue
        present = pq.read_table(base.path(extract_id), columns=["row"],  # type: ignore[union-attr]
                                filters=pc.field("row").isin(pa.array(
                                    [int(r) for r in rows], pa.int64())))
        if present.num_rows:
            found.add(extract_id)
    return found


def _beside_current(settings: Settings, base: map_store.Generation,
                    drop_rows: dict[str, Sequence[int]]) -> bool:
    """Whether the review list and quality file describe the current map: no review pair of
    an extract it does not hold or of a row `drop_rows` names, and the quality file counting
    its rows. An update killed after its swap, before rewriting them, leaves them describing
    the old map; the next run must mend them, not find the map up to date."""
    held = {e.extract_id for e in base.entries}
    review = _read_review(settings)
    named = set(review["query_extract"]) | set(review["profile_extract"])
    if named - held or (_rows_in(review, drop_rows, "query_extract", "query_row")
                        | _rows_in(review, drop_rows, "profile_extract", "profile_row")).any():
        return False
    try:
        counted = json.loads(settings.layout.link_quality.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return counted == base.rows


def update(settings: Settings, engine: Engine, key: Key, matcher: Matcher | None = None,
           progress: Callable[[str], None] | None = None,
           quality: Callable[[ProfileStore, pd.DataFrame | None, dict[str, float]], dict]
           | None = None,
           drop_rows: dict[str, Sequence[int]] | None = None,
           batch_rows: int = BATCH_ROWS, retrain: bool = False) -> LinkSummary:
    """Bring the index up to date with what is landed: add new extracts, drop gone ones
    (and the rows `drop_rows` names: {extract_id: rows} an opt-out purge removed).

    Each source's linkage model is the one kept from an earlier run while the policy allows
    (`linkage.kept_models`; `retrain` trains every one again), and the quality measured with
    the kept models is reported while no source was linked with a model made in this run; a
    model trained on an extract gone, changed or purged is forgotten first, whether or not
    this run matches anything.

    Two streaming passes (`batch_rows` at a time) over the new extracts and the extracts in
    the map that the update touches (`_Plan.touched`): the first finds the rows to link and
    the client links, the second writes the next generation of the map, in which extracts
    whose rows do not change are the current generation's files, hard-linked. Memory holds a
    batch, the client rows and what the probabilistic step reads, never the map itself.
    """
    say = progress or (lambda _message: None)
    with store.data_lock(settings, "index"):
        clear_partial_files(settings)
        moved = map_store.split_legacy(settings)
        if moved:
            say(f"the link map ({moved:,} rows) split into one file per extract")
        base = map_store.current(settings)
        held = {e.extract_id: e for e in base.entries} if base is not None else {}
        landed = landed_extracts(engine)
        purged = _purged_extracts(base, drop_rows or {})
        gone = sorted(set(held) - set(landed["extract_id"]))
        new = landed[~landed["extract_id"].isin(held)]
        summary = LinkSummary(extracts_added=sorted(new["extract_id"]), extracts_removed=gone)
        models = _kept_models(settings, engine, landed, set(drop_rows or {}), retrain, say)
        if (not gone and new.empty and base is not None and not purged
                and _beside_current(settings, base, drop_rows or {})):
            say("the person index is up to date: nothing landed or destroyed since the last run")
            summary.rows = base.rows
            summary.by_source_method = base.counts()
            return summary
        gone_sources = {held[e].source for e in (*gone, *purged)}
        plan = _Plan(new=new, gone=gone, drop_rows=drop_rows or {}, purged=purged)
        plan.profiles_changed = bool((set(new["source"]) | gone_sources)
                                     & set(PROFILE_SOURCES))
        earlier = _read_earlier_review(settings)
        kept = _kept_keys(base)
        registered = registered_persons(settings, landed) if matcher is not None else None
        _release_arrow_memory()  # reading the register's pseudonyms left Arrow's pool full
        survey = _survey(settings, base, plan, min(batch_rows, PASS_ROWS), say, registered,
                         earlier)
        clients = _link_clients(pd.concat(survey.clients, ignore_index=True)
                                if survey.clients else None)
        todo = _todo_rows(survey, clients, plan, registered)
        registered = None  # only the counts were needed: not held through matching
        review_rows = _review_rows(survey, clients, plan, earlier)
        counts = {source: (found[0], found[1]) for source, found in survey.counts.items()}
        # its frames are in clients, todo and review_rows now: not held twice while matching
        del survey
        review = pd.DataFrame()
        matched = Matched(pd.DataFrame(), pd.DataFrame(), None, None)
        if matcher is not None:
            # a large register's profiles go to buckets in a folder of this run's own
            with store.scratch_workspace(settings) as scratch:
                matched = match_pending(settings, landed, matcher, say, todo, counts, scratch,
                                        models)
                del todo  # matched: the rows to link are not held through the quality estimate
                review = _merge_review(earlier, review_rows, matched.review)
                if quality is not None and matched.profile is not None:
                    summary.quality = _quality(models, matched, quality, say)
                elif matched.fresh:  # the kept quality was measured with other models
                    models.forget_quality()
                matched.profile = matched.examples = None  # not held through the writing pass
                models.models.update(matched.trained)
        if clients is not None and len(matched.links):
            clients = _with_links(clients, matched.links)
        _release_arrow_memory()
        written = _write_linked(settings, base, plan, min(batch_rows, PASS_ROWS), key,
                                kept.freeze(), clients, matched.links, say)
        kept_models.write(settings.layout.link_models, models)
        summary.by_source_method = written.counts()
        summary.rows = written.rows
        summary.review_pairs = len(review)
        _write(settings, settings.layout.review, pa.Table.from_pandas(review, preserve_index=False))
        # The quality file counts; it names no extract, so destroying one leaves no trace here.
        settings.layout.link_quality.write_text(json.dumps(
            {**summary.to_json(), "extracts_added": len(summary.extracts_added),
             "extracts_removed": len(summary.extracts_removed),
             "at": datetime.now(UTC).isoformat()}, default=str))
    return summary


def _kept_models(settings: Settings, engine: Engine, landed: pd.DataFrame, purged: set[str],
                 retrain: bool, say: Callable[[str], None]) -> kept_models.KeptModels:
    """The kept linkage models this update may reuse. Forgotten first, and the file
    rewritten at once, before anything else can fail: those trained on an extract no longer
    landed (destroyed, whether or not the map still holds it), or whose landed rows changed
    since (a purge, even one this update is not told of: killed, or run while this link
    matched), or named in `purged`; all of them if `retrain`. An unreadable file is removed
    (models trained again), so it never blocks a link or a destruction."""
    path, policy = settings.layout.link_models, load_drift(engine)
    try:
        kept = kept_models.read(path, policy)
    except ValueError as exc:  # a derived file: never blocks a link, or a destruction's
        say(f"{exc}: forgotten, the models are trained again")
        path.unlink()
        kept = kept_models.read(path, policy)
    dropped = kept.drop_stale(landed_rows(landed))
    dropped += kept.drop(purged)
    if retrain:
        dropped += kept.forget(list(kept.models))
    if dropped:
        sources = sorted({d.split(":", 1)[0] for d in dropped})
        say(f"linkage models to train again: {', '.join(sources)}")
        kept_models.write(path, kept)
    return kept


def _quality(kept: kept_models.KeptModels, matched: Matched,
             quality: Callable[[ProfileStore, pd.DataFrame | None, dict[str, float]], dict],
             say: Callable[[str], None]) -> dict[str, Any]:
    """The quality estimate: measured again when a source was linked with a model made in
    this run (trained, or fitted by ECM) or none was kept, else the one measured with the
    kept models, each source's marked with when."""
    if kept.quality and kept.quality_at is not None and not matched.fresh:
        say(f"linkage quality as measured on {kept.quality_at:%Y-%m-%d} with the models "
            "kept (no model trained this run)")
        return {source: {**rates, "measured_at": kept.quality_at.isoformat()}
                for source, rates in kept.quality.items()}
    say("estimating linkage quality on rows whose NHS number is known")
    measured = quality(matched.profile, matched.examples, matched.priors)
    kept.quality, kept.quality_at = measured, datetime.now(UTC)
    return measured


def _release_arrow_memory() -> None:
    """Hand Arrow's freed memory back to the system: its allocator keeps what a large read
    freed (650 MB after reading three million pseudonyms), which numpy and pandas cannot use."""
    pa.default_memory_pool().release_unused()


def _link_clients(clients: pd.DataFrame | None) -> pd.DataFrame | None:
    """Social care rows of one client share the pseudonym any of them carries; `via_extract`
    names where it came from (the carrier's extract, or the extract its own link rests on)."""
    if clients is None:
        return None
    keys = clients["client_key"]
    known = clients.loc[clients["person_id"].notna(),
                        ["client_key", "person_id", "extract_id", "via_extract"]]
    carriers = known.drop_duplicates("client_key").set_index("client_key")
    fill = keys.map(carriers["person_id"])
    take = clients["person_id"].isna() & fill.notna()
    clients.loc[take, "person_id"] = fill[take]
    clients.loc[take, "method"] = "client"
    via = carriers["via_extract"].where(carriers["via_extract"].notna(), carriers["extract_id"])
    clients.loc[take, "via_extract"] = keys[take].map(via)
    return clients


def _with_links(clients: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
    """Client rows after the probabilistic step: a client's rows linked probabilistically
    carry the pseudonym to the client's other rows in the same run (not a run later)."""
    _apply_links(clients, links.set_index(["extract_id", "row"]))
    return _link_clients(clients)


def _todo_rows(survey: _Survey, clients: pd.DataFrame | None, plan: _Plan,
               registered: Register | None) -> dict[str, set]:
    """{extract_id: rows} to link probabilistically (counting the client rows' pseudonyms
    into the survey's counts now that their client links are made)."""
    parts = list(survey.todo)
    if clients is not None:
        survey.count(clients, registered)
        scope = _in_scope(clients, plan)
        parts.append(clients.loc[scope & clients["person_id"].isna().to_numpy(),
                                 ["extract_id", "row"]])
    pending = pd.concat(parts) if parts else pd.DataFrame({"extract_id": [], "row": []})
    return pending.groupby("extract_id")["row"].apply(set).to_dict()


def _review_rows(survey: _Survey, clients: pd.DataFrame | None, plan: _Plan,
                 earlier: pd.DataFrame) -> pd.DataFrame:
    """The earlier review list's rows still in the map, with whether this run retries them."""
    keys = _review_keys(earlier)
    parts = list(survey.review_rows)
    if keys is not None and clients is not None:
        parts.append(_found(clients, keys, _in_scope(clients, plan)))
    if not parts:
        return pd.DataFrame({"extract_id": [], "row": [], "retried": []})
    return pd.concat(parts)


def _read_earlier_review(settings: Settings) -> pd.DataFrame:
    path = settings.layout.review
    if not path.exists():
        return pd.DataFrame()
    return pq.read_table(path).to_pandas()


def _merge_review(earlier: pd.DataFrame, rows: pd.DataFrame, fresh: pd.DataFrame
                  ) -> pd.DataFrame:
    """The review list: this run's pairs, plus earlier pairs of rows it did not retry."""
    if earlier.empty:
        return fresh
    still = pd.MultiIndex.from_arrays([rows["extract_id"].astype(object),
                                       rows["row"].astype("int64")])
    retried = still[rows["retried"].to_numpy(dtype=bool)]
    keys = pd.MultiIndex.from_arrays([earlier["query_extract"], earlier["query_row"]])
    profiles = pd.MultiIndex.from_arrays([earlier["profile_extract"], earlier["profile_row"]])
    # A pair stays while both its rows do (neither destroyed nor purged) and it was not retried.
    keep = keys.isin(still) & ~keys.isin(retried) & profiles.isin(still)
    return pd.concat([earlier[keep], fresh], ignore_index=True)


def _write_linked(settings: Settings, base: map_store.Generation | None, plan: _Plan,
                  batch_rows: int, key: Key, kept: PseudonymTable | None,
                  clients: pd.DataFrame | None, links: pd.DataFrame,
                  say: Callable[[str], None]) -> map_store.Generation:
    """Second pass: the next generation of the map. Extracts the update touched, those given
    links and the new ones are written a batch at a time, each batch taking its client and
    probabilistic links and its person keys; the rest are the current files, hard-linked.
    The generation replaces the current one only once complete."""
    settings.layout.index_dir.mkdir(parents=True, exist_ok=True)
    linked = links.set_index(["extract_id", "row"]) if len(links) else None
    given = set(links["extract_id"]) if len(links) else set()
    by_row = (clients.set_index(["extract_id", "row"])[
        ["person_id", "method", "via_extract", "weight"]] if clients is not None else None)
    memo: dict[str, str] = {}
    client_links = _RowLinks(clients, ["person_id", "method", "via_extract", "weight"])
    row_links = _RowLinks(links, ["person_id", "weight", "via_extract"])

    def made(tables: Iterator[pa.Table]) -> Iterator[map_store.MapBatch]:
        for table in tables:
            yield _map_batch(table, client_links, row_links, key, kept, memo)
            if len(memo) > MEMO_PERSONS:
                memo.clear()

    def finished(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            if by_row is not None:
                _apply_clients(frame, by_row)
            if linked is not None:
                _apply_links(frame, linked)
            frame = _assign_keys(frame, key, kept, memo)
            if len(memo) > MEMO_PERSONS:  # bounded: a person's rows are mostly near each other
                memo.clear()
            yield frame

    gone = set(plan.gone)
    generation = map_store.NextGeneration(settings, base)
    try:
        rewritten = 0
        for entry in base.entries if base is not None else ():
            if entry.extract_id in gone:
                continue
            if plan.touched(entry):
                generation.write(entry.extract_id, entry.source,
                                 finished(_old_frames(base, entry, plan, batch_rows)))
                rewritten += 1
            elif entry.extract_id in given:  # only given links: its rows as they are
                generation.write(entry.extract_id, entry.source,
                                 made(_map_tables(base, entry, batch_rows)))
                rewritten += 1
            else:
                generation.keep(entry)
        say(f"writing the person index: {len(plan.new)} new extract(s), {rewritten} "
            f"rewritten, {len(generation.entries) - rewritten} unchanged")
        for item in plan.new.itertuples():
            generation.write(item.extract_id, item.source,
                             made(_new_tables(settings, item.extract_id, item.source,
                                              batch_rows)))
        return generation.commit()
    except BaseException:
        generation.abandon()
        raise


def _found_rows(frame: pd.DataFrame, mask: np.ndarray, by_row: pd.DataFrame
                ) -> tuple[pd.Index, pd.DataFrame] | None:
    """Of `frame`'s rows under `mask`, those `by_row` (indexed by extract_id and row) holds:
    their labels in `frame` and their rows of `by_row`, in the same order (None if none)."""
    if not mask.any():
        return None
    rows = frame.loc[mask, ["extract_id", "row"]]
    where = by_row.index.get_indexer(pd.MultiIndex.from_frame(rows))
    ok = where >= 0
    if not ok.any():
        return None
    return rows.index[ok], by_row.iloc[where[ok]]


def _apply_clients(frame: pd.DataFrame, by_row: pd.DataFrame) -> None:
    """Client links ((extract_id, row) -> person_id, method, via_extract, weight) into
    `frame`."""
    found = _found_rows(frame, frame["client_key"].notna().to_numpy(), by_row)
    if found is None:
        return
    at, hit = found
    for column in ("person_id", "method", "via_extract"):
        frame.loc[at, column] = hit[column].to_numpy(dtype=object)
    frame.loc[at, "weight"] = hit["weight"].to_numpy(dtype=np.float64)


def _apply_links(frame: pd.DataFrame, linked: pd.DataFrame) -> None:
    """Probabilistic links ((extract_id, row) -> person_id, weight, via_extract) into `frame`."""
    found = _found_rows(frame, frame["person_id"].isna().to_numpy(), linked)
    if found is None:
        return
    at, hit = found
    frame.loc[at, "person_id"] = hit["person_id"].to_numpy(dtype=object)
    frame.loc[at, "method"] = "probabilistic"
    frame.loc[at, "weight"] = hit["weight"].to_numpy()
    frame.loc[at, "via_extract"] = hit["via_extract"].to_numpy(dtype=object)


def _assign_keys(frame: pd.DataFrame, key: Key, kept: PseudonymTable | None = None,
                 memo: dict[str, str] | None = None) -> pd.DataFrame:
    """Person keys from pseudonyms (a person keeps a key once given); unlinked rows get a key
    of their own first row. `memo` carries keyed hashes from batch to batch."""
    ids = frame["person_id"].astype(object).where(frame["person_id"].notna(), None)
    anchor = ids.copy()
    lonely = ids.isna()
    client = frame["client_key"].astype(object)
    anchor[lonely & client.notna()] = "client:" + client[lonely & client.notna()]
    lonely = anchor.isna()
    anchor[lonely] = ("row:" + frame.loc[lonely, "extract_id"].astype(str) + ":" +
                      frame.loc[lonely, "row"].astype(str))
    # one keyed hash per distinct anchor (a person has many rows), spread back to the rows
    codes, distinct = pd.factorize(anchor, use_na_sentinel=False)
    per_anchor = person_keys(pa.array(np.asarray(distinct, dtype=object), pa.string()),
                             key, memo).to_numpy(zero_copy_only=False)
    fresh = per_anchor[codes]
    if kept is not None:
        existing = kept.lookup(ids)
        fresh = np.where(pd.notna(existing), existing, fresh)
    frame["person_key"] = fresh
    return frame


def rekey(settings: Settings, mapping: dict[str, str]) -> int:
    """After a pseudonym key rotation: the index's pseudonyms mapped old -> new, keys kept
    (a new generation, rewritten a batch at a time). Under the index lock, as an update: a
    link running meanwhile would clear this generation as half-written, or swap in a map of
    old pseudonyms over it."""
    with store.data_lock(settings, "index"):
        clear_partial_files(settings)
        return _rekey(settings, mapping)


def _rekey(settings: Settings, mapping: dict[str, str]) -> int:
    """`rekey`, the caller holding the index lock."""
    map_store.split_legacy(settings)
    base = map_store.current(settings)
    if base is None:
        return 0
    changed = 0
    wanted = set(mapping)

    def mapped(entry: map_store.Entry) -> Iterator[pd.DataFrame]:
        nonlocal changed
        for batch in pq.ParquetFile(base.path(entry.extract_id)).iter_batches(
                batch_size=BATCH_ROWS):
            frame = batch.to_pandas()
            hit = frame["person_id"].isin(wanted)
            frame.loc[hit, "person_id"] = frame.loc[hit, "person_id"].map(mapping)
            changed += int(hit.sum())
            yield frame

    generation = map_store.NextGeneration(settings, base)
    try:
        for entry in base.entries:
            generation.write(entry.extract_id, entry.source, mapped(entry))
        generation.commit()
    except BaseException:
        generation.abandon()
        raise
    return changed


def forget_extracts(settings: Settings, engine: Engine, key: Key, extract_ids: list[str],
                    matcher: Matcher | None = None) -> dict[str, int]:
    """Drop destroyed extracts' rows from the index and re-link what rested on them.

    Called by destruction after the extracts are marked destroying; the counts are measured
    on the map as written (rows of the extracts before, less those after)."""
    before = leftovers(settings, extract_ids)["index_rows"]
    summary = update(settings, engine, key, matcher)
    after = leftovers(settings, extract_ids)["index_rows"]
    return {"index_rows_removed": before - after, "index_rows": summary.rows}


def forget_kept_models(settings: Settings, engine: Engine, extract_ids: list[str]) -> None:
    """Forget the kept linkage models trained on `extract_ids`, or on any extract no longer
    landed or changed since, as an update does first: what destruction does when there is no
    map to update (a first build killed after it kept its models, or an index removed), so
    no model of a destroyed extract outlives it."""
    with store.data_lock(settings, "index"):
        _kept_models(settings, engine, landed_extracts(engine), set(extract_ids), False,
                     lambda _message: None)


def forget_rows(settings: Settings, engine: Engine, key: Key, rows: dict[str, list[int]],
                matcher: Matcher | None = None) -> dict[str, int]:
    """After an opt-out purge: drop the purged rows ({extract_id: rows}) from the index and
    the review list, and re-link the rows whose link rested on them."""
    if not map_store.exists(settings):
        return {"index_rows_removed": 0, "review_pairs_removed": 0}
    before = _purged_in_index(settings, rows)
    update(settings, engine, key, matcher, drop_rows=rows)
    after = _purged_in_index(settings, rows)
    return {"index_rows_removed": before[0] - after[0],
            "review_pairs_removed": before[1] - after[1]}


def _purged_in_index(settings: Settings, rows: dict[str, list[int]]) -> tuple[int, int]:
    """(map rows, review pairs) that still hold any of `rows`."""
    held = 0
    with map_store.Pinned(settings) as pinned:
        for batch in pinned.batches(["extract_id", "row"], BATCH_ROWS):
            held += int(_rows_in(batch.to_pandas(), rows).sum())
    review = _read_review(settings)
    pairs = _rows_in(review, rows, "query_extract", "query_row") | _rows_in(
        review, rows, "profile_extract", "profile_row")
    return held, int(pairs.sum())


def _read_review(settings: Settings) -> pd.DataFrame:
    columns = ["query_extract", "query_row", "profile_extract", "profile_row"]
    path = settings.layout.review
    if not path.exists():
        return pd.DataFrame(columns=columns)
    table = pq.read_table(path)
    if not set(columns) <= set(table.column_names):  # an empty list is written column-less
        return pd.DataFrame(columns=columns)
    return table.select(columns).to_pandas()


def leftovers(settings: Settings, extract_ids: Sequence[str]) -> dict[str, int]:
    """What the index still holds of the given extracts, measured on the files as they are:

    - `index_rows`: link map rows of the extracts;
    - `index_links_via`: rows whose link rests on them (`via_extract`);
    - `review_pairs`: review-list pairs with a row of theirs, on either side;
    - `quality_files`: 1 if the quality file names one of them or counts rows the map no
      longer has (it describes a map that held them), else 0;
    - `index_partial_files`: files a killed run left half-written in the index (any of them
      may hold the extracts' rows);
    - `kept_linkage_models`: linkage models kept for reuse that were trained on their rows.
    """
    wanted = set(extract_ids)
    rows = index_rows = links_via = 0
    # measured on the rows of every file, not the manifest: a batch at a time, of one
    # generation though a link swaps another in meanwhile (destruction holds no index lock)
    with map_store.Pinned(settings) as pinned:
        for batch in pinned.batches(["extract_id", "via_extract"], BATCH_ROWS):
            frame = batch.to_pandas()
            rows += len(frame)
            index_rows += int(frame["extract_id"].isin(wanted).sum())
            links_via += int(frame["via_extract"].isin(wanted).sum())
    review = _read_review(settings)
    stale = 0
    if settings.layout.link_quality.exists():
        text = settings.layout.link_quality.read_text(encoding="utf-8")
        try:
            counted = json.loads(text).get("rows")
        except ValueError:
            counted = None  # unreadable: it cannot be shown to describe the map as it is
        stale = int(any(e in text for e in wanted) or counted != rows)
    return {
        "index_rows": index_rows,
        "index_links_via": links_via,
        "review_pairs": int((review["query_extract"].isin(wanted)
                             | review["profile_extract"].isin(wanted)).sum()),
        "quality_files": stale,
        "index_partial_files": len(partial_files(settings)),
        "kept_linkage_models": _kept_holding(settings, wanted),
    }


def _kept_holding(settings: Settings, extract_ids: set[str]) -> int:
    """Kept linkage models trained on any of `extract_ids`; 1 for a file that cannot be read
    (it cannot be shown not to be: the next update removes it)."""
    try:
        return kept_models.read(settings.layout.link_models).holding(extract_ids)
    except ValueError:
        return 1


def export(settings: Settings, out: Path) -> int:
    """Write the linkage map an IG lead can audit, as Parquet or CSV (by the file's extension),
    a batch at a time; nothing is left at `out` if writing fails."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out must end in .csv or .parquet, not {out.suffix or 'nothing'}")
    columns = ["extract_id", "source", "row", "person_key", "method", "weight"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    batches = map_store.batches(settings, columns, BATCH_ROWS)
    count = 0
    try:
        if suffix == ".csv":
            with tmp.open("w", encoding="utf-8", newline="") as handle:
                handle.write(",".join(columns) + "\n")
                for batch in batches:
                    batch.to_pandas().to_csv(handle, index=False, header=False)
                    count += batch.num_rows
        else:
            schema = pa.schema([MAP_SCHEMA.field(c) for c in columns])
            with pq.ParquetWriter(tmp, schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    count += batch.num_rows
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return count
