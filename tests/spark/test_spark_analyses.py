"""Journeys, costs and segments with HAVEN_ENGINE=spark (a Spark task a range of persons:
pipeline.analysis_ranges, each task opening the linked copy read-only) give the embedded
engine's records, published tables and summaries exactly."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from spark_fixtures import spark_fixture  # noqa: F401 - the shared `spark` session

from cli.main import main
from conftest import key_environment
from factories import approve_candidates
from governance.settings import Settings
from pipeline import analyses, analysis_ranges, linked_copy
from pipeline.context import Context
from stratify.features import OnDisk
from synth import generate


def _run(env: dict[str, str], kind: str, at: dt.date) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
    haven = Context(Settings.from_environ(env))
    try:
        if kind == "journeys":
            result = analyses.run_journeys(haven, at, months=24)
        elif kind == "costs":
            result = analyses.run_costs(haven, at.year - 1)
        else:
            result = analyses.run_segments(haven, at)
        files = haven.settings.layout.analysis(result.run_id)
        return result, pd.read_parquet(files.records), pd.read_parquet(files.published)
    finally:
        haven.engine.dispose()


def test_the_analyses_on_spark_equal_the_embedded_engine(spark: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    extracts = tmp_path / "extracts"
    meta = generate(400, 4, extracts, progress=False)
    at = dt.date.fromisoformat(meta["period_end"]) + dt.timedelta(days=1)
    env = {"HAVEN_HOME": str(tmp_path / "embedded"), **key_environment()}
    assert main(["land", str(extracts)], env) == 0
    assert main(["link"], env) == 0
    assert main(["score", "--at", at.isoformat()], env) == 0  # the tiers the records show
    haven = Context(Settings.from_environ(env))
    approve_candidates(haven.engine)  # a run serves once its model is approved
    haven.engine.dispose()
    shutil.copytree(tmp_path / "embedded", tmp_path / "spark")
    on_spark = {**env, "HAVEN_HOME": str(tmp_path / "spark"), "HAVEN_ENGINE": "spark"}
    monkeypatch.setattr(analyses, "PART_PERSONS", 90)  # several ranges, so several tasks
    # the linked copy made on Spark in ranges of 40 persons: each analysis range is a run of
    # them (`person_ranges` over a Parquet copy), its task reading only their files
    monkeypatch.setattr(linked_copy, "PERSONS_PER_TASK", 40)
    tracker = spark.sparkContext.statusTracker()
    for kind in analyses.KINDS:
        jobs = len(tracker.getJobIdsForGroup())
        want, want_records, want_published = _run(env, kind, at)
        assert len(tracker.getJobIdsForGroup()) == jobs  # the embedded engine uses no Spark
        got, got_records, got_published = _run(on_spark, kind, at)
        assert len(tracker.getJobIdsForGroup()) > jobs, kind  # the ranges ran as Spark tasks
        assert len(got_records) == len(want_records) > 20, kind
        pd.testing.assert_frame_equal(got_records, want_records, check_exact=True, obj=kind)
        pd.testing.assert_frame_equal(got_published, want_published, obj=kind)
        assert got.summary == want.summary, kind
    assert want_records["tier"].ne("unknown").any()  # tiers were read on the executors
    assert not any((tmp_path / "spark" / "scratch").iterdir())  # the ranges' files went


def test_a_range_task_on_spark_gives_duckdb_the_tasks_cpus_not_the_hosts(spark: Any) -> None:
    part = OnDisk(folder=Path("/nowhere"), memory_limit="1GB", ids={}, rows=0)
    assert analysis_ranges._in_task(part).threads is None  # here: DuckDB takes every core
    threads = spark.sparkContext.parallelize([0, 1], 2).map(
        lambda _: analysis_ranges._in_task(part).threads).collect()
    assert threads == [1, 1]  # in a task: spark.task.cpus
