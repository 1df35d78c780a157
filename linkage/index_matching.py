"""The person index's probabilistic step, fed with the rows still to link (not the whole map).

`registered_persons` reads the register's pseudonyms (the prior that a row belongs to a
registered person is measured against them); `match_pending` reads the pending rows' keyed
encodings and the profiles' (register rows that carry a pseudonym and encodings), runs the
matcher one source at a time, and returns links and review pairs keyed by (extract_id, row).
Memory holds the pending rows and one bucket of the profiles (`linkage.profile_store`), never
the link map.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from governance.settings import Settings
from linkage.kept_models import KeptModel, KeptModels
from linkage.kept_models import name as kept_name
from linkage.profile_store import ProfileStore, ProfileWriter
from linkage.pseudonym_table import PseudonymTable, fixed_width, one_person_in

PROFILE_SOURCES = ("gp_patients", "social_care")
# Labelled examples (the rows landing encoded for the fixed share of persons it samples) a
# source trains its model and measures its quality on, at most about: past this many, a
# sample of their persons (`one_person_in`). Landing's share grows with the population (an
# outpatient extract gave 64,885 at a million persons and 194,964 at three); the model's few
# dozen weights, and a quality estimate on 5,000 held-out rows, need no more.
LABELLED_ROWS = 100_000
# Rows of an extract read at a time for the probabilistic step. A batch of the register's
# rows with every encoding, filtered and split into buckets, was the peak of a million-person
# link at a million rows a batch (about 0.8 GB over the matching's baseline).
READ_ROWS = 250_000

# Given query rows and profile rows (both with `lk_*` encodings; profiles with person_id), the
# prior that a query row belongs to a registered person, and labelled examples of the query's
# source (encoded rows with person_id, or None), return matches: query index, profile index,
# weight, probability, band ("link"/"review").
Matcher = Callable[[pd.DataFrame, ProfileStore, float, pd.DataFrame | None], pd.DataFrame]


@dataclass
class Matched:
    """What the probabilistic step found: links (extract_id, row, person_id, weight,
    via_extract), review pairs, the profiles and labelled examples it read, and each
    source's prior (`coverage`: the share of its NHS-numbered rows whose person is
    registered), which the quality estimate must link its held-out rows at too; the models
    this run trained (`trained`, to keep), the sources it linked with kept ones (`reused`) and
    those it linked with a model made in this run (`fresh`: trained, or fitted by ECM)."""

    links: pd.DataFrame
    review: pd.DataFrame
    profile: ProfileStore | None
    examples: pd.DataFrame | None
    priors: dict[str, float] = field(default_factory=dict)
    trained: dict[str, KeptModel] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)


def read_rows(settings: Settings, extract_id: str, encodings: bool) -> pd.DataFrame:
    """A landed extract's rows: ids, pseudonym and record key (and keyed encodings if asked)."""
    table = read_table(settings, extract_id, encodings)
    if encodings:  # keyed encodings are int64 with nulls: Arrow dtypes keep them exact
        return table.to_pandas(types_mapper=pd.ArrowDtype)
    return table.to_pandas()


def read_table(settings: Settings, extract_id: str, encodings: bool) -> pa.Table:
    """`read_rows`'s columns as an Arrow table (filtered and joined without a pandas copy)."""
    path = settings.layout.rows(extract_id)
    return pq.read_table(path, columns=_columns(path, encodings))


def _columns(path: Path, encodings: bool) -> list[str]:
    names = pq.read_schema(path).names
    wanted = ["extract_id", "row"] + [c for c in ("person_id", "record_key") if c in names]
    if encodings:
        wanted += [c for c in names if c.startswith("lk_")]
    return wanted


def _kept_rows(settings: Settings, extract_id: str, source: str, pending: set | None,
               profiles: ProfileWriter | None) -> tuple[list[pa.Table], list[pa.Table]]:
    """An extract's pending rows and labelled examples, its profile rows handed to `profiles`,
    read `READ_ROWS` at a time: a hospital extract is mostly rows without encodings, and
    reading all of it at once to keep a few per cent cost 2.3 GB at three million persons."""
    path = settings.layout.rows(extract_id)
    columns = _columns(path, encodings=True)
    lk = [c for c in columns if c.startswith("lk_")]
    queries: list[pa.Table] = []
    training: list[pa.Table] = []
    if not lk:
        return queries, training
    wanted = None if pending is None else pa.array(sorted(pending), type=pa.int64())
    for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=columns):
        rows = pa.Table.from_batches([batch])
        rows = rows.append_column("source", pa.array(np.full(rows.num_rows, source)))
        has_person = pc.is_valid(rows["person_id"])
        if profiles is not None:
            profiles.add(rows.filter(has_person))
        if wanted is not None:
            queries.append(rows.filter(pc.is_in(rows["row"], value_set=wanted)))
            if profiles is None:  # the sampled NHS-numbered rows: labelled examples
                encoded = functools.reduce(pc.or_, [pc.is_valid(rows[c]) for c in lk])
                training.append(rows.filter(pc.and_(encoded, has_person)))
    return queries, training


def _profile_writer(settings: Settings, landed: pd.DataFrame, scratch: Path | None
                    ) -> ProfileWriter | None:
    """A writer for the register's profiles (None if no register extract has encodings),
    sized on the register extracts' rows: one bucket in memory, or buckets under `scratch`."""
    schemas, rows = [], 0
    widths: dict[str, set[int]] = {}
    for item in landed.itertuples():
        if item.source not in PROFILE_SOURCES:
            continue
        path = settings.layout.rows(item.extract_id)
        columns = _columns(path, encodings=True)
        if not any(c.startswith("lk_") for c in columns):
            continue
        schema = pq.read_schema(path)
        schemas.append(pa.schema([schema.field(c) for c in columns]))
        source = pq.ParquetFile(path)
        rows += source.metadata.num_rows
        binary = [c for c in columns if pa.types.is_binary(schema.field(c).type)]
        if binary and source.metadata.num_row_groups:
            first = source.read_row_group(0, columns=binary)
            for name in binary:
                lengths = pc.unique(pc.drop_null(pc.binary_length(first.column(name))))
                widths.setdefault(name, set()).update(lengths.to_pylist())
    if not schemas:
        return None
    schema = pa.unify_schemas([*schemas, pa.schema([("source", pa.string())])])
    # Bloom filters of one length held as fixed-size binary: read as numpy words without
    # making a Python object of each (a bucket is read several times while matching)
    for name, found in widths.items():
        if len(found) == 1 and next(iter(found)) % 8 == 0:
            at = schema.get_field_index(name)
            schema = schema.set(at, pa.field(name, pa.binary(next(iter(found)))))
    return ProfileWriter(scratch, rows, schema)


class Register(PseudonymTable):
    """The register's pseudonyms (`PseudonymTable` without values): membership only."""


def registered_persons(settings: Settings, landed: pd.DataFrame) -> Register:
    """Pseudonyms of the profiles (register rows with a pseudonym, in extracts with
    encodings), distinct. Read `READ_ROWS` at a time and held as fixed-width bytes, made
    distinct in numpy: neither a Python set (three million pseudonyms in one cost a
    gigabyte) nor Arrow strings and their hash table (0.6 GB over the start at a million)."""
    found: list[np.ndarray] = []
    for item in landed.itertuples():
        if item.source not in PROFILE_SOURCES:
            continue
        path = settings.layout.rows(item.extract_id)
        names = pq.read_schema(path).names
        if "person_id" not in names or not any(c.startswith("lk_") for c in names):
            continue
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS,
                                                        columns=["person_id"]):
            ids = pc.drop_null(batch.column(0))
            if len(ids):
                found.append(fixed_width(ids.cast(pa.binary())))
    if not found:
        return Register(np.zeros(0, dtype="S1"))
    held = np.concatenate(found)
    found.clear()
    return Register(np.unique(held))


def coverage(known: int, registered: int) -> float:
    """Share of a source's rows with a pseudonym whose person is in the register (the prior
    that a row without one belongs to a registered person), kept within [0.5, 0.999]."""
    if known < 20:
        return 0.95
    return min(max(registered / known, 0.5), 0.999)


def labelled_sample(training: list[pa.Table], most: int) -> list[pa.Table]:
    """Each source's labelled rows, a sample of its persons when it has more than `most`
    rows (all of a sampled person's rows kept; the same persons whatever the batches)."""
    sources = [t.column("source")[0].as_py() if t.num_rows else None for t in training]
    rows: dict[str | None, int] = {}
    for source, table in zip(sources, training, strict=True):
        rows[source] = rows.get(source, 0) + table.num_rows
    kept = []
    for source, table in zip(sources, training, strict=True):
        every = -(-rows[source] // max(most, 1))
        kept.append(table.filter(one_person_in(table["person_id"], every)) if every > 1
                    else table)
    return kept


def _concat(tables: list[pa.Table]) -> pd.DataFrame:
    """Concatenate tables of encodings in Arrow, so a column some lack keeps its type
    (fixed-size binary Bloom filters, int64 keys) with nulls, and pandas is made once."""
    return pa.concat_tables(tables, promote_options="default").to_pandas(
        types_mapper=pd.ArrowDtype)


def landed_rows(landed: pd.DataFrame) -> dict[str, int]:
    """Each landed extract's row count (`person_index.landed_extracts`): what a kept model
    records of the extracts it read, and checks them against."""
    return {str(e): int(n) for e, n in zip(landed["extract_id"], landed["rows_landed"],
                                           strict=True)}


def match_pending(settings: Settings, landed: pd.DataFrame, matcher: Matcher,
                  say: Callable[[str], None], todo_rows: dict[str, set],
                  counts: dict[str, tuple[int, int]], scratch: Path | None = None,
                  kept: KeptModels | None = None, now: datetime | None = None) -> Matched:
    """Link the pending rows (`todo_rows`: {extract_id: rows}) to person profiles on their
    encodings; `counts` gives each source's (rows with a pseudonym, of them registered).
    The profiles go to a `ProfileStore`: in memory when small, else in buckets of persons
    under `scratch` (a folder the caller owns and removes). A source's model is `kept`'s
    when it may be reused (`KeptModels.usable`), else trained, and then returned to keep."""
    now = now or datetime.now(UTC)
    rows_landed = landed_rows(landed)
    register = {e: rows_landed[e] for e, s in zip(landed["extract_id"], landed["source"],
                                                  strict=True) if s in PROFILE_SOURCES}
    writer = _profile_writer(settings, landed, scratch)
    queries, training = [], []
    for item in landed.itertuples():
        is_profile = item.source in PROFILE_SOURCES
        if not is_profile and item.extract_id not in todo_rows:
            continue
        found = _kept_rows(settings, item.extract_id, item.source,
                           todo_rows.get(item.extract_id), writer if is_profile else None)
        queries += found[0]
        training += found[1]
    profile = writer.close() if writer is not None else None
    examples = _concat(labelled_sample(training, LABELLED_ROWS)) if training else None
    # Every counted source's prior, whether or not it has rows to link this run: the quality
    # estimate links its labelled rows at the prior its unlinked rows are linked at.
    priors = {str(source): coverage(*found) for source, found in counts.items()}
    nothing = Matched(pd.DataFrame(), pd.DataFrame(), profile, examples, priors)
    if not queries or profile is None:
        return nothing
    query = _concat(queries)
    say(f"probabilistic linkage: {len(query):,} rows against {profile.rows:,} profiles"
        f" ({len(profile.buckets)} bucket(s) of persons)")
    # One model per source: sources carry different fields (names only in social care), and
    # a model fitted on a mixture would under-weight the fields a source does carry.
    found = []
    for source, rows in query.groupby("source", sort=True):
        # Compared on the fields both sides carry: once the last register carrying a field is
        # destroyed, the profiles left may lack fields the query rows still have.
        carried = [c for c in rows.columns if c.startswith("lk_") and rows[c].notna().any()
                   and profile.has_values(c)]
        if not carried:
            continue  # nothing to compare on: the rows stay unlinked
        prior = priors.get(str(source), coverage(0, 0))
        say(f"  {source}: {len(rows):,} rows; {prior:.1%} of its rows with an NHS number "
            "belong to a registered person")
        labelled = None
        if examples is not None and set(carried) <= set(examples.columns):
            labelled = examples.loc[examples["source"] == source,
                                    ["extract_id", "row", "person_id", *carried]]
        usable = (kept.usable(str(source), carried, profile.rows, now) if kept is not None
                  else None)
        if usable is not None:
            say(f"  {source}: linked with the model trained on {usable.trained_at:%Y-%m-%d} "
                f"(register then {usable.profiles:,} profiles; `haven link --retrain` trains "
                "again)")
        part = matcher(rows[["extract_id", "row", *carried]].reset_index(drop=True),
                       profile, prior, labelled,
                       **({"model": usable.model} if usable is not None else {}))
        if usable is not None:
            nothing.reused.append(str(source))
        else:
            nothing.fresh.append(str(source))  # trained now, or fitted by ECM (not kept)
            if part.attrs.get("model") is not None:
                examples_from = (map(str, labelled["extract_id"].unique())
                                 if labelled is not None else ())
                on = {**register, **{e: rows_landed[e] for e in examples_from}}
                nothing.trained[kept_name(str(source), carried)] = KeptModel(
                    tuple(carried), part.attrs["model"], profile.rows, now, on)
        part["query"] = rows.index.to_numpy()[part["query"].to_numpy(dtype=np.int64)]
        if len(part):
            found.append(part)
    if not found:
        return nothing
    matches = pd.concat(found, ignore_index=True)
    review = matches[matches["band"] == "review"]
    links = matches[matches["band"] == "link"].sort_values("weight", ascending=False)
    links = links.drop_duplicates("query")
    chosen = profile.gather(links["profile"].to_numpy(dtype=np.int64),
                            ["extract_id", "person_id"])
    linked = pd.DataFrame({
        "extract_id": query.loc[links["query"], "extract_id"].to_numpy(dtype=object),
        "row": query.loc[links["query"], "row"].to_numpy(dtype=np.int64),
        "person_id": chosen["person_id"].to_numpy(dtype=object),
        "weight": links["weight"].to_numpy(dtype=np.float64),
        "via_extract": chosen["extract_id"].to_numpy(dtype=object),
    })
    against = profile.gather(review["profile"].to_numpy(dtype=np.int64), ["extract_id", "row"])
    review_out = pd.DataFrame({
        "query_extract": query.loc[review["query"], "extract_id"].to_numpy(),
        "query_row": query.loc[review["query"], "row"].to_numpy(),
        "profile_extract": against["extract_id"].to_numpy(),
        "profile_row": against["row"].to_numpy(),
        "weight": review["weight"].to_numpy(),
    })
    for column in review.columns:
        if column.startswith("cmp_"):
            review_out[column] = review[column].to_numpy()
    return Matched(linked, review_out, profile, examples, priors, nothing.trained,
                   nothing.reused, nothing.fresh)
