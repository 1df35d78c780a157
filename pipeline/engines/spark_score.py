"""`haven score` on Spark: the model fitted on the driver; features, prediction, tiers and
reasons on the executors, one range of persons a task.

What runs where (docs/scale.md):
- driver: training (stratify.train on its fixed-size sample, exactly as the embedded
  engine), the ranges of person keys (`stratify.features.person_ranges`), the tier
  thresholds' queries, joining the tasks' files into the run's two files, the run record;
- executors, one range of persons a task (`mapInArrow` over a table of ranges, one range a
  partition, in key order), in two passes:
  1. the range's features, filter attributes and previous scores (DuckDB over the linked
     copy, opened read-only by every task: `OnDisk.shared`) and every candidate's probability
     (`ModelBundle.probabilities`); the candidates are written as the range's part of the
     run's candidates file, the features kept in the work folder for pass 2, and the chosen
     model's probabilities handed to Spark;
  2. once Spark has the thresholds from those probabilities (`tier_thresholds`: a count and
     sorts), tiers and reasons by the batch code the embedded engine runs
     (`stratify.score_batch`: `contributions`, `explained`, `scored`), written as the
     range's part of the run's scores file.
  The fitted bundle is broadcast once. Spark itself moves only the chosen probabilities (for
  the thresholds); the driver joins the tasks' files into the run's, a part at a time.
So the linked copy and the work folder must be on storage every executor reads: local disk
in local mode, a shared volume (the warehouse path's mount) on a cluster. The result is a
`ScoreRun` equal to the embedded one: the same files in person-key order, probabilities within
1e-9 (the same code on the same float32 features), the same tiers and reasons.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from governance import store
from governance.layout import RunFiles
from pipeline.engines.spark_broadcast import broadcast, value_of
from pipeline.engines.spark_session import task_cpus
from stratify import score_batch
from stratify.catalogue import NAMES
from stratify.features import (
    OnDisk,
    Sources,
    append_rows,
    connect,
    connect_on_disk,
    feature_table,
    fetch_features,
    person_ranges,
)
from stratify.progress import Progress, quiet
from stratify.score_partition import tier_thresholds
from stratify.scoring import (
    SCORE_BATCH,
    ScoreRun,
    choose_model,
)
from stratify.sources import extract_ids
from stratify.tiers import assign
from stratify.train import ModelBundle, train

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

KEY = "person_key"
PERSONS_PER_TASK = SCORE_BATCH  # a task's range: the embedded engine's batch of persons
ATTRIBUTES = ("gp_practice_code", "sex", "sources")  # the filter attributes a task keeps
FIRST = "part int, persons long, p double, seconds double"  # pass 1's rows, to Spark
SECOND = "part int, persons long, seconds double"  # pass 2's, one row a range, to the driver


class NoOneToScore(ValueError):
    """No one in the linked data is alive and registered at the date asked for."""


@dataclass(frozen=True)
class RangeJob:
    """What every task is shipped: the copy to read (read-only), the date, the work folder,
    the previous run's scores file and the candidates' names."""

    disk: OnDisk
    at: dt.date
    lookback_months: int | None
    work: Path
    previous: Path | None
    chosen: str

    def features(self, part: int) -> Path:
        """Where pass 1 keeps range `part`'s features and attributes for pass 2."""
        return self.work / f"spark-features.part{part:06d}.parquet"

    def before(self, part: int) -> Path:
        """Where pass 1 keeps range `part`'s rows of the previous run's scores."""
        return self.work / f"spark-previous.part{part:06d}.parquet"


def _write(frame: pd.DataFrame, path: Path) -> None:
    """A task's file, written whole or not at all (`store.write_whole`)."""
    store.write_whole(lambda partial: frame.to_parquet(partial, index=False), path)


def predict_range(job: RangeJob, bundle: ModelBundle, part: int, low: str | None,
                  high: str | None) -> np.ndarray:
    """Pass 1 for the persons with keys in `[low, high)`: their features at `job.at` (the
    embedded engine's SQL over a view of their rows), attributes and previous scores, every
    candidate's probability written as the candidates part `part`; returns the chosen
    model's probabilities, in person-key order."""
    con = connect(job.disk.part(low, high), threads=task_cpus() or 1)
    try:
        feature_table(con, job.at, job.lookback_months)
        X = fetch_features(con, NAMES)
        attributes = score_batch.attributes(con, job.at, X.index)
        before = score_batch.previous(con, job.previous, (low, high))
        if before is True:
            before = score_batch.batch_previous(con, X.index)
    finally:
        con.close()
    if not len(X):
        return np.zeros(0)
    probability = bundle.probabilities(X)
    keys = X.index.to_numpy()
    _write(pd.DataFrame({KEY: keys, **dict(probability.items())}),
           RunFiles(job.work).part("candidates", part))
    kept = X.join(attributes.add_prefix("a_"))
    _write(kept.reset_index(), job.features(part))
    if isinstance(before, pd.DataFrame):
        _write(before.reset_index(), job.before(part))
    else:  # pass 2 takes a range's previous scores from this file alone: none left over
        job.before(part).unlink(missing_ok=True)
    return np.asarray(probability[job.chosen], dtype=float)


def explain_range(job: RangeJob, bundle: ModelBundle, part: int, cut: dict[str, float]
                  ) -> int:
    """Pass 2 for range `part`: tiers under the population's thresholds `cut`, reasons and
    the scores part `part` (the embedded engine's `score_batch.scored` rows); returns how
    many persons it holds."""
    files = RunFiles(job.work)
    kept = pd.read_parquet(job.features(part)).set_index(KEY)
    X = kept[list(NAMES)]
    attributes = kept[[f"a_{name}" for name in ATTRIBUTES]].rename(
        columns=lambda c: c[2:])
    chosen = pd.read_parquet(files.part("candidates", part), columns=[job.chosen])[
        job.chosen].to_numpy()
    before = (pd.read_parquet(job.before(part)).set_index(KEY)
              if job.before(part).exists() else None)
    tiers = assign(chosen, cut)
    contributions, _ = score_batch.contributions(bundle, X, tiers)
    keys = X.index.to_numpy()
    rows = score_batch.explained(X, contributions)
    _write(score_batch.scored(keys, chosen, tiers, rows, attributes, before),
           files.part("scores", part))
    return len(X)  # pass 1's files stay until the driver has joined the run's (a retry)


def _ranges_table(spark: SparkSession, ranges: list[tuple[str | None, str | None]]
                  ) -> DataFrame:
    """One row a range (`part`, `low`, `high`), each range its own partition, in key order
    (an RDD parallelised into as many slices as rows keeps them so)."""
    rows = [(part, low, high) for part, (low, high) in enumerate(ranges)]
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, len(rows)),
                                 "part int, low string, high string")


def _each_range(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, Any, Any]]:
    for batch in batches:
        for row in batch.to_pylist():
            yield row["part"], row["low"], row["high"]


def first_pass(ranges: DataFrame, job: RangeJob, shared: Any) -> DataFrame:
    """Spark rows (`FIRST`) of every scored person's chosen probability, range by range."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        bundle = value_of(shared)
        for part, low, high in _each_range(batches):
            start = time.perf_counter()
            p = predict_range(job, bundle, part, low, high)
            n = len(p)
            yield pa.RecordBatch.from_pydict({
                "part": pa.array([part] * n, pa.int32()),
                "persons": pa.array([n] * n, pa.int64()), "p": pa.array(p, pa.float64()),
                "seconds": pa.array([time.perf_counter() - start] * n, pa.float64())})

    return ranges.mapInArrow(run, FIRST)


def second_pass(ranges: DataFrame, job: RangeJob, shared: Any, cut: dict[str, float],
                persons: dict[int, int]) -> DataFrame:
    """Spark rows (`SECOND`), one a range, of pass 2 (`explain_range`) over the ranges pass 1
    found `persons` in (a range of no one alive and registered at the date has no files)."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        bundle = value_of(shared)
        for part, _low, _high in _each_range(batches):
            start = time.perf_counter()
            n = explain_range(job, bundle, part, cut) if persons.get(part) else 0
            if n != persons.get(part, 0):
                raise RuntimeError(f"range {part} of the scoring: pass 1 found "
                                   f"{persons.get(part, 0)} persons, pass 2 {n}")
            yield pa.RecordBatch.from_pydict({
                "part": pa.array([part], pa.int32()), "persons": pa.array([n], pa.int64()),
                "seconds": pa.array([time.perf_counter() - start], pa.float64())})

    return ranges.mapInArrow(run, SECOND)


def spark_thresholds(table: DataFrame, column: str) -> dict[str, float]:
    """`stratify.tiers.thresholds` of `column`, worked out by Spark: a count, then the m-th
    largest value by a descending sort limited to m rows (m is at most a fifth of the rows)."""
    from pyspark.sql import functions as F

    n = table.count()

    def nth_largest(m: int) -> float:
        top = table.select(column).orderBy(F.desc(column)).limit(m)
        return float(top.agg(F.min(column)).first()[0])

    return tier_thresholds(n, nth_largest)


def _on_disk(sources: Sources, folder: Path, memory_limit: str = "1GB") -> OnDisk:
    """The linked rows as a DuckDB file the tasks can open: an on-disk copy as it is, frames
    (a caller's own, small) written into `folder` first."""
    if isinstance(sources, OnDisk):
        return sources
    folder.mkdir()
    con = connect_on_disk(folder, memory_limit)
    try:
        rows = sum(append_rows(con, name, frame) for name, frame in sources.items())
    finally:
        con.close()
    return OnDisk(folder=folder, memory_limit=memory_limit, ids=extract_ids(sources),
                  rows=rows)


def score_on_spark(spark: SparkSession, sources: Sources, at: dt.date,
                   seed: int = 0, previous: pd.DataFrame | Path | None = None,
                   bundle: ModelBundle | None = None,
                   max_train_persons: int | None = 400_000, threads: int | None = None,
                   model: str | None = None, persons_per_task: int = PERSONS_PER_TASK,
                   out: Path | None = None, progress: Progress = quiet) -> ScoreRun:
    """`stratify.scoring.score` with features, prediction, tiers and reasons on Spark (same
    arguments; `persons_per_task`: the size of a task's range of persons, for a DuckDB copy
    or frames; a Parquet copy made on Spark is read in its own ranges). `out`: the
    run's files are written there (the scratch workspace of the linked copy) and the run
    holds them (`ScoreRun.written`), as the embedded engine's; else they are read back.
    `progress` is told training's steps."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 2)
        clock = now

    with ExitStack() as stack:
        # The pipeline's `out` is the copy's workspace in the data directory: nothing of the
        # run is written anywhere else. A caller's own frames (no `out`) go to a temporary
        # folder, removed when the run is read back.
        work = out if out is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="haven-spark-score-")))
        if not isinstance(sources, OnDisk):
            stack.callback(shutil.rmtree, work / "frames", ignore_errors=True)
        disk = _on_disk(sources, work / "frames")
        if bundle is None:
            con = connect(disk, threads)
            try:
                bundle = train(con, at, seed, max_train_persons=max_train_persons,
                               progress=progress)
            finally:
                con.close()
            lap("train")
            progress(f"model trained in {seconds['train']:,.0f} s")
        bundle = choose_model(bundle, model)
        if isinstance(previous, pd.DataFrame):  # the tasks read a file, a range each
            previous.to_parquet(work / "spark-previous.parquet", index=False)
            previous = work / "spark-previous.parquet"
            stack.callback(previous.unlink, missing_ok=True)
        job = RangeJob(disk.shared(), at, bundle.lookback_months, work, previous,
                       bundle.chosen)
        # a Parquet copy made on Spark is in ranges already: a task reads its range's files
        ranges = _ranges_table(spark, list(disk.ranges) if disk.ranges is not None
                               else person_ranges(disk, persons_per_task))
        lap("ranges")
        shared = broadcast(spark, bundle)  # once; destroyed when scored
        stack.callback(shared.destroy)
        chosen = first_pass(ranges, job, shared).persist()
        stack.callback(chosen.unpersist)
        cut = spark_thresholds(chosen, "p")
        first = chosen.groupBy("part").agg({"persons": "max", "seconds": "max"}).collect()
        lap("predict")
        found = {row["part"]: row["max(persons)"] for row in first}
        if not found:
            raise NoOneToScore(f"no one in the linked data is alive and registered on "
                               f"{at.isoformat()}")
        progress(f"predicted {sum(found.values()):,} persons in {len(found):,} tasks")
        second = sorted(second_pass(ranges, job, shared, cut, found).collect())
        lap("reasons")
        progress(f"tiered and explained {sum(found.values()):,} persons")
        parts = sorted(found)
        files = RunFiles(work)
        for kind, target in (("candidates", files.candidates), ("scores", files.scores)):
            score_batch.join_parts([files.part(kind, part) for part in parts], target)
        for part in parts:
            job.features(part).unlink()
            job.before(part).unlink(missing_ok=True)
        lap("join")
        scores, candidates, chosen_p, tiers = _read(files, out is None)
    run = _run(bundle, at, seed, disk.ids, (scores, candidates), (chosen_p, tiers), cut,
               seconds, written=out)
    run.metrics["tasks"] = _task_figures(first, second)
    return run


def _task_figures(first: list[Any], second: list[Any]) -> dict[str, Any]:
    """Per-task figures of the two passes (the cost model's throughput, docs/scale.md):
    ranges, persons, and each pass's persons a second per task (summed over tasks)."""
    persons = sum(row["persons"] for row in second)
    busy_first = sum(row["max(seconds)"] for row in first)
    busy_second = sum(row["seconds"] for row in second)
    return {"ranges": len(second), "persons": int(persons),
            "features_predict_seconds": round(busy_first, 2),
            "reasons_seconds": round(busy_second, 2),
            "features_predict_persons_per_task_second":
                round(persons / busy_first, 1) if busy_first else None,
            "reasons_persons_per_task_second":
                round(persons / busy_second, 1) if busy_second else None}


def _read(files: RunFiles, whole: bool
          ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """The run's scores and candidates (`whole`), or empty frames (they stay in their files),
    with the chosen probability and tier of everyone (8 bytes and a word a person)."""
    if whole:
        scores = pd.read_parquet(files.scores)
        candidates = pd.read_parquet(files.candidates)
        return (scores, candidates, scores["probability"].to_numpy(),
                scores["tier"].to_numpy())
    column = pd.read_parquet(files.scores, columns=["probability", "tier"])
    return (pd.DataFrame(), pd.DataFrame(), column["probability"].to_numpy(),
            column["tier"].to_numpy())


def _run(bundle: ModelBundle, at: dt.date, seed: int, ids: dict[str, list[str]],
         frames: tuple[pd.DataFrame, pd.DataFrame], chosen: tuple[np.ndarray, np.ndarray],
         cut: dict[str, float], seconds: dict[str, Any], written: Path | None) -> ScoreRun:
    """The ScoreRun, with the metadata `stratify.scoring.score` records."""
    scores, candidates = frames
    probability, tiers = chosen
    tier_counts = pd.Series(tiers).value_counts().to_dict()
    metrics: dict[str, Any] = {
        "persons": int(len(probability)),
        "mean_probability": float(np.mean(probability)) if len(probability) else float("nan"),
        "tiers": {k: int(v) for k, v in tier_counts.items()},
        "selection": bundle.selection, "training": bundle.metrics, "seconds": seconds,
        "reasons_method": score_batch.reasons_method(bundle),
        "chosen_by": bundle.extra.get("chosen_by", "validation"), "engine": "spark"}
    by_user = bundle.extra.get("chosen_by") == "user"
    version = f"{bundle.version}/{bundle.chosen}" if by_user else bundle.version
    return ScoreRun(run_id=score_batch.run_id(at, seed, ids, version), at=at,
                    model_version=bundle.version, model=bundle.chosen, seed=seed,
                    thresholds=cut, extract_ids=ids, metrics=metrics, scores=scores,
                    candidates=candidates, bundle=bundle, written=written,
                    meta={"train_at": bundle.train_at, "train_window": list(bundle.train_window),
                          "training_thresholds": bundle.thresholds,
                          "lookback_months": bundle.lookback_months,
                          "features": bundle.features,
                          "codelists_digest": bundle.codelists_digest,
                          "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
