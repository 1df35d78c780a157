"""The model report's counts read the scored persons from the run's scores file in DuckDB
(issue #12: no Python set of a whole population's person keys): the same counts as from the
keys in memory, on the hand-made person index and opt-out register of test_report_counts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from integration.test_report_counts import _world

from pipeline.report_counts import run_counts

EXTRACTS = {"gp_patients": ["e-gp"], "apc": ["e-apc"], "optouts": ["e-opt"]}


@pytest.mark.parametrize("backend", [""])  # counting, not storage: SQLite is enough
@pytest.mark.parametrize("purpose", ["commissioning", "direct_care"])
def test_counts_from_the_scores_file_equal_those_from_the_keys(haven, tmp_path: Path,
                                                               purpose: str) -> None:
    serving = _world(haven)
    serving = type(serving)(serving.run_id, serving.scored_at,
                            {**serving.summary, "purpose": purpose})
    for keys in ({"PA", "PB"}, {"PA", "PB", "PC", "PD"}, set()):
        scores = tmp_path / "scores.parquet"
        pd.DataFrame({"person_key": pd.Series(sorted(keys), dtype=object),
                      "probability": 0.5}).to_parquet(scores, index=False)
        from_keys = run_counts(haven.settings, haven.engine, serving, keys, EXTRACTS, 1)
        from_file = run_counts(haven.settings, haven.engine, serving, scores, EXTRACTS, 1)
        assert from_file == from_keys
        assert from_file.scored == len(keys)
    # the opt-out counts do depend on who was scored (the comparison above can fail)
    assert {o.optout_type: o.scored for o in from_keys.optouts} == {"ndoo": 0, "type1": 0}


@pytest.mark.parametrize("backend", [""])
def test_counts_without_a_link_map_still_count_the_scored(haven, tmp_path: Path) -> None:
    serving = _world(haven)
    haven.settings.layout.link_map.unlink()
    scores = tmp_path / "scores.parquet"
    pd.DataFrame({"person_key": ["PA", "PB", "PB"]}).to_parquet(scores, index=False)
    counts = run_counts(haven.settings, haven.engine, serving, scores, EXTRACTS)
    assert counts.scored == 2 and counts.linked_persons == 0
