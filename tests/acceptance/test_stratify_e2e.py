"""End to end on ~3,000 synthetic persons: synth extracts -> landed frames -> run -> report."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from stratify.evaluate import evaluate, summary
from stratify.report import write_report
from stratify.scoring import UnknownModel, score
from stratify_fixtures import SynthData, synth_or_skip


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> SynthData:
    return synth_or_skip(tmp_path_factory, 3000, seed=11)


def test_oracle_landing_matches_the_contracts(synth_data: SynthData) -> None:
    apc = synth_data.sources["apc"]
    assert {"person_key", "birth_ym", "admission_date", "primary_diagnosis"} <= set(apc.columns)
    assert not apc["primary_diagnosis"].str.contains(r"\.", regex=True).any()
    assert apc["birth_ym"].str.fullmatch(r"\d{4}-\d{2}").all()
    assert "nhs_number" not in apc.columns and "date_of_birth" not in apc.columns


def test_end_to_end_on_synthetic_persons(synth_data: SynthData, tmp_path: Path) -> None:
    at = dt.date.fromisoformat(synth_data.meta.get("score_date", "2025-04-01"))
    run = score(synth_data.sources, at, seed=0)
    truth = synth_data.persons
    observable = truth["observable_risk"].set_axis(truth.index.astype(str))
    ev = evaluate(run, synth_data.sources, extra_scores={"observable_risk": observable})
    figures = summary(ev)
    assert figures["chosen"]["auroc"] > 0.6
    assert 0.5 < figures["chosen"]["calibration_slope"] < 1.6
    # the outcome read from the data is the generator's own
    events = truth["emergency_in_outcome_year"].set_axis(truth.index.astype(str))
    outcome = ev.frame["outcome"]
    assert (events.reindex(outcome.index).astype(int) == outcome).mean() > 0.99
    assert write_report(ev, tmp_path, run=run).exists()
    # a super user's choice of candidate: scored with it, recorded, and a run of its own
    other = next(m for m in ("logistic", "rule") if m != run.model)
    chosen = score(synth_data.sources, at, seed=0, bundle=run.bundle, model=other)
    assert chosen.model == other and chosen.metrics["chosen_by"] == "user"
    assert run.metrics["chosen_by"] == "validation"
    assert chosen.run_id != run.run_id
    assert np.allclose(chosen.scores["probability"].to_numpy(),
                       chosen.candidates[other].to_numpy())
    with pytest.raises(UnknownModel, match="candidates: .*logistic"):
        score(synth_data.sources, at, seed=0, bundle=run.bundle, model="oracle")
    same = score(synth_data.sources, at, seed=0, bundle=run.bundle, model=run.model)
    assert same.run_id == run.run_id and same.metrics["chosen_by"] == "validation"
