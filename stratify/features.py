"""Person-level features at a reference date, computed with DuckDB over the landed frames.

`build_features(sources, at)` returns one row per person alive and registered at `at`, using
only records dated before `at` (windows are `[at - N months, at)`). Every feature is described in
`stratify.catalogue.FEATURES` (rendered to `FEATURES.md`). The work is set-based SQL, no
per-person Python, so the same function can run on one partition (e.g. a person-key hash
bucket) at a time; persons never span partitions when partitioned by `person_key`.
"""

from __future__ import annotations

import bisect
import datetime as dt
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stratify import codelists
from stratify.catalogue import DAYS_CAP, FEATURES, NAMES, YEARS_CAP, history_years
from stratify.sources import (
    COLUMNS,
    DATES,
    DIED_DESTINATION,
    ELECTIVE_METHODS,
    EMERGENCY_METHODS,
    NUMBERS,
    PERSON_FIELDS,
    add_months,
    prepare,
)

CHARLSON_LOOKBACK_MONTHS = 60
HFRS_LOOKBACK_MONTHS = 24
FETCH_COLUMNS = 16
HISTORY_TABLES = ("h_apc", "h_ae", "h_op", "h_gp", "h_meds", "h_sc")
# Persons per partition of the feature table: above it, features are worked a person-hash
# partition at a time, so DuckDB's working set is bounded by a partition (`feature_table`).
PARTITION_PERSONS = 500_000
# The tables `feature_table` makes: the result, the population, then the working tables.
WORK_TABLES = ("features_out", "pop", "f_demo", "f_apc", "f_ae", "f_op", "f_gp", "f_meds",
               "f_sc", "f_community", "dx", "ltc_first", "f_ltc", "f_cci", "f_hfrs",
               *HISTORY_TABLES)
WHOLE_GP = "whole_gp_patients"  # a range's view of every GP registration (`_has_gp`)
COMMUNITY_SERVICES = ("district_nursing", "therapy", "rapid_response", "reablement", "other")


def _ts(day: dt.date) -> str:
    return f"TIMESTAMP '{day.isoformat()}'"


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def connect(sources: Sources, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one typed view per source (`v_apc`, ...); absent ones empty.
    Given an `OnDisk` copy, a connection to its file (the tables are there already)."""
    if isinstance(sources, OnDisk) and sources.ranges is not None:
        return _connect_parquet(sources, threads or sources.threads)
    if isinstance(sources, OnDisk):
        con = connect_on_disk(sources.folder, sources.memory_limit, threads or sources.threads,
                              create=False, read_only=sources.read_only)
        if sources.persons is not None:
            _person_range_views(con, *sources.persons)
        return con
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    frames = prepare(sources)
    for name in COLUMNS:
        if name in frames:
            con.register(f"raw_{name}", frames[name])
            con.execute(f"CREATE VIEW v_{name} AS {_typed_select(name, frames[name].columns)}"
                        f" FROM raw_{name}")
        else:
            con.execute(f"CREATE TABLE v_{name} ({_ddl(name)})")
    return con


def _person_range_views(con: duckdb.DuckDBPyConnection, low: str | None,
                        high: str | None) -> None:
    """Temporary views `v_<source>` (found before the file's tables of that name) holding the
    rows of the persons whose keys are in `[low, high)` only (rows with no key go with the
    first range, whose `low` is None, so the ranges' rows are exactly the whole's)."""
    catalog = con.execute("SELECT current_database()").fetchone()[0]
    within = key_range_sql(low, high)
    if low is None:
        within = f"person_key IS NULL OR ({within})"
    for name in COLUMNS:
        con.execute(f'CREATE OR REPLACE TEMP VIEW v_{name} AS SELECT * FROM '
                    f'"{catalog}".main.v_{name} WHERE {within}')
    con.execute(f'CREATE OR REPLACE TEMP VIEW {WHOLE_GP} AS SELECT * FROM '
                f'"{catalog}".main.v_gp_patients')


def _connect_parquet(sources: OnDisk, threads: int | None) -> duckdb.DuckDBPyConnection:
    """`connect` for a copy in Parquet (`OnDisk.ranges`, made by Spark): an in-memory
    database whose typed views read the copy's files, spilling to a folder of its own. A
    stage seeing one of the copy's own ranges, or a run of them (`person_ranges` gives runs),
    reads those ranges' files only (and every GP registration, as `_person_range_views` gives
    any range); any other range reads every file and keeps its persons' rows."""
    con = duckdb.connect()
    spill = sources.folder / "spill" / f"reader-{secrets.token_hex(8)}"
    spill.mkdir(parents=True)
    _bounded(con, sources.memory_limit, spill, threads)
    assert sources.ranges is not None
    own = _own_ranges(sources.ranges, sources.persons)
    for name in COLUMNS:
        _parquet_view(con, f"v_{name}", name, [
            path for part in own or [None] for path in parquet_files(sources.folder, name, part)])
    if sources.persons is not None:
        _person_range_views(con, *sources.persons)
        if own is not None:
            con.execute(f"DROP VIEW {WHOLE_GP}")
            _parquet_view(con, WHOLE_GP, "gp_patients",
                          parquet_files(sources.folder, "gp_patients", None), temp=True)
    return con


def _own_ranges(ranges: tuple[tuple[str | None, str | None], ...],
                persons: tuple[str | None, str | None] | None) -> list[int] | None:
    """The numbers of the copy's consecutive ranges whose union is `persons` exactly (None:
    the whole copy, or a range that is not such a union)."""
    if persons is None:
        return None
    low, high = persons
    first = next((i for i, (start, _) in enumerate(ranges) if start == low), None)
    last = next((i for i, (_, end) in enumerate(ranges) if end == high), None)
    if first is None or last is None or first > last:
        return None
    return list(range(first, last + 1))


PARQUET_COPY = "parquet"  # a Parquet copy's folder in its workspace: <source>/range=<i>/
GLOB_MARKS = ("*", "?", "[")


def parquet_files(folder: Path, name: str, part: int | None) -> list[Path]:
    """The Parquet files of source `name` in the copy in `folder` (`OnDisk.ranges`): of its
    range `part` only, or of every range (None), in name order."""
    where = folder / PARQUET_COPY / name
    return sorted(where.glob(f"range={part}/*.parquet" if part is not None
                             else "range=*/*.parquet"))


def _parquet_view(con: duckdb.DuckDBPyConnection, view: str, name: str, paths: list[Path],
                  temp: bool = False) -> None:
    """A view `view` of source `name`'s rows in `paths`, typed as `connect` types them (an
    empty table when there is none)."""
    kind = "TEMP VIEW" if temp else "VIEW"
    if any(mark in str(path) for path in paths for mark in GLOB_MARKS):
        # DuckDB reads every path given as a pattern: another folder's files could match
        raise ValueError("the linked copy's folder (in HAVEN_HOME) has a '*', '?' or '[' in "
                         "its path: DuckDB would read it as a pattern; move the data "
                         "directory to a path without them")
    if not paths:
        con.execute(f"CREATE {'TEMP ' if temp else ''}TABLE {view} ({_ddl(name)})")
        return
    listed = ", ".join(f"'{_sql_path(path)}'" for path in paths)
    present = pq.read_schema(paths[0]).names  # every file of a source has its schema
    con.execute(f"CREATE {kind} {view} AS {_typed_select(name, present)} "
                f"FROM read_parquet([{listed}], hive_partitioning = false)")


def key_range_sql(low: str | None, high: str | None) -> str:
    """SQL: `person_key` is in `[low, high)` (None: unbounded on that side)."""
    return " AND ".join([f"person_key >= {_quoted(low)}" if low is not None else "TRUE",
                         f"person_key < {_quoted(high)}" if high is not None else "TRUE"])


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def person_ranges(sources: Sources, persons_per_part: int
                  ) -> list[tuple[str | None, str | None]]:
    """Ranges of person keys `[low, high)` (None: unbounded) of about `persons_per_part`
    persons each, in key order, covering every key: a stage run a range at a time holds one
    range's persons, and its results put one after another are in person-key order. One
    range, `(None, None)`, for frames or a population of at most `persons_per_part`. Over a
    Parquet copy (`OnDisk.ranges`) every range is a run of the copy's own (`_snapped`), so a
    task reads only those ranges' files."""
    if not isinstance(sources, OnDisk) or persons_per_part < 1:
        return [(None, None)]
    union = " UNION ".join(f"SELECT person_key FROM v_{name} WHERE person_key IS NOT NULL"
                           for name in COLUMNS)
    con = connect(sources)
    try:
        starts = [row[0] for row in con.execute(f"""
            SELECT person_key FROM (
                SELECT person_key, row_number() OVER (ORDER BY person_key) - 1 AS n
                FROM ({union}))
            WHERE n > 0 AND n % {int(persons_per_part)} = 0 ORDER BY person_key
        """).fetchall()]
    finally:
        con.close()
    if sources.ranges is not None:
        starts = _snapped(starts, [low for low, _ in sources.ranges[1:] if low is not None])
    edges: list[str | None] = [None, *starts, None]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _snapped(starts: list[str], own: list[str]) -> list[str]:
    """`starts` moved each to the first of a Parquet copy's range starts `own` at or after
    it (the last when none is), once each: every range is then a run of the copy's ranges,
    whose task reads only their files. Sizes stay about right (within a copy's range)."""
    if not own:
        return []
    moved = [own[min(bisect.bisect_left(own, start), len(own) - 1)] for start in starts]
    return sorted(set(moved))


def _types(name: str) -> dict[str, str]:
    wanted = ["person_key", *COLUMNS[name], *PERSON_FIELDS]
    return {c: "TIMESTAMP" if c in DATES else "DOUBLE" if c in NUMBERS else
            "BOOLEAN" if c == "withdrawn" else "VARCHAR" for c in wanted}


def _ddl(name: str) -> str:
    return ", ".join(f"{c} {t}" for c, t in _types(name).items())


def _typed_select(name: str, present: Iterable[str]) -> str:
    have = set(present)
    return "SELECT " + ", ".join(
        f"CAST({c} AS {t}) AS {c}" if c in have else f"CAST(NULL AS {t}) AS {c}"
        for c, t in _types(name).items())


@dataclass(frozen=True)
class OnDisk:
    """Linked rows typed into a DuckDB file by `append_rows` (see `connect_on_disk`): given in
    place of the `sources` dict, `connect` opens the file, so every stage function that reads
    sources through `connect` runs over a population larger than memory unchanged.
    `ids`: the extract ids each source's rows came from; `rows`: how many rows it holds.
    `persons`: when set, the range of person keys `[low, high)` (None: unbounded) a stage sees
    (`person_ranges`): every view holds those persons' rows only. `read_only`: opened by
    several processes at once (Spark's tasks, `shared`). `threads`: DuckDB's threads when
    the caller names none (a Spark task's CPUs; None: every core). `ranges`: set when the
    rows are Parquet files, not a DuckDB file (the Spark engine's copy,
    `pipeline.engines.spark_copy`): `folder/parquet/<source>/range=<i>/` holds the rows of
    the persons whose keys are in `ranges[i]` (`person_ranges`' form), each file in key
    order."""

    folder: Path
    memory_limit: str
    ids: dict[str, list[str]]
    rows: int
    persons: tuple[str | None, str | None] | None = None
    read_only: bool = False
    threads: int | None = None
    ranges: tuple[tuple[str | None, str | None], ...] | None = None

    def part(self, low: str | None, high: str | None) -> OnDisk:
        """The same copy seen as the persons whose keys are in `[low, high)` only."""
        return replace(self, persons=(low, high))

    def shared(self) -> OnDisk:
        """The same copy for processes that read it at the same time: each opens the file
        read-only (DuckDB lets many readers in, or one writer) and spills to its own folder."""
        return replace(self, read_only=True)


Sources = dict[str, pd.DataFrame] | OnDisk


def connect_on_disk(folder: Path, memory_limit: str = "1GB", threads: int | None = None,
                    create: bool = True, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection like `connect`'s whose typed tables live in a DuckDB file in `folder`
    (filled a batch at a time by `append_rows`, when `create`), with a memory limit past
    which DuckDB spills to `folder`: features of a whole population in bounded memory.
    `read_only`: one of several readers of the file at once (Spark's tasks, perhaps on other
    hosts sharing the folder, where process ids repeat), each spilling to a folder of its own,
    made here (DuckDB makes only a folder's last level)."""
    con = duckdb.connect(str(folder / "sources.duckdb"), read_only=read_only)
    spill = folder / "spill"
    if read_only:
        spill = spill / f"reader-{secrets.token_hex(8)}"
        spill.mkdir(parents=True)
    _bounded(con, memory_limit, spill, threads)
    if create:
        for name in COLUMNS:
            con.execute(f"CREATE TABLE v_{name} ({_ddl(name)})")
    return con


def _bounded(con: duckdb.DuckDBPyConnection, memory_limit: str, spill: Path,
             threads: int | None) -> None:
    """A copy's connection held to `memory_limit`, spilling past it into `spill`, on
    `threads` threads (None: every core); rows in no particular order (less memory)."""
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{_sql_path(spill)}'")
    con.execute("SET preserve_insertion_order = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")


def cluster_by_person(folder: Path, memory_limit: str = "1GB") -> None:
    """Rewrite the copy in `folder` (`connect_on_disk`, filled) with every table's rows in
    person-key order, into a new file that replaces the old one whole. Rows arrive extract
    by extract, so a range of persons (`person_ranges`) was spread over the whole file and
    every range read all of it; in key order DuckDB's zone maps skip the row groups of other
    ranges, so a range's task reads about its own rows (at 1M persons a range's features
    took 1.35 s instead of 2.5 s; at 60M each of 600 tasks would otherwise scan 3 billion
    rows). Results do not change: no feature depends on the order rows are stored in."""
    target = folder / "sorted.duckdb"
    target.unlink(missing_ok=True)
    con = duckdb.connect(str(target))
    try:
        con.execute(f"SET memory_limit = '{memory_limit}'")
        con.execute(f"SET temp_directory = '{folder / 'spill'}'")
        con.execute("SET preserve_insertion_order = true")  # the ORDER BY is the point
        con.execute(f"ATTACH '{_sql_path(folder / 'sources.duckdb')}' AS unsorted (READ_ONLY)")
        for name in COLUMNS:
            con.execute(f"CREATE TABLE v_{name} AS SELECT * FROM unsorted.v_{name} "
                        f"ORDER BY person_key NULLS FIRST")
        con.execute("DETACH unsorted")
    except BaseException:
        con.close()
        target.unlink(missing_ok=True)
        raise
    con.close()
    os.replace(target, folder / "sources.duckdb")


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def append_rows(con: duckdb.DuckDBPyConnection, name: str, frame: pd.DataFrame) -> int:
    """Add a batch of one source's linked rows to a `connect_on_disk` connection, typed as
    `connect` types them (the same `prepare`); returns the rows added."""
    prepared = prepare({name: frame}).get(name)
    if prepared is None or name not in COLUMNS:
        return 0
    _insert(con, name, prepared, list(prepared.columns))
    return len(prepared)


def _insert(con: duckdb.DuckDBPyConnection, name: str, rows: pd.DataFrame | pa.Table,
            columns: list[str]) -> None:
    """Insert prepared rows (a frame or an Arrow table) into `v_<name>`, cast to its types."""
    con.register("batch_rows", rows)
    try:
        con.execute(f"INSERT INTO v_{name} {_typed_select(name, columns)} FROM batch_rows")
    finally:
        con.unregister("batch_rows")


def append_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> int:
    """`append_rows` for an Arrow table (as `linkage.linked_view.linked_tables` gives):
    DuckDB reads its columns as they are, with what `prepare` does to a frame done in Arrow,
    when every column has a type whose cast is `prepare`'s (else the frame's way)."""
    rows = _prepared(name, table)
    if rows is None:
        return 0
    _insert(con, name, rows, _column_names(rows))
    return len(rows)


def _prepared(name: str, table: pa.Table) -> pd.DataFrame | pa.Table | None:
    """A batch of source `name`'s linked rows as `prepare` leaves them for DuckDB's casts:
    in Arrow when every column's type allows (`_arrow_prepared`), else as a frame; None when
    no row is left."""
    if name not in COLUMNS or table.num_rows == 0:
        return None
    if "person_key" not in table.column_names:
        raise ValueError(f"source {name} has no person_key column")
    rows: pd.DataFrame | pa.Table | None = _arrow_prepared(name, table)
    if rows is None:
        rows = prepare({name: table.to_pandas()}).get(name)
    return rows if rows is not None and len(rows) else None


def _column_names(rows: pd.DataFrame | pa.Table) -> list[str]:
    return list(rows.columns) if isinstance(rows, pd.DataFrame) else rows.column_names


_ARROW_TYPES = {"TIMESTAMP": pa.timestamp("us"), "DOUBLE": pa.float64(),
                "BOOLEAN": pa.bool_(), "VARCHAR": pa.string()}


def copy_schema(name: str) -> pa.Schema:
    """The Arrow types of source `name`'s columns in the copy (`typed_table`'s result)."""
    return pa.schema([(column, _ARROW_TYPES[kind]) for column, kind in _types(name).items()])


def typed_table(name: str, table: pa.Table) -> pa.Table | None:
    """A batch of source `name`'s linked rows (as `linkage.linked_view.linked_tables` gives)
    as `append_table` would put it into the copy: `_types(name)`'s columns, cast by DuckDB
    as the copy casts them (None when no row is left). For a copy written elsewhere than a
    DuckDB file (the Spark engine's Parquet copy), with the same values."""
    rows = _prepared(name, table)
    if rows is None:
        return None
    con = duckdb.connect()
    try:
        con.register("batch_rows", rows)
        typed = con.sql(f"{_typed_select(name, _column_names(rows))} FROM batch_rows"
                        ).to_arrow_table()
        return typed.cast(copy_schema(name))
    finally:
        con.close()


# pandas' nanosecond datetimes: `prepare` makes dates outside these bounds NaT (null)
_NS_FIRST, _NS_LAST = dt.date(1677, 9, 22), dt.date(2262, 4, 11)


def _arrow_prepared(name: str, table: pa.Table) -> pa.Table | None:
    """The columns `_types(name)` names, as `prepare` leaves them for DuckDB's casts: NaN
    numbers null, a null or absent `withdrawn` false, dates pandas cannot hold null; None when a
    column's type is not one this knows `prepare`'s result for (text as text, dates as
    dates or zone-less timestamps, numbers as numbers, `withdrawn` as booleans)."""
    out = {}
    for column in _types(name):
        if column not in table.column_names:
            if column == "withdrawn":  # `prepare` reads a missing flag as not withdrawn
                out[column] = pa.repeat(pa.scalar(False), table.num_rows)
            continue
        values = table.column(column)
        kind = values.type
        if column in DATES:
            if pa.types.is_date(kind):
                outside = pc.or_(pc.less(values, pa.scalar(_NS_FIRST, kind)),
                                 pc.greater(values, pa.scalar(_NS_LAST, kind)))
                values = pc.if_else(outside, pa.scalar(None, kind), values)
            elif not (pa.types.is_timestamp(kind) and kind.tz is None):
                return None
        elif column in NUMBERS:
            if pa.types.is_floating(kind):
                values = pc.if_else(pc.is_nan(values), pa.scalar(None, kind), values)
            elif not pa.types.is_integer(kind):
                return None
        elif column == "withdrawn":
            if not pa.types.is_boolean(kind):
                return None
            values = pc.fill_null(values, False)
        elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return None
        out[column] = values
    return pa.table(out)


def _codelist_tables(con: duckdb.DuckDBPyConnection) -> None:
    icd = codelists.ltc_icd10().rename(columns={"icd10_prefix": "prefix"})
    icd["plen"] = icd["prefix"].str.len()
    con.register("cl_ltc_icd", icd[["condition", "prefix", "plen"]])
    con.register("cl_ltc_snomed", codelists.ltc_snomed()[["condition", "snomed_id"]])
    cci = codelists.charlson().rename(columns={"icd10_prefix": "prefix"})
    cci["plen"] = cci["prefix"].str.len()
    con.register("cl_charlson", cci[["category", "prefix", "plen", "weight"]])
    con.register("cl_hfrs", codelists.hfrs()[["icd10_3", "weight"]])


def history_months(con: duckdb.DuckDBPyConnection, at: dt.date) -> int | None:
    """Whole months of hospital and GP history before `at` (None when there is none)."""
    first = con.execute("""SELECT least(
        (SELECT min(admission_date) FROM v_apc), (SELECT min(event_date) FROM v_gp_events))
    """).fetchone()[0]
    if first is None:
        return None
    first = pd.Timestamp(first).date()
    months = (at.year - first.year) * 12 + at.month - first.month - (at.day < first.day)
    return max(months, 0)


def _has_gp(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether any GP registration is on record (else other records stand in for it): in
    the whole copy also when one range of persons is viewed (`_person_range_views`), so a
    range of persons none of whom is registered is not given the other rule."""
    whole = con.execute("SELECT count(*) FROM duckdb_views() "
                        f"WHERE view_name = '{WHOLE_GP}'").fetchone()[0]
    table = WHOLE_GP if whole else "v_gp_patients"
    return bool(con.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0])


def population(con: duckdb.DuckDBPyConnection, at: dt.date, has_gp: bool) -> None:
    """Table `pop`: persons registered on or before `at` and not dead before `at`.

    Without GP registrations (`has_gp` false), persons with any dated record before `at`
    stand in.
    """
    at_ = _ts(at)
    if has_gp:
        base = f"SELECT DISTINCT person_key FROM v_gp_patients WHERE registration_date <= {at_}"
    else:
        seen = [f"SELECT person_key FROM v_{s} WHERE {d} < {at_}" for s, d in (
            ("apc", "admission_date"), ("ae", "arrival_datetime"), ("op", "appointment_date"),
            ("gp_events", "event_date"), ("gp_medications", "issue_date"),
            ("community", "contact_date"), ("social_care", "start_date"))]
        base = "SELECT DISTINCT person_key FROM (" + " UNION ALL ".join(seen) + ")"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE pop AS
        WITH base AS ({base}),
        dead AS (
            SELECT person_key FROM v_deaths WHERE date_of_death < {at_}
            UNION SELECT person_key FROM v_apc
            WHERE discharge_destination = '{DIED_DESTINATION}' AND discharge_date < {at_})
        SELECT person_key FROM base WHERE person_key IS NOT NULL
        AND person_key NOT IN (SELECT person_key FROM dead WHERE person_key IS NOT NULL)
    """)


def _demographics(at: dt.date, has_gp: bool) -> str:
    parts = ["SELECT person_key, birth_ym, sex, 0 AS pri FROM v_gp_patients"]
    if not has_gp:
        parts += [f"SELECT person_key, birth_ym, sex, 1 AS pri FROM v_{s}"
                  for s in ("apc", "ae", "op", "community", "social_care")]
    union = " UNION ALL ".join(parts)
    months = at.year * 12 + at.month
    return f"""
        CREATE TEMP TABLE f_demo AS
        SELECT person_key,
            floor(({months} - (TRY_CAST(substr(ym, 1, 4) AS INTEGER) * 12
                + TRY_CAST(substr(ym, 6, 2) AS INTEGER))) / 12) AS age,
            CASE WHEN sx = '2' THEN 1 ELSE 0 END AS sex_female
        FROM (SELECT person_key,
                  split_part(min(pri::VARCHAR || '|' || birth_ym), '|', 2) AS ym,
                  split_part(min(pri::VARCHAR || '|' || sex), '|', 2) AS sx
              FROM ({union}) u SEMI JOIN pop USING (person_key)
              WHERE birth_ym IS NOT NULL GROUP BY person_key)
    """


def _activity_sql(at: dt.date) -> list[str]:
    at_ = _ts(at)
    m = {n: _ts(add_months(at, -n)) for n in (6, 12, 24, CHARLSON_LOOKBACK_MONTHS)}
    emergency, elective = _in(EMERGENCY_METHODS), _in(ELECTIVE_METHODS)

    def since(column: str, where: str = "TRUE") -> str:
        return f"least(min(date_diff('day', {column}, {at_})) FILTER (WHERE {where}), {DAYS_CAP})"

    sections = codelists.bnf_sections()
    bnf = ",\n".join(
        f"count(*) FILTER (WHERE left(chemical, 4) = '{s}') AS bnf_{s}_6m"
        for s in sections.loc[sections["feature"], "section"])
    community = ",\n".join(
        f"count(*) FILTER (WHERE service = '{s}' AND contact_date >= {m[12]}) "
        f"AS community_{s}_12m" for s in COMMUNITY_SERVICES)
    return [f"""
        CREATE TEMP TABLE f_apc AS
        WITH s AS (
            SELECT person_key, CAST(admission_date AS DATE) AS adm, admission_date,
                admission_method IN {emergency} AS emerg,
                admission_method IN {elective} AS elective,
                discharge_date IS NULL OR discharge_date >= {at_} AS open,
                greatest(date_diff('day', admission_date,
                    least(coalesce(discharge_date, {at_}), {at_})), 0) AS los
            FROM v_apc WHERE admission_date < {at_} AND admission_date >= {m[24]})
        SELECT person_key,
            count(*) FILTER (WHERE emerg AND admission_date >= {m[6]}) AS emergency_admissions_6m,
            count(*) FILTER (WHERE emerg AND admission_date >= {m[12]})
                AS emergency_admissions_12m,
            count(*) FILTER (WHERE emerg) AS emergency_admissions_24m,
            coalesce(sum(los) FILTER (WHERE emerg AND admission_date >= {m[12]}), 0)
                AS emergency_bed_days_12m,
            coalesce(sum(los) FILTER (WHERE emerg), 0) AS emergency_bed_days_24m,
            {since('admission_date', 'emerg')} AS days_since_emergency_admission,
            count(*) FILTER (WHERE elective AND admission_date >= {m[12]})
                AS elective_admissions_12m,
            count(*) FILTER (WHERE elective) AS elective_admissions_24m,
            sum(los) AS bed_days_24m,
            {since('admission_date')} AS days_since_admission,
            max(CASE WHEN open THEN 1 ELSE 0 END) AS in_hospital
        FROM s GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE f_ae AS
        SELECT person_key,
            count(*) FILTER (WHERE arrival_datetime >= {m[6]}) AS ae_attendances_6m,
            count(*) FILTER (WHERE arrival_datetime >= {m[12]}) AS ae_attendances_12m,
            count(*) FILTER (WHERE arrival_mode = 'ambulance' AND arrival_datetime >= {m[6]})
                AS ambulance_arrivals_6m,
            count(*) FILTER (WHERE arrival_mode = 'ambulance' AND arrival_datetime >= {m[12]})
                AS ambulance_arrivals_12m,
            count(*) FILTER (WHERE discharge_status = 'admitted'
                AND arrival_datetime >= {m[12]}) AS ae_admitted_12m,
            least(min(date_diff('day', CAST(arrival_datetime AS DATE), CAST({at_} AS DATE))),
                {DAYS_CAP}) AS days_since_ae
        FROM v_ae WHERE arrival_datetime < {at_} AND arrival_datetime >= {m[24]}
        GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE f_op AS
        SELECT person_key,
            count(*) FILTER (WHERE attendance_status IN ('5', '6')
                AND appointment_date >= {m[12]}) AS op_attendances_12m,
            count(DISTINCT treatment_function_code) FILTER (WHERE attendance_status IN ('5', '6')
                AND appointment_date >= {m[12]}) AS op_specialties_12m,
            count(*) FILTER (WHERE attendance_status = '3' AND appointment_date >= {m[12]})
                AS op_dna_12m,
            {since('appointment_date', "attendance_status IN ('5', '6')")} AS days_since_op
        FROM v_op WHERE appointment_date < {at_} AND appointment_date >= {m[24]}
        GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE f_gp AS
        SELECT person_key,
            count(DISTINCT event_date) FILTER (WHERE event_date >= {m[12]}) AS gp_event_days_12m,
            {since('event_date')} AS days_since_gp_event
        FROM v_gp_events WHERE event_date < {at_} AND event_date >= {m[24]}
        GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE f_meds AS
        WITH chemicals AS (
            SELECT person_key, left(bnf_code, 9) AS chemical, count(*) AS issues
            FROM v_gp_medications WHERE issue_date < {at_} AND issue_date >= {m[6]}
            GROUP BY person_key, chemical)
        SELECT person_key,
            count(*) AS distinct_medicines_6m,
            sum(issues) AS medicine_issues_6m,
            {bnf}
        FROM chemicals GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE f_sc AS
        WITH s AS (SELECT *, end_date IS NULL OR end_date >= {at_} AS active
                   FROM v_social_care WHERE start_date < {at_})
        SELECT person_key, 1 AS sc_known,
            max(CASE WHEN active THEN 1 ELSE 0 END) AS sc_active,
            max(CASE WHEN active AND service_type = 'home_care' THEN 1 ELSE 0 END)
                AS sc_home_care,
            max(CASE WHEN active AND service_type IN ('residential', 'nursing') THEN 1 ELSE 0 END)
                AS sc_care_home,
            max(CASE WHEN active AND service_type = 'reablement' THEN 1 ELSE 0 END)
                AS sc_reablement,
            max(CASE WHEN active AND service_type NOT IN
                ('home_care', 'residential', 'nursing', 'reablement') THEN 1 ELSE 0 END)
                AS sc_other_service,
            coalesce(sum(weekly_cost) FILTER (WHERE active), 0) AS sc_weekly_cost,
            count(*) FILTER (WHERE start_date >= {m[12]}) AS sc_started_12m
        FROM s GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE f_community AS
        SELECT person_key,
            {community},
            {since('contact_date')} AS days_since_community
        FROM v_community WHERE contact_date < {at_} AND contact_date >= {m[24]}
        GROUP BY person_key
    """]


def _yearly(column: str, at: dt.date, years: int) -> tuple[str, str, str]:
    """SQL for a history window of `years` whole years back from `at`: (year index 0.. of
    `column`, `years` as text, the window's first day)."""
    bounds = [add_months(at, -12 * k) for k in range(1, years)]
    index = "CASE " + " ".join(f"WHEN {column} >= {_ts(b)} THEN {k}"
                               for k, b in enumerate(bounds)) + f" ELSE {years - 1} END"
    return (index if bounds else "0"), str(years), _ts(add_months(at, -12 * years))


def _trend(last: str, total: str, years: int) -> str:
    """Last year's count minus the mean per year of the earlier years (0 with one year)."""
    if years < 2:
        return "0"
    return f"({last}) - (({total}) - ({last})) / {years - 1}.0"


def _history_sql(at: dt.date, lookback: int | None) -> list[str]:
    """Long-history features (catalogue `_history_features`): one pass per source over the
    history window, which every date of a run shares (see `catalogue.history_years`)."""
    at_ = _ts(at)
    years = history_years(lookback)
    m12, m18, m24 = (_ts(add_months(at, -n)) for n in (12, 18, 24))
    emergency = _in(EMERGENCY_METHODS)
    apc_year, _, start = _yearly("admission_date", at, years)
    ae_year, _, _ = _yearly("arrival_datetime", at, years)
    last_apc = f"count(*) FILTER (WHERE admission_date >= {m12})"
    last_ae = f"count(*) FILTER (WHERE arrival_datetime >= {m12})"
    # Windows beyond the history window stay empty, so every date of a run sees alike.
    far = {n: (f"admission_date >= {_ts(add_months(at, -n))}" if n <= 12 * years else "FALSE")
           for n in (24, 36)}
    meds_from = m18 if years >= 2 else at_  # with one year on record: no change to tell
    on = 1 if years >= 2 else 0
    sc_then = _ts(add_months(at, -12))
    return [f"""
        CREATE TEMP TABLE h_apc AS
        SELECT person_key,
            count(*) FILTER (WHERE admission_date < {m12} AND {far[24]})
                AS emergency_admissions_12_24m,
            count(*) FILTER (WHERE admission_date < {m24} AND {far[36]})
                AS emergency_admissions_24_36m,
            count(*) AS emergency_admissions_history,
            count(DISTINCT {apc_year}) AS emergency_admission_years,
            {_trend(last_apc, "count(*)", years)} AS emergency_admissions_trend
        FROM v_apc WHERE admission_date < {at_} AND admission_date >= {start}
        AND admission_method IN {emergency}
        GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE h_ae AS
        SELECT person_key,
            count(*) FILTER (WHERE arrival_datetime >= {m24}) AS ae_attendances_24m,
            count(*) AS ae_attendances_history,
            count(DISTINCT {ae_year}) AS ae_years,
            {_trend(last_ae, "count(*)", years)} AS ae_trend,
            count(*) FILTER (WHERE arrival_mode = 'ambulance') AS ambulance_arrivals_history
        FROM v_ae WHERE arrival_datetime < {at_} AND arrival_datetime >= {start}
        GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE h_op AS
        SELECT person_key, count(*) AS op_attendances_history
        FROM v_op WHERE appointment_date < {at_} AND appointment_date >= {start}
        AND attendance_status IN ('5', '6') GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE h_gp AS
        SELECT person_key, count(DISTINCT event_date) AS gp_event_days_history
        FROM v_gp_events WHERE event_date < {at_} AND event_date >= {start}
        GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE h_meds AS
        WITH earlier AS (
            SELECT person_key, count(DISTINCT left(bnf_code, 9)) AS chemicals, count(*) AS issues
            FROM v_gp_medications WHERE issue_date < {m12} AND issue_date >= {meds_from}
            GROUP BY person_key)
        SELECT person_key,
            {on} * (coalesce(f.distinct_medicines_6m, 0) - coalesce(e.chemicals, 0))
                AS distinct_medicines_change_12m,
            {on} * (coalesce(f.medicine_issues_6m, 0) - coalesce(e.issues, 0))
                AS medicine_issues_change_12m
        FROM f_meds f FULL JOIN earlier e USING (person_key)
    """, f"""
        CREATE TEMP TABLE h_sc AS
        SELECT person_key,
            count(*) FILTER (WHERE end_date IS NULL OR end_date >= {at_})
            - count(*) FILTER (WHERE start_date < {sc_then}
                               AND (end_date IS NULL OR end_date >= {sc_then})) AS sc_change_12m,
            count(*) FILTER (WHERE start_date >= {start}) AS sc_started_history
        FROM v_social_care WHERE start_date < {at_} GROUP BY person_key
    """]


def _diagnosis_sql(at: dt.date, lookback: int | None) -> list[str]:
    at_ = _ts(at)
    hfrs_from = _ts(add_months(at, -HFRS_LOOKBACK_MONTHS))
    cci_months = min(CHARLSON_LOOKBACK_MONTHS, lookback or CHARLSON_LOOKBACK_MONTHS)
    cci_from = _ts(add_months(at, -cci_months))
    ltc_from = _ts(add_months(at, -lookback)) if lookback else "TIMESTAMP '1800-01-01'"
    conditions = codelists.conditions()
    pivot = ",\n".join(
        f"max(CASE WHEN condition = '{c}' THEN date_diff('day', first, {at_}) END) AS d_{c}"
        for c in conditions["condition"])

    def prefix_join(table: str, columns: str, where: str = "TRUE") -> str:
        return " UNION ALL ".join(
            f"SELECT dx.person_key, dx.d, {columns} FROM dx JOIN "
            f"(SELECT * FROM {table} WHERE plen = {n}) l ON left(dx.code, {n}) = l.prefix "
            f"WHERE {where}" for n in (3, 4))

    return [f"""
        CREATE TEMP TABLE dx AS
        SELECT person_key, admission_date AS d, replace(upper(primary_diagnosis), '.', '') AS code,
            TRUE AS hospital
        FROM v_apc WHERE admission_date < {at_} AND primary_diagnosis IS NOT NULL
        UNION ALL
        SELECT person_key, d, code, TRUE FROM (
            SELECT person_key, admission_date AS d,
                replace(upper(trim(unnest(string_split(secondary_diagnoses, ';')))), '.', '')
                    AS code
            FROM v_apc WHERE admission_date < {at_} AND secondary_diagnoses IS NOT NULL)
        WHERE code <> ''
        UNION ALL
        SELECT person_key, event_date, replace(upper(code), '.', ''), FALSE
        FROM v_gp_events WHERE code_system = 'icd10' AND event_date < {at_}
    """, f"""
        CREATE TEMP TABLE ltc_first AS
        SELECT person_key, condition, min(d) AS first FROM (
            {prefix_join('cl_ltc_icd', 'l.condition', f'dx.d >= {ltc_from}')}
            UNION ALL
            SELECT g.person_key, g.event_date, s.condition FROM v_gp_events g
            JOIN cl_ltc_snomed s ON g.code = s.snomed_id
            WHERE g.code_system = 'snomed' AND g.event_date < {at_}
            AND g.event_date >= {ltc_from})
        GROUP BY person_key, condition
    """, f"""
        CREATE TEMP TABLE f_ltc AS
        SELECT person_key, {pivot} FROM ltc_first GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE f_cci AS
        WITH c AS (
            SELECT DISTINCT person_key, category, weight FROM (
                {prefix_join('cl_charlson', 'l.category, l.weight', f'dx.d >= {cci_from}')})),
        h AS (
            SELECT *, bool_or(category = 'diabwc') OVER w AS has_diabwc,
                bool_or(category = 'msld') OVER w AS has_msld,
                bool_or(category = 'metacanc') OVER w AS has_metacanc
            FROM c WINDOW w AS (PARTITION BY person_key))
        SELECT person_key, sum(weight) AS charlson_index FROM h
        WHERE NOT ((category = 'diab' AND has_diabwc) OR (category = 'mld' AND has_msld)
                   OR (category = 'canc' AND has_metacanc))
        GROUP BY person_key
    """, f"""
        CREATE TEMP TABLE f_hfrs AS
        SELECT person_key, sum(weight) AS hfrs FROM (
            SELECT DISTINCT person_key, left(code, 3) AS c3 FROM dx
            WHERE hospital AND d >= {hfrs_from}) x
        JOIN cl_hfrs h ON x.c3 = h.icd10_3
        GROUP BY person_key
    """]


def _final_sql() -> str:
    conditions = codelists.conditions()
    tables = ["f_demo", "f_apc", "f_ae", "f_op", "f_gp", "f_meds", "f_sc", "f_community",
              "f_ltc", "f_cci", "f_hfrs", *HISTORY_TABLES]
    exprs: list[str] = []
    counted = [c for c, k in zip(conditions["condition"], conditions["counted"], strict=True)
               if k]
    for feature in FEATURES:
        name = feature.name
        if name.startswith("ltc_") and name != "ltc_count":
            cond = name[4:].removesuffix("_years")
            if name.endswith("_years"):
                exprs.append(f"CASE WHEN d_{cond} IS NULL THEN 0 ELSE least(d_{cond} / 365.25, "
                             f"{YEARS_CAP}) END AS {name}")
            else:
                exprs.append(f"CASE WHEN d_{cond} IS NULL THEN 0 ELSE 1 END AS {name}")
        elif name == "ltc_count":
            exprs.append("(" + " + ".join(f"CASE WHEN d_{c} IS NULL THEN 0 ELSE 1 END"
                                          for c in counted) + ") AS ltc_count")
        elif name == "age":
            exprs.append("age")
        else:
            exprs.append(f"coalesce({name}, {feature.default}) AS {name}")
    joins = " ".join(f"LEFT JOIN {t} USING (person_key)" for t in tables)
    return f"SELECT person_key, {', '.join(exprs)} FROM pop {joins} ORDER BY person_key"


def build_features(sources: dict[str, pd.DataFrame], at: dt.date,
                   lookback_months: int | None = None, threads: int | None = None
                   ) -> pd.DataFrame:
    """Features of every person alive and registered at `at`, from records before `at`.

    Returns a float32 frame indexed by `person_key` with the columns of `catalogue.NAMES`
    (age is NaN when no birth year-month is known). See `FEATURES.md` for each column.
    `lookback_months` limits how far back conditions and the Charlson index look (None: all
    history); training sets it so that training and scoring dates see equally long histories.
    """
    con = connect(sources, threads)
    try:
        return features_from(con, at, lookback_months)
    finally:
        con.close()


def features_from(con: duckdb.DuckDBPyConnection, at: dt.date,
                  lookback_months: int | None = None,
                  columns: Iterable[str] | None = None) -> pd.DataFrame:
    """`build_features` on a connection made by `connect` (reused for several dates).
    `columns`: fetch only these features (in `NAMES` order), e.g. the few segment rules read,
    so a whole population's 126 columns are never held in memory for them."""
    feature_table(con, at, lookback_months)
    chosen = set(NAMES if columns is None else columns)
    return fetch_features(con, [name for name in NAMES if name in chosen])


def feature_table(con: duckdb.DuckDBPyConnection, at: dt.date,
                  lookback_months: int | None = None,
                  partition_persons: int = PARTITION_PERSONS) -> int:
    """Work out the features at `at` into the connection's table `features_out` (one row per
    person, nothing fetched into Python: `fetch_features`, `feature_keys`, `feature_columns`
    read it); returns how many persons it holds. Training uses it to draw a sample before
    fetching anything (stratify.train).

    A population above `partition_persons` is worked a person-hash partition at a time
    (`_partition_views`): every feature is one person's own records, so the partitions'
    rows are exactly the whole's, and DuckDB's working tables (joins, windows, the 126-column
    result) hold one partition, not everyone (at 3 million persons they did not fit in 1 GB).
    """
    for table in ("pop_all", *WORK_TABLES):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    _codelist_tables(con)
    has_gp = _has_gp(con)
    population(con, at, has_gp)
    persons = int(con.execute("SELECT count(*) FROM pop").fetchone()[0])
    parts = max(1, -(-persons // max(partition_persons, 1)))
    if parts == 1:
        _feature_statements(con, at, lookback_months, has_gp, lambda sql: sql)
        # Materialise in person_key order (row order feeds model fitting, so it must not
        # vary), then fetch column arrays: much faster than a row-wise conversion.
        con.execute(f"CREATE OR REPLACE TEMP TABLE features_out AS {_final_sql()}")
        return persons
    con.execute("ALTER TABLE pop RENAME TO pop_all")
    for part in range(parts):
        _partition_views(con, part, parts)
        con.execute(f"CREATE OR REPLACE TEMP TABLE pop AS SELECT person_key FROM pop_all "
                    f"WHERE {_bucket(part, parts)}")
        _feature_statements(con, at, lookback_months, has_gp, _partitioned)
        final = _final_sql()
        con.execute(f"CREATE TEMP TABLE features_out AS {final}" if part == 0
                    else f"INSERT INTO features_out {final}")
        for table in WORK_TABLES[2:]:  # the partition's working tables, not the result
            con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute("DROP TABLE pop_all")
    return persons


def _feature_statements(con: duckdb.DuckDBPyConnection, at: dt.date,
                        lookback_months: int | None, has_gp: bool,
                        tables: Callable[[str], str]) -> None:
    """Build every feature table (`f_*`, `h_*`) of the persons in `pop`; `tables` rewrites
    each statement's source views (a partition's, or unchanged)."""
    for sql in [_demographics(at, has_gp), *_activity_sql(at),
                *_history_sql(at, lookback_months), *_diagnosis_sql(at, lookback_months)]:
        con.execute(tables(sql))


def _bucket(part: int, parts: int) -> str:
    """SQL: the person is in partition `part` of `parts` (DuckDB's hash of the key)."""
    return f"hash(person_key) % {parts} = {part}"


def _partition_views(con: duckdb.DuckDBPyConnection, part: int, parts: int) -> None:
    """Views `p_<source>`: each source's rows of the persons in partition `part`."""
    for name in COLUMNS:
        con.execute(f"CREATE OR REPLACE TEMP VIEW p_{name} AS SELECT * FROM v_{name} "
                    f"WHERE {_bucket(part, parts)}")


_SOURCE_VIEW = re.compile(r"\bv_(" + "|".join(sorted(COLUMNS, key=len, reverse=True))
                          + r")\b")


def _partitioned(sql: str) -> str:
    """A feature statement reading the partition's views (`p_apc`) for the sources (`v_apc`)."""
    return _SOURCE_VIEW.sub(r"p_\1", sql)


def feature_keys(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """The person keys of `features_out` in person-key order (the order of every fetch)."""
    # Each fetch orders by person key: a disk connection does not keep insertion order
    # (connect_on_disk), and the columns fetched apart must line up.
    return np.asarray(con.execute("SELECT person_key FROM features_out ORDER BY person_key"
                                  ).fetchnumpy()["person_key"], dtype=object)


def feature_columns(con: duckdb.DuckDBPyConnection, names: list[str],
                    keys: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
    """`names` of `features_out` as float32 arrays (NaN for null), `FETCH_COLUMNS` at a time
    in the order given: DuckDB hands doubles over, twice the float32 kept (a gigabyte at a
    million persons if fetched at once). Rows in person-key order, or, given `keys`, those
    persons' rows in the order of `keys` (a training sample: the rest are never fetched)."""
    source = "features_out ORDER BY person_key"
    if keys is not None:
        con.execute("DROP TABLE IF EXISTS features_wanted")
        wanted = pd.DataFrame({"person_key": keys, "position": np.arange(len(keys))})
        con.register("features_keys", wanted)
        try:
            con.execute("CREATE TEMP TABLE features_wanted AS SELECT f.*, k.position FROM "
                        "features_keys k JOIN features_out f USING (person_key)")
        finally:
            con.unregister("features_keys")
        found = con.execute("SELECT count(*) FROM features_wanted").fetchone()[0]
        if found != len(keys):
            raise ValueError(f"{len(keys) - found} of the {len(keys)} persons asked for have "
                             f"no features at this date")
        source = "features_wanted ORDER BY position"
    for start in range(0, len(names), FETCH_COLUMNS):
        part = names[start:start + FETCH_COLUMNS]
        arrays = con.execute(f"SELECT {', '.join(part)} FROM {source}").fetchnumpy()
        yield {name: np.ma.asarray(arrays.pop(name)).astype(np.float32).filled(np.nan)
               for name in part}


def fetch_features(con: duckdb.DuckDBPyConnection, names: list[str],
                   keys: np.ndarray | None = None) -> pd.DataFrame:
    """A float32 frame of `names` from `features_out`, indexed by `person_key`: everyone in
    person-key order, or the persons `keys` in their order (`feature_columns`)."""
    index = pd.Index(feature_keys(con) if keys is None else np.asarray(keys, dtype=object),
                     name="person_key", dtype=object)
    data: dict[str, np.ndarray] = {}
    for block in feature_columns(con, names, keys):
        data.update(block)
    return pd.DataFrame(data, index=index, copy=False)
