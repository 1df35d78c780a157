"""`haven score` on Spark: the model fitted on the driver, prediction, tiers and reasons over
partitions.

What runs where (docs/scale.md):
- driver: training (stratify.train, on its fixed-size sample, exactly as the embedded engine),
  the feature table and the filter attributes (stratify.features over DuckDB: this slice still
  computes features in the driver process), the previous run's join and the run record;
- executors: `stratify.score_partition.predict_partition` then `explain_partition` through
  `mapInArrow`, with the fitted bundle broadcast once;
- Spark: the tier thresholds, from the population's count and a sort (`tier_thresholds`), the
  same numbers `stratify.tiers.thresholds` takes from the whole column.
The result is a `stratify.scoring.ScoreRun` equal to the embedded one (probabilities within
1e-9, the same tiers and reasons), saved by `stratify.scoring.save_run` as before.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from stratify.features import Sources, connect, features_from
from stratify.score_partition import (
    explain_partition,
    predict_partition,
    reasons_method,
    tier_thresholds,
)
from stratify.scoring import ScoreRun, _attributes, _run_id, choose_model
from stratify.sources import extract_ids
from stratify.tiers import tier_change
from stratify.train import ModelBundle, train

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

KEY = "person_key"
PREFIX = "p_"  # candidate probabilities beside the features: p_rule, p_logistic, ...
EXPLAINED = [("probability", "double"), ("tier", "string"), ("reasons", "string"),
             ("reason_group_1", "string"), ("reason_group_2", "string"),
             ("reason_group_3", "string"), ("age", "double"), ("age_band", "string"),
             ("conditions", "string"), ("social_care_known", "boolean")]


def _features(batch: pa.RecordBatch, features: list[str]) -> pd.DataFrame:
    frame = batch.to_pandas()
    return frame.set_index(KEY)[features]


def predicted(spark: SparkSession, X: pd.DataFrame, bundle: ModelBundle, shared: Any,
              partitions: int) -> DataFrame:
    """The feature table on Spark with every candidate's probability (`p_<name>`) added, each
    partition scored by `predict_partition` with the bundle (`shared`: its broadcast)."""
    frame = X.reset_index()
    table = spark.createDataFrame(frame).repartition(partitions)
    names = list(bundle.models)
    features = list(X.columns)
    from pyspark.sql.types import DoubleType, StructField, StructType

    schema = StructType([*table.schema.fields,
                         *[StructField(f"{PREFIX}{name}", DoubleType()) for name in names]])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = shared.value
        for batch in batches:
            X_part = _features(batch, features)
            probability = predict_partition(model, X_part)
            out = batch
            for name in names:
                out = out.append_column(f"{PREFIX}{name}",
                                        pa.array(probability[name].to_numpy(), pa.float64()))
            yield out

    return table.mapInArrow(run, schema)


def explained(table: DataFrame, bundle: ModelBundle, shared: Any, features: list[str],
              cut: dict[str, float]) -> DataFrame:
    """Tier, reasons and row-only columns for every person of `predicted`'s table, each
    partition through `explain_partition` (thresholds `cut` shipped with the function)."""
    chosen = f"{PREFIX}{bundle.chosen}"
    schema = ", ".join([f"{KEY} string"] + [f"{name} {kind}" for name, kind in EXPLAINED])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = shared.value
        for batch in batches:
            frame = batch.to_pandas().set_index(KEY)
            out = explain_partition(model, frame[features], frame[chosen].to_numpy(), cut)
            out = out.astype({"age": float})
            yield pa.RecordBatch.from_pandas(out.reset_index(), preserve_index=False)

    return table.mapInArrow(run, schema)


def spark_thresholds(table: DataFrame, column: str) -> dict[str, float]:
    """`stratify.tiers.thresholds` of `column`, worked out by Spark: a count, then the m-th
    largest value by a descending sort limited to m rows (m is at most a fifth of the rows)."""
    from pyspark.sql import functions as F

    n = table.count()

    def nth_largest(m: int) -> float:
        top = table.select(column).orderBy(F.desc(column)).limit(m)
        return float(top.agg(F.min(column)).first()[0])

    return tier_thresholds(n, nth_largest)


def score_on_spark(spark: SparkSession, sources: Sources, at: dt.date,
                   seed: int = 0, previous: pd.DataFrame | None = None,
                   bundle: ModelBundle | None = None,
                   max_train_persons: int | None = 400_000, threads: int | None = None,
                   model: str | None = None, partitions: int = 4) -> ScoreRun:
    """`stratify.scoring.score` with prediction, tiers and reasons on Spark (same arguments;
    `partitions`: how many partitions the feature table is scored in)."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 2)
        clock = now

    con = connect(sources, threads)
    try:
        if bundle is None:
            bundle = train(con, at, seed, max_train_persons=max_train_persons)
            lap("train")
        bundle = choose_model(bundle, model)
        X = features_from(con, at, bundle.lookback_months)
        attributes = _attributes(con, at, X.index)
        lap("features")
    finally:
        con.close()
    shared = spark.sparkContext.broadcast(bundle)  # once; destroyed when the run is scored
    table = predicted(spark, X, bundle, shared, partitions).persist()
    try:
        cut = spark_thresholds(table, f"{PREFIX}{bundle.chosen}")
        lap("predict")
        rows = explained(table, bundle, shared, list(X.columns), cut).toPandas().set_index(KEY)
        candidates = table.select(KEY, *[f"{PREFIX}{n}" for n in bundle.models]).toPandas()
    finally:
        table.unpersist()
        shared.destroy()
    lap("reasons")
    rows = rows.reindex(X.index)
    scores = _assemble(X, rows, attributes, previous)
    candidates = candidates.set_index(KEY).reindex(X.index).rename(
        columns=lambda c: c[len(PREFIX):]).reset_index()
    return _run(bundle, at, seed, sources, scores, candidates, cut, seconds)


def _assemble(X: pd.DataFrame, rows: pd.DataFrame, attributes: pd.DataFrame,
              previous: pd.DataFrame | None) -> pd.DataFrame:
    """The scores table in `stratify.scoring.score`'s column order, from the executors' rows,
    the previous run (a join) and the driver's attributes."""
    scores = pd.DataFrame({KEY: X.index.to_numpy(), "probability": rows["probability"]},
                          index=X.index)
    for column in ("tier", "reasons", "reason_group_1", "reason_group_2", "reason_group_3"):
        scores[column] = rows[column].astype(object)
    scores["previous_probability"] = np.nan
    scores["previous_tier"] = None
    if previous is not None and len(previous):
        before = previous.drop_duplicates(KEY).set_index(KEY)
        scores["previous_probability"] = before["probability"].reindex(X.index).astype(float)
        scores["previous_tier"] = before["tier"].reindex(X.index).astype(object)
    scores["change"] = scores["probability"] - scores["previous_probability"]
    scores["tier_change"] = tier_change(scores["tier"], scores["previous_tier"])
    scores = scores.join(attributes)
    scores["age"] = X["age"]
    scores["age_band"] = rows["age_band"].astype(object)
    scores["conditions"] = rows["conditions"].astype(object)
    scores["social_care_known"] = rows["social_care_known"].astype(bool)
    return scores.reset_index(drop=True)


def _run(bundle: ModelBundle, at: dt.date, seed: int, sources: Sources,
         scores: pd.DataFrame, candidates: pd.DataFrame, cut: dict[str, float],
         seconds: dict[str, float]) -> ScoreRun:
    """The ScoreRun, with the metadata `stratify.scoring.score` records."""
    ids = extract_ids(sources)
    chosen = scores["probability"].to_numpy()
    tier_counts = scores["tier"].value_counts().to_dict()
    metrics: dict[str, Any] = {
        "persons": int(len(scores)),
        "mean_probability": float(np.mean(chosen)) if len(chosen) else float("nan"),
        "tiers": {k: int(v) for k, v in tier_counts.items()},
        "selection": bundle.selection, "training": bundle.metrics, "seconds": seconds,
        "reasons_method": reasons_method(bundle),
        "chosen_by": bundle.extra.get("chosen_by", "validation"), "engine": "spark"}
    by_user = bundle.extra.get("chosen_by") == "user"
    version = f"{bundle.version}/{bundle.chosen}" if by_user else bundle.version
    return ScoreRun(run_id=_run_id(at, seed, ids, version), at=at,
                    model_version=bundle.version, model=bundle.chosen, seed=seed,
                    thresholds=cut, extract_ids=ids, metrics=metrics, scores=scores,
                    candidates=candidates, bundle=bundle,
                    meta={"train_at": bundle.train_at, "train_window": list(bundle.train_window),
                          "training_thresholds": bundle.thresholds,
                          "lookback_months": bundle.lookback_months,
                          "features": bundle.features,
                          "codelists_digest": bundle.codelists_digest,
                          "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
