"""The parts of `haven refresh` around the drift maths (pipeline/refresh.py,
pipeline/refresh_report.py), on hand-made runs: which model it scores with, which run it
compares with, and a first refresh's report."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import insert

from conftest import key_environment
from governance import model_approvals
from governance.audit import Actor
from governance.schema import runs
from governance.settings import Settings
from pipeline.context import Context
from pipeline.refresh import (
    NoApprovedModel,
    approved_bundle,
    latest_report,
    previous_run,
)
from pipeline.refresh_report import markdown

CSO = Actor("cara.cso", "clinical_safety_officer", "X26", "clinical_safety")


@pytest.fixture
def home(tmp_path: Path):
    context = Context(Settings(home=tmp_path / "home", key_env=key_environment()))
    yield context
    context.close()


def _run(home: Context, run_id: str, at: str, model: str | None, seconds: int,
         **extra) -> None:
    summary = {"at": at, "purpose": "commissioning", **extra}
    if model:
        summary["model_id"] = model
    with home.engine.begin() as connection:
        connection.execute(insert(runs).values(
            run_id=run_id, kind="score", status="complete", extract_ids=[], summary=summary,
            at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)))


def _model(home: Context, name: str, run_id: str, approve: bool) -> str:
    model = model_approvals.model_id({"name": name})
    with home.engine.begin() as connection:
        model_approvals.record_candidate(connection, model, run_id, "commissioning", "rule",
                                         {"name": name})
    if approve:
        model_approvals.decide(home.engine, CSO, model, "approve", "reviewed")
    return model


def test_refresh_scores_only_with_an_approved_model_whose_file_is_held(home):
    with pytest.raises(NoApprovedModel, match="no approved model"):
        approved_bundle(home)
    _model(home, "a", "score-2025-04-01-a", approve=True)
    with pytest.raises(NoApprovedModel, match="no fitted file"):
        approved_bundle(home)


def test_the_run_compared_with_is_the_newest_servable_one_dated_before(home):
    approved = _model(home, "a", "score-2025-04-01-a", approve=True)
    waiting = _model(home, "b", "score-2025-04-15-b", approve=False)
    _run(home, "score-2025-03-01-legacy", "2025-03-01", None, 1)
    _run(home, "score-2025-04-01-a", "2025-04-01", approved, 2)
    _run(home, "score-2025-04-15-b", "2025-04-15", waiting, 3)
    _run(home, "score-2025-05-01-a", "2025-05-01", approved, 4)
    found = previous_run(home, "commissioning", dt.date(2025, 5, 1))
    assert found is not None and found.run_id == "score-2025-04-01-a"
    assert previous_run(home, "case_finding", dt.date(2025, 5, 1)) is None
    assert previous_run(home, "commissioning", dt.date(2025, 4, 1)) is None  # legacy: no


def test_the_latest_report_is_the_newest_refreshed_runs(home):
    assert latest_report(home) is None
    _run(home, "score-2025-04-01-a", "2025-04-01", None, 1)
    _run(home, "score-2025-05-01-a", "2025-05-01", None, 2, refresh={"warnings": 0})
    assert latest_report(home) is None  # its report file is gone
    files = home.settings.layout.run("score-2025-05-01-a")
    files.folder.mkdir(parents=True)
    files.refresh_json.write_text(json.dumps({"run_id": "score-2025-05-01-a"}))
    assert latest_report(home) == {"run_id": "score-2025-05-01-a"}


def test_a_first_refresh_report_says_there_is_nothing_to_compare_with():
    report = {
        "run_id": "score-2025-04-01-a", "at": "2025-04-01", "purpose": "commissioning",
        "previous_run_id": None, "previous_at": None, "persons": 1200,
        "model": {"model_id": "model-abcdefghijkl", "algorithm": "rule",
                  "decided_by": "cara.cso", "decided_role": "clinical_safety_officer",
                  "decided_at": "2025-04-02T10:00:00+00:00", "reason": "reviewed"},
        "extracts": {"landed": 3, "refused": 0, "duplicate": 1},
        "thresholds": {"feature_psi": 0.25}, "retrain": False,
        "warnings": [{"check": "match_rate", "subject": "apc", "value": 3.0,
                      "threshold": 2.0, "retrain": False}],
        "figures": {"linkage": {"apc": {
            "match_rate_before": None, "match_rate_after": 0.97,
            "match_rate_change_points": None, "probabilistic_before": None,
            "probabilistic_after": 0.02, "probabilistic_change_points": None}},
            "linkage_runs": {"before_rows": None, "after_rows": 5000},
            "performance": {"status": "awaiting outcomes", "data_end": None,
                            "complete_after": None}}}
    text = markdown(report)
    assert text.count("No previous run to compare with.") == 3
    assert "| match_rate | apc | 3.0000 | 2.0 |" in text
    assert "| apc | – | 97.0% | – | – | 2.0% | – |" in text
    assert "Awaiting outcomes" in text and "1,200 persons" in text
    assert "– (none: first run)" in text
