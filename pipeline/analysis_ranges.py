"""One range of persons' work for journeys, costs and segments, as tasks Spark can run.

Each task is a frozen dataclass of plain values (the ranges of the linked copy, opened
read-only by whoever runs them; the dates; the unit costs and segment order in force; the
serving run's scores file for the tiers; the places; the stage's workspace) called with a
range's number. It writes the range's records into the workspace and returns what the run's
tables are made from: counts and sums by group, each person's yearly spend (costs), the
discharges. `pipeline.analyses` runs them in order in this process, or a task each on Spark
(`pipeline.engines.dispatch.range_mapper`): a person's results are their own rows', so either
way the run is the same. On a cluster the copy and the workspace must be on storage every
executor mounts (docs/scale.md), as for scoring.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from governance import store
from governance.geography import Geography
from pipeline.engines.spark_session import task_cpus
from stratify import costs as costing
from stratify.features import OnDisk, Sources
from stratify.journeys import discharge_journeys
from stratify.segments import assign_segments, latest_practices
from stratify.sources import add_months

UNKNOWN = "unknown"
WEIGHT = "_persons"  # how many records a grouped row stands for
COST_DIMENSIONS = ("tier", "segment", "gp_practice_code", "pcn")  # what cost tables count by
SEGMENT_DIMENSIONS = ("segment", "tier", "gp_practice_code", "pcn")
COST_SUMS = (*costing.SETTINGS, "total")


@dataclass(frozen=True)
class Ranges:
    """The ranges of persons an analysis runs over and what every range's task shares."""

    parts: tuple[Sources, ...]  # each range's view of the copy (frames: one, in memory)
    folder: Path | None  # the stage's workspace, where ranges' records go (None: frames)
    tier_run: str | None  # the run serving commissioning, whose tiers the records show
    tier_scores: Path | None  # its scores file
    places: Geography

    def __len__(self) -> int:
        return len(self.parts)


@dataclass
class RangeRecords:
    """A range's records: written to the workspace (`path`), or kept (`frame`: frames in
    memory, or a range with none, whose empty columns carry no types to write)."""

    rows: int
    path: Path | None = None
    frame: pd.DataFrame | None = None


def _in_task(part: Sources) -> Sources:
    """Range `part` as this task reads it: in a Spark task, DuckDB uses the task's CPUs, not
    every core of the host (tasks run side by side); here, as it is."""
    cpus = task_cpus()
    return replace(part, threads=cpus) if cpus and isinstance(part, OnDisk) else part


def keep_records(folder: Path | None, number: int, frame: pd.DataFrame) -> RangeRecords:
    """Range `number`'s records, written to `folder` as `records-<number>.parquet` when there
    is a folder and they are not empty."""
    if folder is None or not len(frame):
        return RangeRecords(len(frame), frame=frame)
    path = folder / f"records-{number:04d}.parquet"
    store.write_whole(lambda partial: frame.to_parquet(partial, index=False), path)
    return RangeRecords(len(frame), path=path)


def with_places(frame: pd.DataFrame, places: Geography) -> pd.DataFrame:
    """`frame` with each practice's PCN and locality (`unknown` for no practice)."""
    practice = frame["gp_practice_code"].fillna(UNKNOWN).astype(str)
    frame = frame.assign(gp_practice_code=practice)
    for level in ("pcn", "locality"):
        frame[level] = [places.unit(level, p) if p != UNKNOWN else UNKNOWN for p in practice]
    return frame


def tiers_of(scores: Path | None, sources: Sources) -> pd.Series:
    """Risk tier per person from the scores file `scores`, of the persons in `sources`' range
    of keys only (read with the range as a filter: a range's tiers, not the population's)."""
    if scores is None:
        return pd.Series(dtype=object)
    low, high = (sources.persons if isinstance(sources, OnDisk) and sources.persons
                 else (None, None))
    bounds = [("person_key", ">=", low)] if low is not None else []
    bounds += [("person_key", "<", high)] if high is not None else []
    found = pd.read_parquet(scores, columns=["person_key", "tier"], filters=bounds or None)
    return found.set_index("person_key")["tier"].astype(str)


def placed(records: pd.DataFrame, sources: Sources, ranges: Ranges) -> pd.DataFrame:
    """`records` (one a person of `sources`' range) with each person's tier, their practice
    (the latest registration's) and its PCN and locality."""
    records["tier"] = tiers_of(ranges.tier_scores, sources).reindex(
        records["person_key"]).fillna(UNKNOWN).to_numpy()
    records["gp_practice_code"] = latest_practices(sources).reindex(
        records["person_key"]).to_numpy()
    return with_places(records, ranges.places)


def grouped(records: pd.DataFrame, dims: tuple[str, ...], sums: tuple[str, ...]
            ) -> pd.DataFrame:
    """`records` as one row per combination of `dims` (a missing value is a value): how many
    records (`WEIGHT`) and the sums of `sums`; tables built from it equal those built from
    the records (they count `WEIGHT`s; sums add)."""
    return (records.assign(**{WEIGHT: 1})
            .groupby(list(dims), dropna=False, sort=False)[[WEIGHT, *sums]].sum()
            .reset_index())


@dataclass(frozen=True)
class JourneyTask:
    """A range's discharges of people 65+ from `start` to `end`, outcomes to `through`."""

    ranges: Ranges
    start: dt.date
    end: dt.date
    through: dt.date | None

    def __call__(self, number: int) -> pd.DataFrame:
        return discharge_journeys(_in_task(self.ranges.parts[number]), self.start, self.end,
                                  through=self.through)


@dataclass
class CostPart:
    """What a range gives the costs run."""

    records: RangeRecords
    grouped: pd.DataFrame
    totals: np.ndarray  # each person's spend in the year (the top spenders' shares)
    around: pd.DataFrame | None  # spend before and after each discharge, by pathway


@dataclass(frozen=True)
class CostTask:
    """A range's spend per person in the financial year from April `year` (`start` to `end`)
    by `prices`, with segments by `order` at `start`, and spend around its discharges."""

    ranges: Ranges
    year: int
    start: dt.date
    end: dt.date
    through: dt.date | None
    prices: dict[str, float]
    order: tuple[str, ...]

    def __call__(self, number: int) -> CostPart:
        part = _in_task(self.ranges.parts[number])
        segments = assign_segments(part, self.start, order=list(self.order)).set_index(
            "person_key")["segment"]
        spend = costing.person_costs(part, self.year, self.prices,
                                     persons=pd.Index(segments.index))
        records = spend.reset_index()
        records["segment"] = segments.reindex(records["person_key"]).to_numpy()
        records = placed(records, part, self.ranges)
        journeys = discharge_journeys(part, self.start, self.end, through=self.through)
        around = (costing.around_discharges(part, journeys, self.prices)[
            ["pathway", "spend_before", "spend_after"]] if len(journeys) else None)
        return CostPart(keep_records(self.ranges.folder, number, records),
                        grouped(records, COST_DIMENSIONS, COST_SUMS),
                        records["total"].to_numpy(dtype="float64"), around)


@dataclass
class SegmentPart:
    """What a range gives the segments run."""

    records: RangeRecords
    grouped: pd.DataFrame


@dataclass(frozen=True)
class SegmentTask:
    """A range's segment at `at` by `order`, with the 12 months' spend before `at`."""

    ranges: Ranges
    at: dt.date
    prices: dict[str, float]
    order: tuple[str, ...]

    def __call__(self, number: int) -> SegmentPart:
        part = _in_task(self.ranges.parts[number])
        found = assign_segments(part, self.at, order=list(self.order))
        windows = pd.DataFrame({"window": range(len(found)), "person_key": found["person_key"],
                                "start": add_months(self.at, -12), "end": self.at})
        spent = costing.spend_in_windows(part, windows, self.prices)
        records = found.drop(columns=["age"])
        records["spend_12m"] = spent.set_index("window")["total"].reindex(
            range(len(found))).to_numpy()
        records = placed(records, part, self.ranges)
        return SegmentPart(keep_records(self.ranges.folder, number, records),
                           grouped(records, SEGMENT_DIMENSIONS, ("spend_12m",)))
