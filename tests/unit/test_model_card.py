"""The model card's sections that rest on what other parts record with a run: the model's
approval (#17 part 3) and the history gain (#15), each tolerant of what a run lacks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stratify.model_card import approval_lines, features_by_source, history_gain_lines
from stratify.report import write_report
from stratify.scoring import ScoreRun


def _run(metrics: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> ScoreRun:
    n = 40
    p = np.linspace(0.01, 0.6, n)
    scores = pd.DataFrame({
        "person_key": [f"P{i:020x}" for i in range(n)], "probability": p,
        "tier": ["very_high"] * 2 + ["high"] * 4 + ["moderate"] * 10 + ["low"] * 24,
        "change": np.nan, "sources": ["gp_patients"] * 3 + ["apc;gp_patients"] * (n - 3)})
    return ScoreRun(run_id="score-card", at=dt.date(2026, 4, 1), model_version="v",
                    model="logistic", seed=0,
                    thresholds={"very_high": 0.5, "high": 0.3, "moderate": 0.1, "low": 0.0},
                    extract_ids={"apc": ["e1"]}, metrics=metrics or {}, scores=scores,
                    candidates=scores[["person_key"]].assign(logistic=p),
                    meta={"train_at": "2025-04-01", "train_window": ["2025-04-01", "2026-04-01"],
                          "features": ["age", "emergency_admissions_12m", "new_thing"],
                          **(meta or {})})


def test_history_gain_renders_what_is_there_and_nothing_when_absent() -> None:
    full = history_gain_lines({"auroc_model": 0.81, "auroc_reference_only": 0.76,
                               "auroc_true_observable": 0.78, "persons": 2000})
    text = "\n".join(full)
    assert "this model (with history features): 0.810" in text
    assert "reference-date factors only: 0.760" in text and "synthetic truth): 0.780" in text
    assert "gain over the reference-date-only model: +0.050" in text
    assert "persons: 2,000" in text  # an unknown figure is listed, not dropped
    stated = "\n".join(history_gain_lines({"auroc_model": 0.81, "auroc_reference_only": 0.76,
                                            "gain": 0.05}))
    assert "- gain: 0.050" in stated and "gain over" not in stated  # said once
    partial = "\n".join(history_gain_lines({"auroc_model": 0.8, "note": "text"}))
    assert "0.800" in partial and "gain over" not in partial and "note" not in partial
    for nothing in (None, {}, {"note": "no figures"}, [0.8]):
        assert history_gain_lines(nothing) == []  # type: ignore[arg-type]


def test_approval_renders_the_decision_and_says_when_there_is_none() -> None:
    assert approval_lines(None) == ["- Approval: none recorded with this run."]
    approved = "\n".join(approval_lines({
        "model_id": "model-abc", "status": "approved",
        "decided_by_role": "clinical_safety_officer", "decided_at": "2026-04-02T10:00:00",
        "reason": "back-test AUROC within the hazard log's bound"}))
    assert "model model-abc; status approved; decided by role clinical_safety_officer" in approved
    assert "reason back-test AUROC" in approved and "NOT approved" not in approved
    pending = "\n".join(approval_lines({"model_id": "model-abc", "status": "candidate",
                                        "retrain_flag": {"auroc": 0.6}}))
    assert "NOT approved (candidate)" in pending and "Flagged for retraining" in pending
    assert approval_lines({}) == ["- Approval: none recorded with this run."]


def test_a_run_alone_gets_its_card_with_approval_and_history_gain(tmp_path: Path) -> None:
    run = _run(metrics={"training": {"history_gain": {"auroc_model": 0.7,
                                                       "auroc_reference_only": 0.65}}},
               meta={"approval": {"model_id": "model-x", "status": "approved"}})
    text = write_report(run, tmp_path).read_text()
    assert text.index("## Model card") < text.index("## This run")
    assert "- Approval: model model-x; status approved" in text
    assert "## What the history adds" in text and "+0.050" in text
    assert "- other: 1 (new_thing)" in text  # a feature the catalogue does not know
    assert "3 scored persons have no record but their GP registration" in text
    assert "no evaluation in this report" in text
    bare = write_report(_run(), tmp_path / "bare").read_text()
    assert "none recorded with this run" in bare and "What the history adds" not in bare


def test_features_grouped_by_their_catalogue_source() -> None:
    grouped = features_by_source(["age", "ae_attendances_12m", "emergency_admissions_12m"])
    assert grouped == {"gp_patients (else any source)": ["age"], "ae": ["ae_attendances_12m"],
                       "apc": ["emergency_admissions_12m"]}


def test_persons_with_little_history_are_counted_over_distinct_source_lists() -> None:
    """Persons seen in no source but their GP registration: counted over the distinct source
    lists (issue #12: not a list of texts a person), as the person-by-person count was."""
    from dataclasses import replace

    from stratify.model_card import _little_history

    sources = pd.Series(["gp_patients", "apc;gp_patients", None, "", ";gp_patients",
                         "gp_patients;", "community", "gp_patients", "ae;apc"] * 7,
                        dtype=object)
    run = replace(_run(), scores=pd.DataFrame({"sources": sources}))
    person_by_person = int(sources.fillna("").str.split(";").map(
        lambda s: not (set(s) - {"", "gp_patients"})).sum())
    assert _little_history(run) == person_by_person == 7 * 6
    assert _little_history(replace(run, scores=pd.DataFrame({"x": [1]}))) == 0
