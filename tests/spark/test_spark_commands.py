"""`haven land`, `haven link` and `haven score` with HAVEN_ENGINE=spark (batches prepared and
persons scored on Spark, through the pipeline as the command line runs it) give the embedded
engine's receipts, the same person key for every landed row and the same scores."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from spark_fixtures import (
    comparable_links,
    spark_fixture,  # noqa: F401 - the shared `spark` session
)
from sqlalchemy import select

from cli.main import main
from conftest import key_environment
from governance.schema import extracts as extract_table
from governance.settings import Settings
from pipeline import linked_copy
from pipeline.context import Context
from synth import generate


def _pipeline(home: Path, extracts: Path, keys: dict[str, str], engine: str,
              at: dt.date) -> dict[str, Any]:
    env = {"HAVEN_HOME": str(home), "HAVEN_ENGINE": engine, **keys}
    assert main(["land", str(extracts)], env) == 0
    layout = Settings.from_environ(env).layout
    # Nothing left beside the landed extracts: no hand-over folder, no staged file.
    assert not layout.staging_dir.exists() or not any(layout.staging_dir.iterdir())
    assert {f.name for folder in layout.extracts_dir.iterdir() for f in folder.iterdir()} == {
        "rows.parquet"}
    assert main(["link"], env) == 0
    assert main(["score", "--at", at.isoformat()], env) == 0
    haven = Context(Settings.from_environ(env))
    (run,) = sorted(haven.settings.layout.runs_dir.glob("score-*"))
    # A row linked to no one keys a person of its own from its extract id, which each landing
    # draws afresh: such keys are named by the row instead, on both engines alike.
    links, own = comparable_links(haven.settings)
    with haven.engine.connect() as connection:
        receipts = sorted((r.source, r.sender, r.status, r.rows_landed,
                           json.dumps(r.counts, sort_keys=True)) for r in connection.execute(
            select(extract_table.c.source, extract_table.c.sender, extract_table.c.status,
                   extract_table.c.rows_landed, extract_table.c.counts)))
    haven.engine.dispose()
    tasks = json.loads((run / "run.json").read_text())["metrics"].get("tasks")
    return {"run": run.name, "receipts": receipts, "tasks": tasks,
            "scores": pd.read_parquet(run / "scores.parquet").assign(
                person_key=lambda f: f["person_key"].map(lambda k: own.get(k, k))).sort_values(
                "person_key").reset_index(drop=True),
            "links": links}


def test_the_commands_on_spark_equal_the_embedded_engine(spark: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    # the linked copy made on Spark in ranges of 80 persons: the score's tasks read a range
    # of the copy's files each (pipeline/engines/spark_copy.py)
    monkeypatch.setattr(linked_copy, "PERSONS_PER_TASK", 80)
    extracts = tmp_path / "extracts"
    meta = generate(300, 4, extracts, progress=False)
    at = dt.date.fromisoformat(meta["period_end"]) + dt.timedelta(days=1)
    keys = key_environment()
    tracker = spark.sparkContext.statusTracker()
    jobs = len(tracker.getJobIdsForGroup())
    embedded = _pipeline(tmp_path / "embedded", extracts, keys, "embedded", at)
    assert len(tracker.getJobIdsForGroup()) == jobs  # the embedded engine uses no Spark
    on_spark = _pipeline(tmp_path / "spark", extracts, keys, "spark", at)
    assert len(tracker.getJobIdsForGroup()) > jobs  # landing and scoring ran Spark jobs
    # (run ids differ: they digest the extract ids, which each landing draws afresh)
    assert on_spark["receipts"] == embedded["receipts"]
    pd.testing.assert_frame_equal(on_spark["links"], embedded["links"])
    a, b = embedded["scores"], on_spark["scores"]
    assert a["person_key"].tolist() == b["person_key"].tolist()
    assert (abs(a["probability"].to_numpy() - b["probability"].to_numpy()) <= 1e-9).all()
    assert a["tier"].tolist() == b["tier"].tolist()
    assert a["reasons"].tolist() == b["reasons"].tolist()
    assert embedded["tasks"] is None and on_spark["tasks"]["ranges"] >= 3
