"""A score run loaded for answering: numeric columns to filter on, text only for rows served.

The run is read once with DuckDB from its scores file (governance.layout), in rank order
(highest probability first), and kept as a few numeric arrays: tier, age band, sex and practice
as small codes, conditions and sources as bit masks, and a per-practice index of row positions.
A case-finding page is then a slice of one practice's positions filtered with NumPy, and text
(person keys, reasons) is taken only for the rows of the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from api.answer_cache import AnswerCache
from api.authz import SOURCES
from governance.settings import Settings
from pipeline.serving import run_purpose

TIERS = ("very_high", "high", "moderate", "low")
TIER_RANK = {"low": 0, "moderate": 1, "high": 2, "very_high": 3}
AGE_BANDS = ("0-17", "18-44", "45-64", "65-74", "75-84", "85+")
SEXES = ("1", "2", "9", "0")
# Conditions are read from GP events and hospital diagnoses (stratify.catalogue: ltc_*).
CONDITION_SOURCES = frozenset({"gp_events", "apc"})
# Reason groups every role may see: they restate the person's age band and sex.
DEMOGRAPHIC_GROUPS = frozenset({"age", "sex"})
COLUMNS = ("person_key", "probability", "tier", "reasons", "previous_probability",
           "previous_tier", "change", "gp_practice_code", "age_band", "sex", "conditions",
           "sources")
OPTIONAL = ("reason_group_1", "reason_group_2", "reason_group_3", "tier_change")


class NoRun(Exception):
    """There is no complete score run to serve yet."""


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
    answers: AnswerCache = field(default_factory=AnswerCache)
    # practice -> its rows' filter columns, contiguous (`select` with `practice`)
    by_practice: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)
    # The model that scored the run and its clinical safety approval (`model_provenance`).
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def persons(self) -> int:
        """Persons served (less those withheld since the run was scored)."""
        return len(self.everyone)

    @property
    def scored(self) -> int:
        """Persons the run scored: unchanged by opt-outs that arrive after it."""
        return len(self.tier)

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
                       answers=AnswerCache(), by_practice={})

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
        """An aggregate answer kept for this run, or None (never waits for one)."""
        return self.answers.get_now(key)

    def cached(self, key: tuple, compute: Any) -> Any:
        """An answer that depends only on this run, computed once and kept."""
        return self.answers.get(key, compute)


def model_provenance(summary: dict[str, Any], model: dict[str, Any] | None) -> dict[str, Any]:
    """Which model scored a run and its approval, as the faces show it beside a list: model id
    and algorithm, approved by which role and when (not who: the decision's record and
    reason are for `GET /models`)."""
    if model is None:
        return {"model_id": summary.get("model_id"), "model": str(summary.get("model", "")),
                "approval": "recorded before model approvals" if not summary.get("model_id")
                else "unknown model", "approved_role": None, "approved_at": None}
    return {"model_id": model["model_id"], "model": model["algorithm"],
            "approval": model["status"], "approved_role": model["decided_role"],
            "approved_at": model["decided_at"]}


def load_release(settings: Settings, run_id: str, summary: dict[str, Any]) -> Release:
    """Read a score run with DuckDB in rank order and index it (see the module docstring)."""
    path = settings.layout.run(run_id).scores
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
        purpose=run_purpose(summary))
