"""`haven score` on Spark equals the embedded engine: the model is fitted on the driver as
today, prediction, tiers and reasons run over partitions (pipeline.engines.spark_score), and
every person gets the same probability (within 1e-9), tier and reasons."""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from spark_fixtures import spark_fixture  # noqa: F401 - the shared `spark` session

from governance.settings import Settings
from pipeline.engines.dispatch import persons_scorer
from pipeline.engines.spark_score import NoOneToScore, score_on_spark, spark_thresholds
from stratify.score_partition import higher_rank, tier_thresholds
from stratify.scoring import ScoreRun, score
from stratify.tiers import TIERS, thresholds

AT = dt.date(2025, 4, 1)


def _make_sources(persons: int, seed: int) -> dict[str, pd.DataFrame]:
    path = Path(__file__).parents[2] / "bench" / "score.py"
    spec = importlib.util.spec_from_file_location("bench_score", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_sources(persons, seed=seed)


@pytest.fixture(scope="module")
def sources() -> dict[str, pd.DataFrame]:
    return _make_sources(800, seed=5)


@pytest.fixture(scope="module")
def embedded(sources: dict[str, pd.DataFrame]) -> ScoreRun:
    return score(sources, AT, seed=0)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 199, 200, 201, 1000, 1001, 65_537, 1_000_003])
def test_tier_bounds_are_numpys_higher_quantile_from_ranks(n: int) -> None:
    values = np.random.default_rng(n).random(n)
    descending = np.sort(values)[::-1]
    assert tier_thresholds(n, lambda m: descending[m - 1]) == thresholds(values)
    for _, share in TIERS:
        assert higher_rank(n, share) == int(np.quantile(np.arange(n), 1 - share,
                                                         method="higher"))


def test_no_persons_have_the_embedded_thresholds() -> None:
    assert tier_thresholds(0, lambda m: 0.0) == thresholds(np.array([]))


def test_spark_thresholds_equal_the_embedded_ones(spark: Any) -> None:
    values = np.random.default_rng(3).random(997)
    table = spark.createDataFrame(pd.DataFrame({"p": values})).repartition(3)
    assert spark_thresholds(table, "p") == thresholds(values)


def test_scores_on_spark_equal_the_embedded_engine(spark: Any, sources: dict[str, pd.DataFrame],
                                                   embedded: ScoreRun) -> None:
    # The model is fitted on the driver by the same stratify.train either way; reusing the
    # embedded run's keeps this test under a minute on a loaded machine.
    run = score_on_spark(spark, sources, AT, seed=0, persons_per_task=300,
                         bundle=embedded.bundle)
    assert run.metrics["tasks"]["ranges"] >= 3  # features made a range of persons a task
    ours, theirs = run.scores, embedded.scores
    assert run.run_id == embedded.run_id and run.model == embedded.model
    assert list(ours.columns) == list(theirs.columns)
    assert ours["person_key"].tolist() == theirs["person_key"].tolist()
    assert len(ours) > 500
    assert np.abs(ours["probability"] - theirs["probability"]).max() <= 1e-9
    assert run.thresholds == pytest.approx(embedded.thresholds, abs=1e-9)
    assert (ours["tier"] == theirs["tier"]).all()
    assert set(ours["tier"]) == {"very_high", "high", "moderate", "low"}
    for column in ("reasons", "reason_group_1", "reason_group_2", "reason_group_3",
                   "gp_practice_code", "sex", "sources", "conditions", "social_care_known"):
        pd.testing.assert_series_equal(ours[column], theirs[column], check_dtype=False)
    pd.testing.assert_series_equal(ours["age_band"].fillna("-"), theirs["age_band"].fillna("-"),
                                   check_dtype=False)
    for name in embedded.bundle.models:  # type: ignore[union-attr]
        assert np.abs(run.candidates[name] - embedded.candidates[name]).max() <= 1e-9
    assert run.metrics["tiers"] == embedded.metrics["tiers"]
    assert run.metrics["reasons_method"] == embedded.metrics["reasons_method"]


def test_a_reused_model_and_previous_run_give_the_same_change(
        spark: Any, sources: dict[str, pd.DataFrame], embedded: ScoreRun) -> None:
    previous = embedded.scores[["person_key", "probability", "tier"]].copy()
    previous["probability"] = previous["probability"] * 0.9
    previous["tier"] = "low"
    again = score(sources, AT, seed=0, previous=previous, bundle=embedded.bundle)
    run = score_on_spark(spark, sources, AT, seed=0, previous=previous,
                         bundle=embedded.bundle, persons_per_task=400)
    assert np.abs(run.scores["change"] - again.scores["change"]).max() <= 1e-9
    assert run.scores["tier_change"].tolist() == again.scores["tier_change"].tolist()
    assert (run.scores["tier_change"] > 0).any()


def test_the_engine_setting_chooses_the_scorer(spark: Any, tmp_path: Path,
                                               sources: dict[str, pd.DataFrame],
                                               embedded: ScoreRun) -> None:
    assert persons_scorer(Settings(home=tmp_path)) is score
    on_spark = persons_scorer(Settings(home=tmp_path, engine="spark"), spark=spark)
    run = on_spark(sources, AT, seed=0)  # the model fitted on the driver, as embedded
    assert run.metrics["engine"] == "spark"
    assert (run.run_id, run.model, run.model_version) == (
        embedded.run_id, embedded.model, embedded.model_version)
    assert np.abs(run.scores["probability"] - embedded.scores["probability"]).max() <= 1e-9


def test_a_written_run_is_the_embedded_engines_files_and_leaves_no_task_files(
        spark: Any, sources: dict[str, pd.DataFrame], embedded: ScoreRun,
        tmp_path: Path) -> None:
    ours, theirs = tmp_path / "spark", tmp_path / "embedded"
    ours.mkdir()
    theirs.mkdir()
    run = score_on_spark(spark, sources, AT, seed=0, bundle=embedded.bundle,
                         persons_per_task=250, out=ours)
    score(sources, AT, seed=0, bundle=embedded.bundle, out=theirs)
    assert run.written == ours and run.persons == len(embedded.scores)
    assert sorted(p.name for p in ours.iterdir()) == ["candidates.parquet", "scores.parquet"]
    for name in ("scores.parquet", "candidates.parquet"):
        assert pq.read_schema(ours / name).remove_metadata() == \
            pq.read_schema(theirs / name).remove_metadata()
        a, b = pd.read_parquet(ours / name), pd.read_parquet(theirs / name)
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-9, rtol=0)
    assert run.metrics["tiers"] == embedded.metrics["tiers"]
    assert run.metrics["mean_probability"] == pytest.approx(
        embedded.metrics["mean_probability"], abs=1e-12)


def test_a_date_no_one_is_registered_on_is_refused_by_name(
        spark: Any, sources: dict[str, pd.DataFrame], embedded: ScoreRun) -> None:
    with pytest.raises(NoOneToScore, match="alive and registered on 1990-01-01"):
        score_on_spark(spark, sources, dt.date(1990, 1, 1), bundle=embedded.bundle)


def test_a_previous_scores_file_with_repeated_keys_gives_the_embedded_change(
        spark: Any, sources: dict[str, pd.DataFrame], embedded: ScoreRun,
        tmp_path: Path) -> None:
    """The pipeline's own path: the previous run as its scores file, read a range of persons
    at a time by each task (the first row of a repeated key counts, as embedded)."""
    previous = embedded.scores[["person_key", "probability", "tier"]].copy()
    previous["probability"] = previous["probability"] * 0.9
    previous["tier"] = "low"
    again = previous.iloc[::7].assign(probability=0.99, tier="very_high")  # after the firsts
    path = tmp_path / "previous.parquet"
    pd.concat([previous, again], ignore_index=True).to_parquet(path, index=False)
    want = score(sources, AT, seed=0, previous=path, bundle=embedded.bundle)
    run = score_on_spark(spark, sources, AT, seed=0, previous=path, bundle=embedded.bundle,
                         persons_per_task=200)
    assert run.metrics["tasks"]["ranges"] >= 4
    assert run.scores["person_key"].tolist() == want.scores["person_key"].tolist()
    for column in ("previous_probability", "change"):
        assert np.abs(run.scores[column] - want.scores[column]).max() <= 1e-9
    assert run.scores["previous_tier"].tolist() == want.scores["previous_tier"].tolist()
    assert run.scores["tier_change"].tolist() == want.scores["tier_change"].tolist()
    assert (run.scores["previous_tier"] == "low").all()  # the first rows, not the repeats
