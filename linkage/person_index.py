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
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
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
from governance.keys import Key
from governance.schema import extracts
from governance.settings import Settings
from linkage.landing.pseudonymise import keyed_hashes

PROFILE_SOURCES = ("gp_patients", "social_care")
MAP_SCHEMA = pa.schema([
    ("extract_id", pa.string()), ("source", pa.string()), ("row", pa.int64()),
    ("person_id", pa.string()), ("person_key", pa.string()), ("method", pa.string()),
    ("weight", pa.float64()), ("via_extract", pa.string()), ("client_key", pa.string()),
])

# Given query rows and profile rows (both with `lk_*` encodings; profiles with person_id), the
# prior that a query row belongs to a registered person, and labelled examples of the query's
# source (encoded rows with person_id, or None), return matches: query index, profile index,
# weight, probability, band ("link"/"review").
Matcher = Callable[[pd.DataFrame, pd.DataFrame, float, pd.DataFrame | None], pd.DataFrame]


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
    path = settings.layout.link_map
    if not path.exists():
        return MAP_SCHEMA.empty_table().to_pandas()
    return pq.read_table(path, columns=columns).to_pandas()


def link_rows(settings: Settings, column: str, values: Sequence[str]) -> list[dict]:
    """(person_id, person_key) of the index rows whose `column` is one of `values`, rows
    without a pseudonym left out."""
    path = settings.layout.link_map
    if not path.exists() or not values:
        return []
    table = pq.read_table(path, columns=["person_id", "person_key"],
                          filters=pc.field(column).isin(pa.array(list(values), pa.string())))
    return table.filter(pc.is_valid(table.column("person_id"))).to_pylist()


def pseudonyms_behind_bare_rows(settings: Settings, batch_rows: int = 1_000_000
                                ) -> pd.DataFrame:
    """(person_key, person_id) of every person with a row that carries no pseudonym of its
    own (linked probabilistically or by client id, or unlinked: any method but `nhs_number`;
    the map gives such a row its person's pseudonym): every pseudonym the index gives them.

    Read in two streaming passes over the link map (the keys, then their pseudonyms), so
    memory holds those persons' pairs, not the map.
    """
    path = settings.layout.link_map
    empty = pd.DataFrame({"person_key": pd.Series(dtype=object),
                          "person_id": pd.Series(dtype=object)})
    if not path.exists():
        return empty
    source = pq.ParquetFile(path)
    keys: set[str] = set()
    for batch in source.iter_batches(batch_size=batch_rows, columns=["person_key", "method"]):
        bare = pc.not_equal(batch.column("method"), "nhs_number")
        keys.update(pc.unique(pc.filter(batch.column("person_key"), bare)).to_pylist())
    keys.discard(None)
    if not keys:
        return empty
    wanted = pa.array(sorted(keys), pa.string())
    found = []
    for batch in source.iter_batches(batch_size=batch_rows, columns=["person_key", "person_id"]):
        table = pa.Table.from_batches([batch])
        table = table.filter(pc.and_(pc.is_in(table.column("person_key"), value_set=wanted),
                                     pc.is_valid(table.column("person_id"))))
        found.append(table.group_by(["person_key", "person_id"]).aggregate([]))
    pairs = pa.concat_tables(found).group_by(["person_key", "person_id"]).aggregate([])
    return pairs.to_pandas() if pairs.num_rows else empty


def person_keys(person_ids: pa.Array, key: Key) -> pa.Array:
    """Person key of each pseudonym: `P` + 20 hex of a keyed hash (a second pseudonym domain)."""
    hashed = keyed_hashes(person_ids, key, domain="person_key", length=20)
    return pc.binary_join_element_wise(pa.scalar("P"), hashed, "")


def landed_extracts(engine: Engine) -> pd.DataFrame:
    with engine.connect() as connection:
        rows = connection.execute(select(extracts.c.extract_id, extracts.c.source,
                                         extracts.c.sender)
                                  .where(extracts.c.status == "landed")).all()
    return pd.DataFrame(rows, columns=["extract_id", "source", "sender"])


def _read_rows(settings: Settings, extract_id: str, encodings: bool) -> pd.DataFrame:
    path = settings.layout.rows(extract_id)
    names = pq.read_schema(path).names
    wanted = ["extract_id", "row"] + [c for c in ("person_id", "record_key") if c in names]
    if encodings:
        wanted += [c for c in names if c.startswith("lk_")]
        # Keyed encodings are int64 with nulls: Arrow dtypes keep them exact.
        return pq.read_table(path, columns=wanted).to_pandas(types_mapper=pd.ArrowDtype)
    return pq.read_table(path, columns=wanted).to_pandas()


def _write(settings: Settings, target: Path, table: pa.Table) -> None:
    settings.layout.index_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, target)


def _write_map(settings: Settings, frame: pd.DataFrame, slice_rows: int = 1_000_000) -> None:
    """The link map, converted to Arrow a slice at a time (a whole-map copy in Arrow was the
    index's peak memory: 0.9 GB of the 2.7 GB for 5M rows)."""
    settings.layout.index_dir.mkdir(parents=True, exist_ok=True)
    target = settings.layout.link_map
    tmp = target.with_suffix(".tmp")
    columns = [f.name for f in MAP_SCHEMA]
    with pq.ParquetWriter(tmp, MAP_SCHEMA, compression="zstd") as writer:
        for start in range(0, max(len(frame), 1), slice_rows):
            writer.write_table(pa.Table.from_pandas(
                frame.iloc[start:start + slice_rows][columns], schema=MAP_SCHEMA,
                preserve_index=False))
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


def update(settings: Settings, engine: Engine, key: Key, matcher: Matcher | None = None,
           progress: Callable[[str], None] | None = None,
           quality: Callable[[pd.DataFrame, pd.DataFrame | None], dict] | None = None,
           drop_rows: dict[str, Sequence[int]] | None = None) -> LinkSummary:
    """Bring the index up to date with what is landed: add new extracts, drop gone ones
    (and the rows `drop_rows` names: {extract_id: rows} an opt-out purge removed)."""
    say = progress or (lambda _message: None)
    with store.data_lock(settings, "index"):
        current = read_link_map(settings)
        landed = landed_extracts(engine)
        indexed = set(current["extract_id"].unique())
        wanted = set(landed["extract_id"])
        gone = sorted(indexed - wanted)
        new = landed[~landed["extract_id"].isin(indexed)]
        purged = _rows_in(current, drop_rows or {})
        summary = LinkSummary(extracts_added=sorted(new["extract_id"]), extracts_removed=gone)
        if not gone and new.empty and len(current) and not purged.any():
            say("the person index is up to date: nothing landed or destroyed since the last run")
            summary.rows = len(current)
            summary.by_source_method = {
                source: group["method"].value_counts().to_dict()
                for source, group in current.groupby("source")}
            return summary
        # Keys already given to persons stay theirs (also across a pseudonym key rotation).
        known = current[current["person_id"].notna()].drop_duplicates("person_id")
        kept_keys = dict(zip(known["person_id"], known["person_key"], strict=True))
        leaving = current["extract_id"].isin(gone).to_numpy() | purged
        gone_sources = set(current.loc[leaving, "source"])
        profiles_changed = bool((set(new["source"]) | gone_sources) & set(PROFILE_SOURCES))
        # Rows whose link rested on a destroyed extract (probabilistic or client) are linked
        # again, client links from the carriers that remain (below). Links to a purged row's
        # pseudonym are kept: they are that person's rows, and the objection covers them.
        retry = current["via_extract"].isin(gone).to_numpy()
        if gone:
            retry |= (current["method"] == "client").to_numpy()
        if leaving.any():
            retry = retry[~leaving]
            current = current[~leaving].reset_index(drop=True)
            for column, value in (("method", "unlinked"), ("person_id", None),
                                  ("weight", np.nan), ("via_extract", None)):
                current.loc[retry, column] = value
        parts = [current]
        for item in new.itertuples():
            say(f"indexing {item.extract_id} ({item.source})")
            rows = _read_rows(settings, item.extract_id, encodings=False)
            frame = pd.DataFrame({
                "extract_id": rows["extract_id"], "source": item.source, "row": rows["row"],
                "person_id": rows.get("person_id"),
                "person_key": None, "method": "unlinked", "weight": np.nan,
                "via_extract": None, "client_key": None,
            })
            has_id = frame["person_id"].notna()
            frame.loc[has_id, "method"] = "nhs_number"
            if item.source == "social_care" and "record_key" in rows:
                frame["client_key"] = rows["record_key"].to_numpy()
            parts.append(frame)
        # Nothing left (every extract destroyed): an empty map is written, never the old one.
        combined = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(
            len(p) for p in parts) else MAP_SCHEMA.empty_table().to_pandas()
        del parts, current  # the parts are in `combined` now: not held twice
        combined = _link_clients(combined)
        # Rows worth (re)trying: those of new extracts, those whose link rested on a destroyed
        # extract, and, when the registers changed, every row still unlinked.
        scope = combined["extract_id"].isin(set(new["extract_id"]))
        # `current` comes first in `combined`, so its positions are the same there.
        scope |= np.isin(np.arange(len(combined)), np.flatnonzero(retry))
        if profiles_changed:
            scope |= combined["method"] == "unlinked"
        review = pd.DataFrame()
        if matcher is not None:
            combined, review, profile, examples = _link_probabilistic(
                settings, combined, landed, matcher, say, scope.to_numpy())
            review = _merge_review(settings, review, combined, scope.to_numpy())
            if quality is not None and profile is not None:
                say("estimating linkage quality on rows whose NHS number is known")
                summary.quality = quality(profile, examples)
        combined = _assign_keys(combined, key, kept_keys)
        summary.rows = len(combined)
        summary.by_source_method = {
            source: group["method"].value_counts().to_dict()
            for source, group in combined.groupby("source")}
        summary.review_pairs = len(review)
        _write_map(settings, combined)
        _write(settings, settings.layout.review, pa.Table.from_pandas(review, preserve_index=False))
        # The quality file counts; it names no extract, so destroying one leaves no trace here.
        settings.layout.link_quality.write_text(json.dumps(
            {**summary.to_json(), "extracts_added": len(summary.extracts_added),
             "extracts_removed": len(summary.extracts_removed),
             "at": datetime.now(UTC).isoformat()}, default=str))
    return summary


def _link_clients(frame: pd.DataFrame) -> pd.DataFrame:
    """Social care rows of one client share the pseudonym any of them carries; `via_extract`
    names where it came from (the carrier's extract, or the extract its own link rests on)."""
    clients = frame["client_key"]
    known = frame.loc[clients.notna() & frame["person_id"].notna(),
                      ["client_key", "person_id", "extract_id", "via_extract"]]
    carriers = known.drop_duplicates("client_key").set_index("client_key")
    fill = clients.map(carriers["person_id"])
    take = frame["person_id"].isna() & fill.notna()
    frame.loc[take, "person_id"] = fill[take]
    frame.loc[take, "method"] = "client"
    via = carriers["via_extract"].where(carriers["via_extract"].notna(), carriers["extract_id"])
    frame.loc[take, "via_extract"] = clients[take].map(via)
    return frame


def _merge_review(settings: Settings, fresh: pd.DataFrame, frame: pd.DataFrame,
                  scope: np.ndarray) -> pd.DataFrame:
    """The review list: this run's pairs, plus earlier pairs of rows it did not retry."""
    path = settings.layout.review
    if not path.exists():
        return fresh
    earlier = pq.read_table(path).to_pandas()
    if earlier.empty:
        return fresh
    retried = pd.MultiIndex.from_frame(frame.loc[scope, ["extract_id", "row"]])
    still = pd.MultiIndex.from_frame(frame[["extract_id", "row"]])
    keys = pd.MultiIndex.from_arrays([earlier["query_extract"], earlier["query_row"]])
    profiles = pd.MultiIndex.from_arrays([earlier["profile_extract"], earlier["profile_row"]])
    # A pair stays while both its rows do (neither destroyed nor purged) and it was not retried.
    keep = keys.isin(still) & ~keys.isin(retried) & profiles.isin(still)
    return pd.concat([earlier[keep], fresh], ignore_index=True)


def _link_probabilistic(settings: Settings, frame: pd.DataFrame, landed: pd.DataFrame,
                        matcher: Matcher, say: Callable[[str], None], scope: np.ndarray,
                        ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None,
                                   pd.DataFrame | None]:
    """Link rows without a pseudonym, within `scope`, to person profiles on their encodings."""
    todo = frame["person_id"].isna() & scope
    todo_rows = frame.loc[todo].groupby("extract_id")["row"].apply(set).to_dict()
    wanted_extracts = set(todo_rows)
    queries, profiles, training = [], [], []
    for item in landed.itertuples():
        is_profile = item.source in PROFILE_SOURCES
        if not is_profile and item.extract_id not in wanted_extracts:
            continue
        rows = _read_rows(settings, item.extract_id, encodings=True)
        lk = [c for c in rows.columns if c.startswith("lk_")]
        if not lk:
            continue
        if is_profile:
            profiles.append(rows[rows["person_id"].notna()].assign(source=item.source))
        if item.extract_id in wanted_extracts:
            pending = todo_rows[item.extract_id]
            queries.append(rows[rows["row"].isin(pending)].assign(source=item.source))
            if not is_profile:  # the sampled NHS-numbered rows: labelled examples
                encoded = rows[lk].notna().any(axis=1) & rows["person_id"].notna()
                training.append(rows[encoded].assign(source=item.source))
    profile = _concat(profiles) if profiles else None
    examples = _concat(training) if training else None
    if not queries or profile is None:
        return frame, pd.DataFrame(), profile, examples
    query = _concat(queries)
    say(f"probabilistic linkage: {len(query):,} rows against {len(profile):,} profiles")
    # One model per source: sources carry different fields (names only in social care), and
    # a model fitted on a mixture would under-weight the fields a source does carry.
    registered = set(profile["person_id"].astype(object))
    found = []
    for source, rows in query.groupby("source", sort=True):
        # Compared on the fields both sides carry: once the last register carrying a field is
        # destroyed, the profiles left may lack fields the query rows still have.
        carried = [c for c in rows.columns if c.startswith("lk_") and rows[c].notna().any()
                   and c in profile.columns and profile[c].notna().any()]
        if not carried:
            continue  # nothing to compare on: the rows stay unlinked
        coverage = _coverage(frame, str(source), registered)
        say(f"  {source}: {len(rows):,} rows; {coverage:.1%} of its rows with an NHS number "
            "belong to a registered person")
        labelled = None
        if examples is not None and set(carried) <= set(examples.columns):
            labelled = examples.loc[examples["source"] == source,
                                    ["extract_id", "row", "person_id", *carried]]
        part = matcher(rows[["extract_id", "row", *carried]].reset_index(drop=True),
                       profile[["extract_id", "row", "person_id", *carried]], coverage,
                       labelled)
        part["query"] = rows.index.to_numpy()[part["query"].to_numpy(dtype=np.int64)]
        if len(part):
            found.append(part)
    if not found:
        return frame, pd.DataFrame(), profile, examples
    matches = pd.concat(found, ignore_index=True)
    review = matches[matches["band"] == "review"]
    links = matches[matches["band"] == "link"].sort_values("weight", ascending=False)
    links = links.drop_duplicates("query")
    # Every query row is a row to do: look positions up among those, not the whole map (a
    # MultiIndex of 50M rows was gigabytes at a million persons).
    pending = frame.loc[todo, ["extract_id", "row"]]
    position = pd.MultiIndex.from_frame(pending)
    target = pd.MultiIndex.from_frame(query.loc[links["query"], ["extract_id", "row"]])
    where = position.get_indexer(target)
    ok = where >= 0
    at = pending.index[where[ok]]
    frame.loc[at, "person_id"] = profile.loc[
        links["profile"].to_numpy()[ok], "person_id"].to_numpy(dtype=object)
    frame.loc[at, "method"] = "probabilistic"
    frame.loc[at, "weight"] = links["weight"].to_numpy()[ok]
    frame.loc[at, "via_extract"] = profile.loc[
        links["profile"].to_numpy()[ok], "extract_id"].to_numpy(dtype=object)
    review_out = pd.DataFrame({
        "query_extract": query.loc[review["query"], "extract_id"].to_numpy(),
        "query_row": query.loc[review["query"], "row"].to_numpy(),
        "profile_extract": profile.loc[review["profile"], "extract_id"].to_numpy(),
        "profile_row": profile.loc[review["profile"], "row"].to_numpy(),
        "weight": review["weight"].to_numpy(),
    })
    for column in review.columns:
        if column.startswith("cmp_"):
            review_out[column] = review[column].to_numpy()
    return frame, review_out, profile, examples


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate frames of encodings through Arrow, so a column some frames lack keeps its
    type (fixed-size binary Bloom filters, int64 keys) with nulls, instead of turning object."""
    tables = [pa.Table.from_pandas(f, preserve_index=False) for f in frames]
    return pa.concat_tables(tables, promote_options="default").to_pandas(
        types_mapper=pd.ArrowDtype)


def _coverage(frame: pd.DataFrame, source: str, registered: set) -> float:
    """Share of a source's rows with a pseudonym whose person is in the register (the prior
    that a row without one belongs to a registered person), kept within [0.5, 0.999]."""
    known = frame.loc[(frame["source"] == source) & frame["person_id"].notna(), "person_id"]
    if len(known) < 20:
        return 0.95
    share = float(known.astype(object).isin(registered).mean())
    return min(max(share, 0.5), 0.999)


def _assign_keys(frame: pd.DataFrame, key: Key,
                 kept: dict[str, str] | None = None) -> pd.DataFrame:
    """Person keys from pseudonyms (a person keeps a key once given); unlinked rows get a key
    of their own first row."""
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
                             key).to_numpy(zero_copy_only=False)
    fresh = per_anchor[codes]
    if kept:
        existing = ids.map(kept)
        fresh = np.where(existing.notna(), existing.to_numpy(dtype=object), fresh)
    frame["person_key"] = fresh
    return frame


def rekey(settings: Settings, mapping: dict[str, str]) -> int:
    """After a pseudonym key rotation: the index's pseudonyms mapped old -> new, keys kept."""
    path = settings.layout.link_map
    if not path.exists():
        return 0
    frame = read_link_map(settings)
    changed = frame["person_id"].isin(set(mapping))
    frame.loc[changed, "person_id"] = frame.loc[changed, "person_id"].map(mapping)
    _write_map(settings, frame)
    return int(changed.sum())


def forget_extracts(settings: Settings, engine: Engine, key: Key, extract_ids: list[str],
                    matcher: Matcher | None = None) -> dict[str, int]:
    """Drop destroyed extracts' rows from the index and re-link what rested on them.

    Called by destruction after the extracts are marked destroying; the counts are measured
    on the map as written (rows of the extracts before, less those after)."""
    before = leftovers(settings, extract_ids)["index_rows"]
    summary = update(settings, engine, key, matcher)
    after = leftovers(settings, extract_ids)["index_rows"]
    return {"index_rows_removed": before - after, "index_rows": summary.rows}


def forget_rows(settings: Settings, engine: Engine, key: Key, rows: dict[str, list[int]],
                matcher: Matcher | None = None) -> dict[str, int]:
    """After an opt-out purge: drop the purged rows ({extract_id: rows}) from the index and
    the review list, and re-link the rows whose link rested on them."""
    if not settings.layout.link_map.exists():
        return {"index_rows_removed": 0, "review_pairs_removed": 0}
    before = _purged_in_index(settings, rows)
    update(settings, engine, key, matcher, drop_rows=rows)
    after = _purged_in_index(settings, rows)
    return {"index_rows_removed": before[0] - after[0],
            "review_pairs_removed": before[1] - after[1]}


def _purged_in_index(settings: Settings, rows: dict[str, list[int]]) -> tuple[int, int]:
    """(map rows, review pairs) that still hold any of `rows`."""
    frame = read_link_map(settings, columns=["extract_id", "row"])
    review = _read_review(settings)
    pairs = _rows_in(review, rows, "query_extract", "query_row") | _rows_in(
        review, rows, "profile_extract", "profile_row")
    return int(_rows_in(frame, rows).sum()), int(pairs.sum())


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
      longer has (it describes a map that held them), else 0.
    """
    wanted = set(extract_ids)
    frame = read_link_map(settings, columns=["extract_id", "via_extract"])
    review = _read_review(settings)
    stale = 0
    if settings.layout.link_quality.exists():
        text = settings.layout.link_quality.read_text(encoding="utf-8")
        try:
            counted = json.loads(text).get("rows")
        except ValueError:
            counted = None  # unreadable: it cannot be shown to describe the map as it is
        stale = int(any(e in text for e in wanted) or counted != len(frame))
    return {
        "index_rows": int(frame["extract_id"].isin(wanted).sum()),
        "index_links_via": int(frame["via_extract"].isin(wanted).sum()),
        "review_pairs": int((review["query_extract"].isin(wanted)
                             | review["profile_extract"].isin(wanted)).sum()),
        "quality_files": stale,
    }


def export(settings: Settings, out: Path) -> int:
    """Write the linkage map an IG lead can audit, as Parquet or CSV (by the file's extension)."""
    frame = read_link_map(settings, columns=["extract_id", "source", "row", "person_key",
                                              "method", "weight"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        frame.to_csv(out, index=False)
    elif out.suffix.lower() == ".parquet":
        frame.to_parquet(out, index=False)
    else:
        raise ValueError(f"--out must end in .csv or .parquet, not {out.suffix or 'nothing'}")
    return len(frame)
