"""Journeys after discharge, cost per person and population segments (issue #14 parts 1-3),
each run as a governed purpose, as scoring is (pipeline.score).

Every analysis reads the linked, pseudonymised rows its purpose may use (the opt-outs in force
now, `pipeline.score.purpose_filter`, recorded with the run) through an on-disk copy for the run's
span (`pipeline.linked_copy`, as scoring does: memory bounded by a batch and DuckDB's limit, not
by the linked rows; only person-level results are held in pandas), runs its stage
(stratify.journeys, stratify.costs, stratify.segments), and writes under `runs/<run_id>/`
(governance.layout `AnalysisFiles`): `records.parquet` (pseudonymised, record-level: for
analysts) and `published.parquet` (the fixed tables, protected by governance.suppression with
the rule in force when it ran: `pipeline.analysis_tables`). The run is recorded in the runs
table with the extracts it used (so destruction voids it and removes its files) and audited.

Purpose: all three serve `commissioning` (planning and commissioning of services, beyond
individual care), so the national data opt-out, type 1 objections (GP data) and council consent
withdrawals apply exactly as they do to the commissioning risk run; policies/optout_purposes.csv
states why no purpose of their own was added.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import insert, select

from governance import audit
from governance.geography import Geography
from governance.identifiers import digest_letters
from governance.policy_tables import policy_text
from governance.schema import runs
from governance.suppression import Rule
from pipeline.analysis_ranges import (
    COST_DIMENSIONS,
    COST_SUMS,
    SEGMENT_DIMENSIONS,
    UNKNOWN,
    WEIGHT,
    CostTask,
    JourneyTask,
    RangeRecords,
    Ranges,
    SegmentTask,
    with_places,
)
from pipeline.analysis_tables import (
    SPEND_ROUNDING,
    TOTAL,
    per_shown,
    publish_grids,
    spend_beside,
)
from pipeline.context import Context, Progress, quiet
from pipeline.engines.dispatch import RangeMap, range_mapper
from pipeline.linked_copy import linked_copy
from pipeline.score import purpose_rows
from pipeline.serving import ServingRun, optouts_applied, serving_run, withheld_person_keys
from stratify import costs as costing
from stratify.features import OnDisk, Sources, person_ranges
from stratify.journeys import OUTCOMES_91, PATHWAYS, data_through
from stratify.segments import SEGMENTS, parse_segments
from stratify.sources import add_months, extract_ids

KINDS = ("journeys", "costs", "segments")
PURPOSE = "commissioning"
UNIT_COSTS = "unit_costs.csv"
SEGMENT_TABLE = "segments.csv"
TIERS = ("very_high", "high", "moderate", "low", "unknown")
SHARE_DIGITS = 3  # shares worked out from published figures
TOP_SHARE_DIGITS = 2  # the top spenders' share of spend: true figures, so shown coarsely
MEAN_ROUNDING = 100  # pounds: a mean shown with no count beside it
TOP_SHARES = (0.01, 0.05)  # the top spenders' shares of spend: the top 1% and 5% of persons
# Persons an analysis holds at a time: costs and segments (one record a person) and journeys
# run a range of person keys at a time (`stratify.features.person_ranges`; a task each on
# Spark: `pipeline.analysis_ranges`), so their frames, and DuckDB's working set, are one
# range's, not the population's. Their tables are built from the ranges' counts and sums by
# group (`WEIGHT`), a few thousand rows however many persons; each range's records go to the
# run's records file as they are made.
PART_PERSONS = 250_000


class NothingToAnalyse(LookupError):
    """No landed, linked row the purpose may use."""


class NoAnalysisRun(LookupError):
    """No complete run of that analysis yet."""


@dataclass
class AnalysisResult:
    """What an analysis run made: its id, kind, size, where it went and its headline figures."""

    run_id: str
    kind: str
    purpose: str
    rows: int
    folder: str
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def unit_costs(ctx: Context) -> dict[str, float]:
    """The unit cost table in force (a super user's change, else the shipped table)."""
    return costing.parse_unit_costs(policy_text(UNIT_COSTS, ctx.engine))


def segment_order(ctx: Context) -> list[str]:
    """The segments in the order of the segment table in force."""
    return parse_segments(policy_text(SEGMENT_TABLE, ctx.engine))


@contextmanager
def _reading(ctx: Context, progress: Progress) -> Iterator[tuple[Sources, dict[str, Any]]]:
    """The rows the purpose may use now, as an on-disk copy for the run's span
    (`pipeline.linked_copy`: memory bounded by a batch and DuckDB's limit, not by the linked
    rows), and what was applied (recorded with the run)."""
    applied = optouts_applied(ctx.engine)
    progress(f"reading linked, pseudonymised data ({PURPOSE}; opt-outs in force on "
             f"{applied['in_force_on']})")
    with linked_copy(ctx, purpose_rows(ctx, PURPOSE, applied), progress) as copy:
        if not copy.rows:
            raise NothingToAnalyse("nothing landed and linked to analyse: land extracts and "
                                   "run `haven link`")
        yield copy, applied


def _places(ctx: Context) -> Geography:
    return Geography.load(engine=ctx.engine)


def _tier_run(ctx: Context) -> str | None:
    """The run serving commissioning (approved), whose tiers the analyses show, if any."""
    run = serving_run(ctx.engine, PURPOSE)
    return None if run is None else run.run_id


def _workspace(sources: Sources) -> Path | None:
    """Where a run's records are written before they are moved into place: the stage's own
    workspace (removed with it); None for frames (the records are kept as a frame)."""
    return sources.folder if isinstance(sources, OnDisk) else None


def _grid(frame: pd.DataFrame, rows: str, cols: str, row_values: list[str] | None = None,
          col_values: list[str] | None = None) -> pd.DataFrame:
    """Counts of `rows` by `cols`: of records, or of grouped rows' `WEIGHT`s."""
    if WEIGHT in frame:
        table = pd.crosstab(frame[rows].astype(str), frame[cols].astype(str),
                            values=frame[WEIGHT], aggfunc="sum").fillna(0).astype("int64")
    else:
        table = pd.crosstab(frame[rows].astype(str), frame[cols].astype(str))
    if row_values is not None:
        table = table.reindex(index=row_values, fill_value=0)
    if col_values is not None:
        table = table.reindex(columns=col_values, fill_value=0)
    table.index.name, table.columns.name = rows, cols
    return table.sort_index() if row_values is None else table


def _flag(series: pd.Series) -> pd.Series:
    return series.map(lambda v: UNKNOWN if pd.isna(v) else ("yes" if v else "no"))


def _long(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Published tables in one long frame: table, row, column, value (text)."""
    parts = []
    for name, table in tables.items():
        stacked = table.astype(str).stack().reset_index()
        stacked.columns = ["row", "column", "value"]
        stacked.insert(0, "table", name)
        stacked["dimension"] = str(table.index.name or "")
        parts.append(stacked)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["table", "row", "column", "value", "dimension"])


def _list_table(frame: pd.DataFrame, dimension: str, values: list[str] | None = None
                ) -> pd.DataFrame:
    key = frame[dimension].astype(str)
    counts = (frame.groupby(key)[WEIGHT].sum() if WEIGHT in frame else key.value_counts())
    counts = counts.sort_index() if values is None else counts.reindex(values, fill_value=0)
    table = counts.to_frame("persons")
    table.index.name, table.columns.name = dimension, "measure"
    return table


def _run_id(kind: str, label: str, ids: dict[str, list[str]]) -> str:
    """`KIND-LABEL-` and a digest in letters (governance.identifiers: never a digit run the
    audit log would take for an NHS number)."""
    digest = digest_letters(json.dumps(ids, sort_keys=True)
                            + dt.datetime.now(dt.UTC).isoformat())
    return f"{kind}-{label}-{digest}"


def _save(ctx: Context, kind: str, label: str, ids: dict[str, list[str]],
          applied: dict[str, Any], records: pd.DataFrame | RecordsFile,
          tables: dict[str, pd.DataFrame], summary: dict[str, Any], progress: Progress
          ) -> AnalysisResult:
    """Write the run's files, record it in the runs table and audit it, in that order (the
    run is listed only once its files are there). `ids`: the extracts the rows came from;
    `records`: a frame, or a file of them written a range at a time (moved into place)."""
    run_id = _run_id(kind, label, ids)
    files = ctx.settings.layout.analysis(run_id)
    files.folder.mkdir(parents=True, exist_ok=True)
    if isinstance(records, RecordsFile):
        records.move_to(files.records)
    else:
        records.to_parquet(files.records, index=False)
    _long(tables).to_parquet(files.published, index=False)
    used = sorted({e for found in ids.values() for e in found})
    count = len(records)
    summary = {**summary, "kind": kind, "purpose": PURPOSE, "rows": int(count),
               "optouts": applied}
    files.description.write_text(json.dumps({"run_id": run_id, **summary}, indent=1,
                                            default=str))
    with ctx.engine.begin() as connection:
        connection.execute(insert(runs).values(
            run_id=run_id, kind=kind, at=dt.datetime.now(dt.UTC), status="complete",
            extract_ids=used, summary=summary))
        audit.record(connection, ctx.actor, f"{kind}.run", f"run/{run_id}",
                     n_records=int(count), purpose=PURPOSE,
                     detail={"extracts": len(used), "tables": sorted(tables)})
    progress(f"{kind} run {run_id}: {count:,} records and {len(tables)} published "
             f"tables written to {files.folder}")
    return AnalysisResult(run_id=run_id, kind=kind, purpose=PURPOSE, rows=int(count),
                          folder=str(files.folder), summary=summary)


# ------------------------------------------------------------------------------ ranges
def _ranges(ctx: Context, sources: Sources, progress: Progress) -> Ranges:
    """`sources` a range of person keys at a time (`PART_PERSONS` persons), in key order,
    each opened read-only (a range's task may run beside others'); `sources` itself when one
    range holds everyone (or it is frames); with what every range's task shares."""
    ranges = person_ranges(sources, PART_PERSONS)
    if len(ranges) == 1 or not isinstance(sources, OnDisk):
        parts: tuple[Sources, ...] = (sources,)
    else:
        progress(f"  {len(ranges)} ranges of about {PART_PERSONS:,} persons")
        shared = sources.shared()
        parts = tuple(shared.part(low, high) for low, high in ranges)
    run_id = _tier_run(ctx)
    return Ranges(parts, _workspace(sources), run_id,
                  None if run_id is None else ctx.settings.layout.run(run_id).scores,
                  _places(ctx))


class RecordsFile:
    """A run's records written a range at a time: each range's frame to a Parquet file of its
    own in the stage's workspace `folder`, then joined (`move_to`) into one file, a row group
    at a time, under the schema they share (a column empty in one range takes the others'
    type). With no folder (frames in memory, as tests give) the frame is kept."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.parts: list[Path] = []
        self.frames: list[pd.DataFrame] = []
        self.empty: pd.DataFrame | None = None
        self.rows = 0

    def take(self, part: RangeRecords) -> None:
        """Take a range's records as its task left them (`analysis_ranges.keep_records`)."""
        self.rows += part.rows
        if part.path is not None:
            self.parts.append(part.path)
        elif self.folder is None:
            self.frames.append(part.frame)
        elif self.empty is None:  # a range with no records: its empty columns carry no
            self.empty = part.frame  # types (an empty list is float), so none is written

    def __len__(self) -> int:
        return self.rows

    def move_to(self, target: Path) -> None:
        if self.folder is None:
            pd.concat(self.frames, ignore_index=True).to_parquet(target, index=False)
            return
        if not self.parts:
            (self.empty if self.empty is not None else pd.DataFrame()).to_parquet(
                target, index=False)
            return
        if len(self.parts) == 1:
            shutil.move(self.parts[0], target)
            return
        schemas = [pq.read_schema(p) for p in self.parts]
        schema = pa.unify_schemas(schemas, promote_options="default").with_metadata(
            schemas[0].metadata)
        with pq.ParquetWriter(target, schema) as writer:
            for path in self.parts:
                for batch in pq.ParquetFile(path).iter_batches():
                    writer.write_table(pa.Table.from_batches([batch]).cast(schema))
                path.unlink()


def _regrouped(parts: list[pd.DataFrame], dims: list[str], sums: list[str]) -> pd.DataFrame:
    """The ranges' grouped rows (`_grouped`) added up into one row per combination."""
    return (pd.concat(parts, ignore_index=True)
            .groupby(dims, dropna=False, sort=True)[[WEIGHT, *sums]].sum().reset_index())


# ------------------------------------------------------------------------------ journeys
def journey_tables(records: pd.DataFrame, rule: Rule, places: Geography
                   ) -> dict[str, pd.DataFrame]:
    """The published journey tables (discharges counted; one publication). At home at 91
    days is the `at_home` column of `flow_91d`, not a table of its own: two tables counting
    the same discharges under different names would let one show what the other hides."""
    frame = records.assign(readmitted_30d=_flag(records["readmitted_30d"]),
                           long_term_care_12m=_flag(records["long_term_care_12m"]))
    flags = ["yes", "no", UNKNOWN]
    pathways = list(PATHWAYS)
    tables = {
        "pathway_by_locality": _grid(frame, "pathway", "locality", pathways),
        "pathway_by_pcn": _grid(frame, "pathway", "pcn", pathways),
        "pathway_by_month": _grid(frame, "pathway", "month", pathways),
        "pathway_by_age_band": _grid(frame, "pathway", "age_band", pathways,
                                     ["65-74", "75-84", "85+"]),
        "flow_91d": _grid(frame, "pathway", "outcome_91d", pathways, list(OUTCOMES_91)),
        "readmitted_30d": _grid(frame, "pathway", "readmitted_30d", pathways, flags),
        "long_term_care_12m": _grid(frame, "pathway", "long_term_care_12m", pathways, flags),
    }
    parents = {"pcn": ("locality", dict(places.locality_of))}
    return publish_grids(tables, rule, parents)


def run_journeys(ctx: Context, at: dt.date, months: int = 12,
                 progress: Progress = quiet) -> AnalysisResult:
    """Journeys after every discharge of a person 65+ in the `months` before `at`."""
    if not 1 <= months <= 60:
        raise ValueError("journeys: --months must be from 1 to 60")
    with _reading(ctx, progress) as (sources, applied), range_mapper(ctx.settings) as each:
        records, tables, summary = _journeys(ctx, sources, at, months, progress, each)
        return _save(ctx, "journeys", at.isoformat(), extract_ids(sources), applied, records,
                     tables, summary, progress)


def _journeys(ctx: Context, sources: Sources, at: dt.date, months: int, progress: Progress,
              each: RangeMap) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, Any]]:
    """The journeys run's records, published tables and summary from `sources` (`each`
    runs a range's task for every range: in order, or on Spark)."""
    start = add_months(at, -months)
    through = data_through(sources)
    progress(f"discharges of people 65+ from {start} to {at - dt.timedelta(days=1)}; "
             f"outcomes followed to {through}")
    # a range of persons at a time (one person's discharges and outcomes are their own rows):
    # DuckDB's working set is a range's; the discharges themselves are few enough to keep
    ranges = _ranges(ctx, sources, progress)
    found = pd.concat(each(JourneyTask(ranges, start, at, through), len(ranges)),
                      ignore_index=True)
    places = ranges.places
    records = with_places(found.drop(columns=["age"]), places)
    tables = journey_tables(records, Rule.load(engine=ctx.engine), places)
    counts = records["pathway"].value_counts().reindex(list(PATHWAYS), fill_value=0)
    followed = records[records["outcome_91d"] != "not_yet_known"]
    ascof = followed[followed["pathway"].isin(["pathway_1", "pathway_2"])]
    summary = {"at": at.isoformat(), "start": start.isoformat(), "through": str(through),
               "discharges": int(len(records)),
               "pathways": {k: int(v) for k, v in counts.items()},
               "ascof_2b_at_home_91d": None if not len(ascof) else
               round(float(ascof["at_home_91d"].astype(bool).mean()), 4)}
    return records, tables, summary


# ------------------------------------------------------------------------------ costs
def run_costs(ctx: Context, year: int, progress: Progress = quiet) -> AnalysisResult:
    """Each person's spend by setting in the financial year from April `year`, with spend by
    tier, segment, practice, PCN and discharge pathway, and the top spenders' share."""
    costing.financial_year(year)  # a wrong year is refused before anything is read
    with _reading(ctx, progress) as (sources, applied), range_mapper(ctx.settings) as each:
        records, tables, summary = _costs(ctx, sources, year, progress, each)
        return _save(ctx, "costs", str(year), extract_ids(sources), applied, records, tables,
                     summary, progress)


def _costs(ctx: Context, sources: Sources, year: int, progress: Progress, each: RangeMap
           ) -> tuple[RecordsFile, dict[str, pd.DataFrame], dict[str, Any]]:
    """The costs run's records, published tables and summary from `sources` (`each`: as
    `_journeys`)."""
    start, end = costing.financial_year(year)
    prices = unit_costs(ctx)
    order = segment_order(ctx)
    progress(f"pricing activity from {start} to {end - dt.timedelta(days=1)} with the unit "
             f"cost table in force")
    through = data_through(sources)
    ranges = _ranges(ctx, sources, progress)
    places, tier_run = ranges.places, ranges.tier_run
    written = RecordsFile(ranges.folder)
    found = each(CostTask(ranges, year, start, end, through, prices, tuple(order)),
                 len(ranges))
    for part in found:
        written.take(part.records)
    grouped = [part.grouped for part in found]
    totals = [part.totals for part in found]
    arounds = [part.around for part in found if part.around is not None]
    del found
    progress(f"spend before and after each discharge pathway of the year ({len(written):,} "
             "persons priced)")
    around = pd.concat(arounds, ignore_index=True) if arounds else pd.DataFrame(
        {"pathway": pd.Series([], dtype=object), "spend_before": [], "spend_after": []})
    groups = _regrouped(grouped, list(COST_DIMENSIONS), list(COST_SUMS))
    # the top spenders' shares need every person's total: one number a person, 8 bytes
    total = pd.Series(np.concatenate(totals) if totals else np.array([], dtype="float64"))
    shares = {share: costing.top_share(total, share) for share in TOP_SHARES}
    del totals, total
    rule = Rule.load(engine=ctx.engine)
    tables = cost_tables(groups, around, rule, places, shares)
    summary = {"year": year, "start": start.isoformat(), "end": end.isoformat(),
               "persons": int(groups[WEIGHT].sum()),
               "spend": round(float(groups["total"].sum()), 2),
               "top_1pct_share": round(shares[0.01], 4),
               "top_5pct_share": round(shares[0.05], 4),
               "by_setting": {s: round(float(groups[s].sum()), 2) for s in costing.SETTINGS},
               "tiers_from": tier_run}
    return written, tables, summary


def cost_tables(records: pd.DataFrame, around: pd.DataFrame, rule: Rule,
                places: Geography, shares: dict[float, float] | None = None
                ) -> dict[str, pd.DataFrame]:
    """The published cost tables: persons and spend by tier, segment, practice and PCN (one
    publication of persons), spend by setting and the top spenders' share over the area, and
    discharges with mean spend the year before and after, by pathway (one of discharges).
    `records`: one a person, or grouped (`_grouped`) with the top `shares` worked out from
    every person's total beside them."""
    if shares is None:
        shares = {share: costing.top_share(records["total"], share) for share in TOP_SHARES}
    dims = {"tier": list(TIERS), "segment": list(SEGMENTS), "gp_practice_code": None,
            "pcn": None}
    lists = {f"persons_by_{d}": _list_table(records, d, v) for d, v in dims.items()}
    shown = publish_grids(lists, rule, {"gp_practice_code": ("pcn", dict(places.pcn_of))})
    tables: dict[str, pd.DataFrame] = {}
    for dimension in dims:
        counts = shown[f"persons_by_{dimension}"]["persons"]
        key = records[dimension].astype(str)
        tables[f"spend_by_{dimension}"] = spend_beside(
            counts, records.groupby(key)["total"].sum(), rule).set_index("category")
    settings = pd.DataFrame({"spend": [int(round(records[s].sum() / 1000) * 1000)
                                       for s in costing.SETTINGS]},
                            index=pd.Index(list(costing.SETTINGS), name="setting"))
    settings.loc[TOTAL] = int(round(records["total"].sum() / 1000) * 1000)
    tables["spend_by_setting"] = settings
    tables["top_spenders"] = pd.DataFrame(  # coarse: no count is shown beside it
        {"share_of_spend": [round(shares[s], TOP_SHARE_DIGITS) for s in TOP_SHARES]},
        index=pd.Index(["top_1pct", "top_5pct"], name="persons"))
    tables["spend_around_discharge"] = _around_table(around, rule)
    return tables


def _around_table(around: pd.DataFrame, rule: Rule) -> pd.DataFrame:
    """Mean spend the year before and after a discharge, by pathway: means only, and the
    symbol where the pathway has 1-7 discharges. Its counts are not published here: they are
    the journeys run's figures, protected in that publication, and two publications
    protecting one figure separately could show what the other hides."""
    rows = []
    for pathway in [*PATHWAYS, TOTAL]:
        part = around if pathway == TOTAL else around[around["pathway"] == pathway]
        hidden = rule.hides(len(part)) or not len(part)
        rows.append({"pathway": pathway,
                     "mean_spend_year_before": rule.symbol if hidden else
                     _coarse_mean(part["spend_before"]),
                     "mean_spend_year_after": rule.symbol if hidden else
                     _coarse_mean(part["spend_after"])})
    return pd.DataFrame(rows).set_index("pathway")


def _coarse_mean(values: pd.Series) -> int:
    """A mean shown with no count or total beside it, rounded to MEAN_ROUNDING pounds: no
    figure of this publication multiplies it back into a total."""
    return int(round(float(values.mean()) / MEAN_ROUNDING) * MEAN_ROUNDING)


# ------------------------------------------------------------------------------ segments
def run_segments(ctx: Context, at: dt.date, progress: Progress = quiet) -> AnalysisResult:
    """Everyone alive and registered at `at` in one segment, with the share of persons and of
    the 12 months' spend before `at` in each segment by practice and PCN, beside the tiers."""
    with _reading(ctx, progress) as (sources, applied), range_mapper(ctx.settings) as each:
        records, tables, summary = _segments(ctx, sources, at, progress, each)
        return _save(ctx, "segments", at.isoformat(), extract_ids(sources), applied, records,
                     tables, summary, progress)


def _segments(ctx: Context, sources: Sources, at: dt.date, progress: Progress,
              each: RangeMap) -> tuple[RecordsFile, dict[str, pd.DataFrame], dict[str, Any]]:
    """The segments run's records, published tables and summary from `sources` (`each`: as
    `_journeys`)."""
    progress(f"segments at {at} by the segment table in force")
    order, prices = segment_order(ctx), unit_costs(ctx)
    ranges = _ranges(ctx, sources, progress)
    places, tier_run = ranges.places, ranges.tier_run
    written = RecordsFile(ranges.folder)
    found = each(SegmentTask(ranges, at, prices, tuple(order)), len(ranges))
    for part in found:
        written.take(part.records)
    grouped = [part.grouped for part in found]
    del found
    groups = _regrouped(grouped, list(SEGMENT_DIMENSIONS), ["spend_12m"])
    tables = segment_tables(groups, Rule.load(engine=ctx.engine), places)
    counts = groups.groupby("segment")[WEIGHT].sum().reindex(list(SEGMENTS), fill_value=0)
    summary = {"at": at.isoformat(), "persons": int(groups[WEIGHT].sum()),
               "segments": {k: int(v) for k, v in counts.items()}, "tiers_from": tier_run}
    return written, tables, summary


def segment_tables(records: pd.DataFrame, rule: Rule, places: Geography
                   ) -> dict[str, pd.DataFrame]:
    """Persons by segment and practice, PCN and tier (one publication), spend by segment and
    PCN and by segment and practice shown where the persons are, and each segment's share of
    persons and of spend."""
    segments = list(SEGMENTS)
    grids = {"segment_by_practice": _grid(records, "segment", "gp_practice_code", segments),
             "segment_by_pcn": _grid(records, "segment", "pcn", segments),
             "segment_by_tier": _grid(records, "segment", "tier", segments, list(TIERS))}
    tables = publish_grids(grids, rule, {"gp_practice_code": ("pcn", dict(places.pcn_of))})
    for place, unit in (("pcn", "pcn"), ("gp_practice_code", "practice")):
        tables[f"spend_12m_by_segment_{unit}"] = _money_beside(
            tables[f"segment_by_{unit}"], records, place, rule)
    # Shares are worked out from the published figures only (persons and spend as shown in
    # the PCN tables), so they add nothing to them: a share to 3 decimals of the true counts
    # would narrow a count rounded to 5 to one value.
    persons = tables["segment_by_pcn"][TOTAL]
    spend = tables["spend_12m_by_segment_pcn"][TOTAL]
    tables["segment_shares"] = pd.DataFrame(
        [{"segment": s, "persons": persons[s],
          "share_of_persons": per_shown(persons[s], persons[TOTAL], rule, SHARE_DIGITS),
          "share_of_spend": per_shown(spend[s], spend[TOTAL], rule, SHARE_DIGITS)}
         for s in segments]).set_index("segment")
    return tables


def _money_beside(counts: pd.DataFrame, records: pd.DataFrame, place: str, rule: Rule
                  ) -> pd.DataFrame:
    """Spend in the 12 months by segment and `place`, shown (to 1,000 pounds) exactly where
    the published persons by segment and `place` (`counts`, with totals) are shown."""
    money = records.assign(**{place: records[place].astype(str)}).pivot_table(
        index="segment", columns=place, values="spend_12m", aggfunc="sum", fill_value=0.0)
    spend = counts.copy()
    for r in counts.index:
        for c in counts.columns:
            if counts.at[r, c] == rule.symbol:
                continue
            rows = money if r == TOTAL else money.loc[[r]] if r in money.index else None
            if rows is None:
                value = 0.0
            elif c == TOTAL:
                value = float(rows.to_numpy().sum())
            else:
                value = float(rows[c].sum()) if c in rows.columns else 0.0
            spend.at[r, c] = int(round(value / SPEND_ROUNDING) * SPEND_ROUNDING)
    return spend


# ------------------------------------------------------------------------------ reading
def latest_run(ctx: Context, kind: str) -> ServingRun:
    """The newest complete run of `kind`; NoAnalysisRun when there is none."""
    if kind not in KINDS:
        raise ValueError(f"unknown analysis {kind!r}")
    with ctx.engine.connect() as connection:
        found = connection.execute(
            select(runs.c.run_id, runs.c.at, runs.c.summary).where(
                runs.c.kind == kind, runs.c.status == "complete")
            .order_by(runs.c.at.desc(), runs.c.run_id.desc())).first()
    if found is None:
        raise NoAnalysisRun(f"no {kind} run yet: run `haven {kind}` first")
    return ServingRun(found.run_id, found.at, dict(found.summary or {}))


def published(ctx: Context, kind: str) -> tuple[ServingRun, dict[str, pd.DataFrame]]:
    """The newest run of `kind` and its published tables (as written, suppressed)."""
    run = latest_run(ctx, kind)
    frame = pd.read_parquet(ctx.settings.layout.analysis(run.run_id).published)
    tables = {}
    for name, part in frame.groupby("table", sort=False):
        table = part.pivot(index="row", columns="column", values="value")
        table = table.reindex(index=list(dict.fromkeys(part["row"])),
                              columns=list(dict.fromkeys(part["column"])))
        named = str(part["dimension"].iloc[0]) if "dimension" in part else "row"
        table.index.name, table.columns.name = named, None
        tables[str(name)] = table
    return run, tables


def records(ctx: Context, kind: str) -> tuple[ServingRun, pd.DataFrame]:
    """The newest run of `kind`'s pseudonymised records, without the persons an opt-out in
    force now (that the run did not apply) withholds from the purpose."""
    run = latest_run(ctx, kind)
    frame = pd.read_parquet(ctx.settings.layout.analysis(run.run_id).records)
    withheld = withheld_person_keys(ctx.settings, ctx.engine, PURPOSE, run)
    return run, frame[~frame["person_key"].isin(withheld)].reset_index(drop=True)


def run_all(ctx: Context, at: dt.date, progress: Progress = quiet) -> list[AnalysisResult]:
    """The three analyses as the demo runs them: journeys in the year before `at`, costs in
    the last financial year ending by `at`, segments at `at`."""
    year = at.year - 1 if at >= dt.date(at.year, 4, 1) else at.year - 2
    return [run_journeys(ctx, at, progress=progress), run_costs(ctx, year, progress=progress),
            run_segments(ctx, at, progress=progress)]
