"""The current score run, held in memory in the shape the API's questions need.

The newest complete score run (`runs` table, `kind` = `score`) is read once with DuckDB from
`$HAVEN_HOME/runs/<run_id>/scores.parquet`, in rank order (highest probability first), and kept
as a few numeric arrays: tier, age band, sex and practice as small codes, conditions and sources
as bit masks, and a per-practice index of row positions. A case-finding page is then a slice of
one practice's positions filtered with NumPy, and text (person keys, reasons) is taken only for
the rows of the page.

Runs are scored for a purpose of use (`summary.purpose`, commissioning by default), whose
opt-out rules (`policies/optout_purposes.csv`, through `governance.optouts`) decided what the
model read. Each purpose is answered from the newest run scored for it; a case-finding caller
may be answered from a commissioning run when commissioning's rules leave out at least as much.
A person whose opt-out covering the purpose arrived after the run was scored is withheld from
that purpose's answers until the next run.

`ReleaseStore.current(purpose)` notices a new run or new opt-outs (checked at most every
`refresh_seconds`) and reloads.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from sqlalchemy import Engine, func, select

from api.authz import SOURCES
from governance import optouts
from governance.schema import extracts, runs
from governance.schema import optouts as optout_register
from governance.settings import Settings
from linkage.person_index import read_link_map

TIERS = ("very_high", "high", "moderate", "low")
TIER_RANK = {"low": 0, "moderate": 1, "high": 2, "very_high": 3}
AGE_BANDS = ("0-17", "18-44", "45-64", "65-74", "75-84", "85+")
SEXES = ("1", "2", "9", "0")
# Conditions are read from GP events and hospital diagnoses (stratify.catalogue: ltc_*).
CONDITION_SOURCES = frozenset({"gp_events", "apc"})
# Reason groups every role may see: they restate the person's age band and sex.
DEMOGRAPHIC_GROUPS = frozenset({"age", "sex"})
DEFAULT_RUN_PURPOSE = "commissioning"  # what `haven score` scores for unless told
COLUMNS = ("person_key", "probability", "tier", "reasons", "previous_probability",
           "previous_tier", "change", "gp_practice_code", "age_band", "sex", "conditions",
           "sources")
OPTIONAL = ("reason_group_1", "reason_group_2", "reason_group_3", "tier_change")


class NoRun(Exception):
    """There is no complete score run to serve yet."""


def reason_group_sources() -> dict[str, frozenset[str]]:
    """Sources each reason group is derived from, from the feature catalogue."""
    try:
        from stratify.catalogue import FEATURES
    except ImportError:  # pragma: no cover - stratify ships with the API today
        return {}
    out: dict[str, set[str]] = {}
    for feature in FEATURES:
        named = {s for s in SOURCES if s in feature.source.replace(",", " ").split()}
        out.setdefault(feature.group, set()).update(named)
    return {group: frozenset(found) for group, found in out.items()}


def _encoded(values: pa.ChunkedArray) -> tuple[list[str | None], np.ndarray]:
    """Distinct values and each row's index into them (-1 for null)."""
    encoded = values.combine_chunks().dictionary_encode()
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return encoded.dictionary.to_pylist(), indices


def _bits(values: pa.ChunkedArray, vocabulary: Sequence[str]) -> np.ndarray:
    """`;`-joined labels -> int64 bit masks over `vocabulary` (one pass per distinct string)."""
    distinct, indices = _encoded(values)
    position = {label: i for i, label in enumerate(vocabulary)}
    masks = []
    for text in distinct:
        mask = 0
        for label in (text or "").split(";"):
            if label.strip() in position:
                mask |= 1 << position[label.strip()]
        masks.append(mask)
    lookup = np.array(masks + [0], dtype=np.int64)  # index -1 (null) reads the final 0
    return lookup[indices]


def _codes(values: pa.ChunkedArray, vocabulary: Sequence[str]) -> np.ndarray:
    """Labels -> int8 codes into `vocabulary` (-1 for null or unknown)."""
    text = np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)
    out = np.full(len(text), -1, dtype=np.int8)
    for code, label in enumerate(vocabulary):
        out[text == label] = code
    return out


@dataclass
class Release:
    """One score run, loaded: numeric columns for filtering, text only for the rows served."""

    run_id: str
    at: str
    model: str
    model_version: str
    table: pa.Table  # text columns, in rank order
    tier: np.ndarray
    age_band: np.ndarray
    sex: np.ndarray
    practice: np.ndarray
    practices: list[str]
    conditions: list[str]
    condition_bits: np.ndarray
    source_bits: np.ndarray
    probability: np.ndarray
    change: np.ndarray
    previous_tier: np.ndarray
    keys_sorted: np.ndarray
    keys_order: np.ndarray
    practice_rows: dict[str, np.ndarray]
    purpose: str = "commissioning"
    live: np.ndarray | None = None  # False where a person is withheld from this purpose
    withheld: dict[str, str] = field(default_factory=dict)  # person key -> practice
    cache: OrderedDict = field(default_factory=OrderedDict)
    cache_lock: threading.Lock = field(default_factory=threading.Lock)
    computing: dict[tuple, threading.Lock] = field(default_factory=dict)
    # practice -> its rows' filter columns, contiguous (`select` with `practice`)
    by_practice: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)

    @property
    def persons(self) -> int:
        return len(self.everyone)

    @cached_property
    def everyone(self) -> np.ndarray:
        """Positions of every person served (rank order)."""
        return np.arange(len(self.tier)) if self.live is None else np.flatnonzero(self.live)

    def withholding(self, purpose: str, withheld: set[str]) -> Release:
        """This run as answered for `purpose`, without the persons `withheld` (shares the
        arrays; only the masks and the per-practice index are new)."""
        rows = [self.position(key) for key in withheld]
        live = np.ones(len(self.tier), dtype=bool)
        live[[r for r in rows if r is not None]] = False
        practice_rows = {p: r[live[r]] for p, r in self.practice_rows.items()}
        return replace(self, purpose=purpose, live=live, practice_rows=practice_rows,
                       withheld={k: self.practice_of(r) for k, r in zip(withheld, rows,
                                                                         strict=True)
                                 if r is not None},
                       cache=OrderedDict(), cache_lock=threading.Lock(), computing={},
                       by_practice={})

    def position(self, person_key: str) -> int | None:
        """Row of a person key, or None when the run does not hold it."""
        try:
            wanted = np.array([person_key], dtype=self.keys_sorted.dtype)
        except (UnicodeEncodeError, ValueError):
            return None
        at = int(np.searchsorted(self.keys_sorted, wanted)[0])
        if at < len(self.keys_sorted) and self.keys_sorted[at] == wanted[0]:
            row = int(self.keys_order[at])
            return row if self.live is None or self.live[row] else None
        return None

    def practice_of(self, row: int) -> str:
        code = int(self.practice[row])
        return self.practices[code] if code >= 0 else "-"

    def owner_of(self, person_key: str) -> str:
        """The practice of a person key, withheld persons included ("-" when unknown)."""
        row = self.position(person_key)
        if row is not None:
            return self.practice_of(row)
        return self.withheld.get(person_key, "-")

    def select(self, rows: np.ndarray | None, *, tiers: Iterable[str] = (),
               age_bands: Iterable[str] = (), sexes: Iterable[str] = (),
               conditions: Iterable[str] = (), practice: str | None = None) -> np.ndarray:
        """Positions (rank order) among `rows` (None: everyone) matching every filter given.

        Everyone's filters compare whole columns, which costs less than gathering them; given
        `practice` and its `practice_rows`, that practice's columns, gathered once and kept,
        so a practice's list touches its own rows only."""
        whole = rows is None
        positions = self.everyone if rows is None else rows
        columns: tuple[np.ndarray, ...] | None = None
        if whole:
            columns = (self.tier, self.age_band, self.sex, self.condition_bits)
        elif practice is not None and rows is self.practice_rows.get(practice):
            columns = self._practice_columns(practice)
        mask: np.ndarray | None = None

        def values_of(which: int) -> np.ndarray:
            if columns is not None:
                return columns[which]
            return (self.tier, self.age_band, self.sex, self.condition_bits)[which][positions]

        def narrow(which: int, wanted: Iterable[str], vocabulary: Sequence[str]) -> None:
            nonlocal mask
            codes = [vocabulary.index(v) for v in wanted if v in vocabulary]
            values = values_of(which)
            hit = np.isin(values, np.array(codes, dtype=values.dtype)) if len(codes) > 1 \
                else values == (codes[0] if codes else -99)
            mask = hit if mask is None else mask & hit

        if tiers := list(tiers):
            narrow(0, tiers, TIERS)
        if age_bands := list(age_bands):
            narrow(1, age_bands, AGE_BANDS)
        if sexes := list(sexes):
            narrow(2, sexes, SEXES)
        if conditions := list(conditions):
            bits = 0
            for name in conditions:
                if name in self.conditions:
                    bits |= 1 << self.conditions.index(name)
            values = values_of(3)
            hit = (values & bits) != 0 if bits else np.zeros(len(values), dtype=bool)
            mask = hit if mask is None else mask & hit
        if mask is None:
            return positions
        if whole:
            return np.flatnonzero(mask if self.live is None else mask & self.live)
        return positions[mask]

    def _practice_columns(self, practice: str) -> tuple[np.ndarray, ...]:
        """Tier, age band, sex and condition bits of one practice's rows, contiguous (kept per
        practice: about 11 bytes a person in all)."""
        found = self.by_practice.get(practice)
        if found is None:
            rows = self.practice_rows[practice]
            found = tuple(column[rows] for column in (self.tier, self.age_band, self.sex,
                                                      self.condition_bits))
            self.by_practice[practice] = found
        return found

    def rows(self, positions: np.ndarray | Sequence[int], reason_groups: bool = True
             ) -> list[dict[str, Any]]:
        """The given rows (text as stored: `;`-joined lists), in the order given; without the
        reason groups when the caller sees every source (a third less to convert)."""
        if len(positions) == 0:
            return []
        table = self.table if reason_groups else self.shown
        return table.take(pa.array(positions, pa.int64())).to_pylist()

    @cached_property
    def shown(self) -> pa.Table:
        """The columns a person is shown from, reason groups and previous probability aside."""
        return self.table.select([c for c in self.table.column_names
                                  if c not in ("reason_group_1", "reason_group_2",
                                               "reason_group_3", "previous_probability")])

    def columns(self, positions: np.ndarray | Sequence[int], reason_groups: bool = True
                ) -> dict[str, list[Any]]:
        """The given rows column by column (as `rows` holds them, in the order given): a
        column's values are converted in one call, not a dictionary made per row."""
        table = self.table if reason_groups else self.shown
        taken = table.take(pa.array(positions, pa.int64()))
        return {name: taken.column(name).to_pylist() for name in taken.column_names}

    def cached_now(self, key: tuple) -> Any:
        """An answer `cached` keeps, or None (never waits for one being computed)."""
        with self.cache_lock:
            found = self.cache.get(key)
            if found is not None:
                self.cache.move_to_end(key)
            return found

    def cached(self, key: tuple, compute: Any) -> Any:
        """Answers that depend only on this run (aggregates), kept for the next caller; callers
        asking for the same answer at once wait for one computation."""
        with self.cache_lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
            lock = self.computing.setdefault(key, threading.Lock())
        with lock:
            with self.cache_lock:
                if key in self.cache:
                    return self.cache[key]
            value = compute()
            with self.cache_lock:
                self.cache[key] = value
                self.computing.pop(key, None)
                while len(self.cache) > 256:
                    self.cache.popitem(last=False)
        return value


def load_release(settings: Settings, run_id: str, summary: dict[str, Any]) -> Release:
    """Read a score run with DuckDB in rank order and index it (see the module docstring)."""
    path = settings.runs_dir / run_id / "scores.parquet"
    if not path.exists():
        raise NoRun(f"score run {run_id} has no scores file")
    con = duckdb.connect()
    try:
        present = {row[0] for row in con.execute(
            "SELECT name FROM parquet_schema(?)", [str(path)]).fetchall()}
        wanted = [c for c in COLUMNS + OPTIONAL if c in present]
        missing = [c for c in ("person_key", "probability", "tier") if c not in present]
        if missing:
            raise NoRun(f"score run {run_id} lacks columns {', '.join(missing)}")
        select_list = ", ".join(f'"{c}"' for c in wanted)
        table = con.sql(
            f"SELECT {select_list} FROM read_parquet($path) "
            "ORDER BY probability DESC, person_key", params={"path": str(path)}
        ).to_arrow_table()
    finally:
        con.close()
    for name in COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    table = table.combine_chunks()  # `take` on one chunk is ~50 times faster than on many
    for name in ("sex", "gp_practice_code", "age_band", "tier", "previous_tier"):
        table = table.set_column(table.column_names.index(name), name,
                                 table.column(name).cast(pa.string()))
    distinct, practice_index = _encoded(table.column("gp_practice_code"))
    practices = [p if p is not None else "-" for p in distinct]
    practice = practice_index.astype(np.int32)
    order = np.argsort(practice, kind="stable")
    boundaries = np.flatnonzero(np.diff(practice[order])) + 1
    practice_rows = {}
    for chunk in np.split(order, boundaries):
        if len(chunk) and practice[chunk[0]] >= 0:
            practice_rows[practices[practice[chunk[0]]]] = chunk
    condition_names = sorted({label.strip() for text in _encoded(table.column("conditions"))[0]
                              for label in (text or "").split(";") if label.strip()})
    keys = np.asarray(table.column("person_key").to_numpy(zero_copy_only=False)).astype("S")
    keys_order = np.argsort(keys, kind="stable")
    change = table.column("change").to_numpy(zero_copy_only=False)
    return Release(
        run_id=run_id, at=str(summary.get("at", "")), model=str(summary.get("model", "")),
        model_version=str(summary.get("model_version", "")), table=table,
        tier=_codes(table.column("tier"), TIERS),
        age_band=_codes(table.column("age_band"), AGE_BANDS),
        sex=_codes(table.column("sex"), SEXES), practice=practice, practices=practices,
        conditions=condition_names,
        condition_bits=_bits(table.column("conditions"), condition_names),
        source_bits=_bits(table.column("sources"), SOURCES),
        probability=table.column("probability").to_numpy(zero_copy_only=False)
        .astype(np.float64),
        change=np.asarray(change, dtype=np.float64),
        previous_tier=_codes(table.column("previous_tier"), TIERS),
        keys_sorted=keys[keys_order], keys_order=keys_order, practice_rows=practice_rows,
        purpose=str(summary.get("purpose") or DEFAULT_RUN_PURPOSE))


def run_purpose(summary: dict[str, Any] | None) -> str:
    return str((summary or {}).get("purpose") or DEFAULT_RUN_PURPOSE)


def _covered_types(rules: list[optouts.Coverage], purpose: str) -> dict[str, frozenset[str]]:
    """Opt-out type -> the sources it takes from `purpose` (`*` as every source)."""
    out: dict[str, set[str]] = {}
    for rule in rules:
        if rule.purpose == purpose:
            out.setdefault(rule.optout_type, set()).update(rule.sources or {"*"})
    return {kind: frozenset(found) for kind, found in out.items()}


def runs_for(purpose: str, rules: list[optouts.Coverage]) -> list[str]:
    """Run purposes that may answer `purpose`: its own, and commissioning for case finding
    while the policy table makes commissioning leave out at least as much."""
    answer = [purpose]
    if purpose == "case_finding":
        mine, theirs = _covered_types(rules, purpose), _covered_types(rules, "commissioning")
        if all("*" in theirs.get(k, ()) or sources <= theirs.get(k, frozenset())
               for k, sources in mine.items()):
            answer.append("commissioning")
    return answer


def withheld_person_ids(engine: Engine, purpose: str, scored_at: dt.datetime,
                        today: dt.date | None = None) -> set[str]:
    """Pseudonyms with an opt-out covering `purpose` in force that arrived after the run was
    scored (those known before were applied when it was scored)."""
    rules = optouts.coverage(engine)
    types = set(_covered_types(rules, purpose))
    live = optouts.active_optouts(engine, today or dt.datetime.now(dt.UTC).date())
    live = live[live["optout_type"].isin(types)]
    if live.empty:
        return set()
    if scored_at.tzinfo is None:
        scored_at = scored_at.replace(tzinfo=dt.UTC)
    with engine.connect() as connection:
        arrived = connection.execute(
            select(optout_register.c.person_id, optout_register.c.optout_type,
                   extracts.c.received_at)
            .join(extracts, extracts.c.extract_id == optout_register.c.extract_id)
            .where(optout_register.c.optout_type.in_(sorted(types)))).all()
    late = {(p, k) for p, k, at in arrived
            if (at if at.tzinfo else at.replace(tzinfo=dt.UTC)) >= scored_at}
    return {p for p, k in zip(live["person_id"], live["optout_type"], strict=True)
            if (p, k) in late}


def person_keys_of(settings: Settings, person_ids: set[str]) -> set[str]:
    """Person keys the person index gives these pseudonyms."""
    if not person_ids:
        return set()
    link = read_link_map(settings, columns=["person_id", "person_key"])
    hit = link["person_id"].isin(person_ids)
    return set(link.loc[hit, "person_key"].astype(str))


class ReleaseStore:
    """The release in force for each purpose, reloaded when a newer run or opt-out appears."""

    def __init__(self, settings: Settings, engine: Engine, refresh_seconds: float) -> None:
        self.settings = settings
        self.engine = engine
        self.refresh_seconds = refresh_seconds
        self._runs: dict[str, Release] = {}  # run id -> the run, every person
        self._views: dict[str, tuple[float, tuple, Release | None]] = {}
        self._lock = threading.Lock()

    def _signature(self, purpose: str) -> tuple:
        """(run id, when scored, summary) of the run answering `purpose`, and opt-out marks."""
        wanted = runs_for(purpose, optouts.coverage(self.engine))
        with self.engine.connect() as connection:
            listed = connection.execute(
                select(runs.c.run_id, runs.c.at, runs.c.summary).where(
                    runs.c.kind == "score", runs.c.status == "complete")
                .order_by(runs.c.at.desc(), runs.c.run_id.desc())).all()
            marks = connection.execute(select(func.count(), func.max(optout_register.c.extract_id),
                                              func.min(optout_register.c.extract_id))).one()
        for choice in wanted:  # the purpose's own run first, then what may stand in for it
            for run in listed:
                if run_purpose(run.summary) == choice:
                    return run.run_id, run.at, run.summary, tuple(marks)
        return None, None, None, tuple(marks)

    def fresh(self, purpose: str) -> Release | None:
        """The release checked within `refresh_seconds` (no I/O), else None."""
        found = self._views.get(purpose)
        if found is not None and found[2] is not None \
                and time.monotonic() - found[0] < self.refresh_seconds:
            return found[2]
        return None

    def current(self, purpose: str) -> Release:
        """The release answering `purpose`; raises NoRun when no run may answer it."""
        release = self.fresh(purpose)
        if release is not None:
            return release
        with self._lock:
            release = self.fresh(purpose)  # another thread checked while this one waited
            if release is not None:
                return release
            signature = self._signature(purpose)
            run_id, scored_at, summary, marks = signature
            previous = self._views.get(purpose)
            if previous is not None and previous[1][0] == run_id and previous[1][3] == marks:
                release = previous[2]
            elif run_id is None:
                release = None
            else:
                base = self._runs.get(run_id) or load_release(self.settings, run_id,
                                                              summary or {})
                in_use = {v[1][0] for k, v in self._views.items() if k != purpose}
                self._runs = {r: b for r, b in self._runs.items() if r in in_use}
                self._runs[run_id] = base
                withheld = person_keys_of(self.settings, withheld_person_ids(
                    self.engine, purpose, scored_at))
                release = base.withholding(purpose, withheld)
            self._views[purpose] = (time.monotonic(), signature, release)
            if release is None:
                raise NoRun(f"no score run for the {purpose} purpose has completed yet")
            return release
