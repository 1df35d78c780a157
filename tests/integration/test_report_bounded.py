"""The model report's back-test in bounded memory (issue #12): on the stage's on-disk copy its
scores are written a batch at a time and only the columns the evaluation reads come back; the
evaluation must be exactly the one made from the whole population's scores kept in memory
(which also has every column the evaluation could read: one left out of the read-back fails)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

import stratify.backtest as backtest_module
import stratify.scoring as scoring_module
from pipeline.land import land
from pipeline.link import link
from pipeline.linked_copy import linked_copy
from pipeline.score import use_filter
from stratify.backtest import backtest
from stratify.evaluate import Evaluation
from stratify.scoring import score
from synth import generate


@pytest.fixture(scope="module")
def extracts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dt.date]:
    out = tmp_path_factory.mktemp("synth")
    generate(600, 7, out, progress=False)
    meta = json.loads((out / "truth" / "meta.json").read_text())
    return out, dt.date.fromisoformat(meta["score_date"])


class _NotACopy:
    """Stands in for `OnDisk` in `backtest`'s check, so it keeps its scores in memory."""


def assert_same_evaluation(got: Evaluation, want: Evaluation) -> None:
    """Every figure and person-level value of two evaluations equal, exactly."""
    for name in ("overall", "subgroups", "error_rates", "bootstrap", "differences", "frame"):
        pd.testing.assert_frame_equal(getattr(got, name), getattr(want, name),
                                      check_exact=True, obj=name)
    assert got.calibration.keys() == want.calibration.keys()
    for model, curve in got.calibration.items():
        pd.testing.assert_frame_equal(curve, want.calibration[model], check_exact=True)
    assert (got.notes, got.kind, got.at, got.judged_at) == (want.notes, want.kind, want.at,
                                                            want.judged_at)


@pytest.mark.parametrize("backend", [""])
def test_a_backtest_written_in_batches_judges_as_the_scores_kept_in_memory(
        haven, extracts, backend, monkeypatch):
    folder, at = extracts
    land(haven, folder)
    link(haven)
    monkeypatch.setattr(scoring_module, "SCORE_BATCH", 97)  # several parts, a short last one
    keep = use_filter(haven, "commissioning", dt.datetime.now(dt.UTC).date())
    with linked_copy(haven, keep) as copy:
        run = score(copy, at, seed=3)
        assert run.persons > 3 * 97
        left_out = set(run.scores["person_key"].iloc[::9])  # a release holds some back
        batched = backtest(copy, run, resamples=30, leave_out=left_out)
        assert sorted(p.name for p in copy.folder.iterdir() if p.suffix == ".parquet") == []
        monkeypatch.setattr(backtest_module, "OnDisk", _NotACopy)
        kept = backtest(copy, run, resamples=30, leave_out=left_out)
    assert batched.kind == "backtest" and len(batched.frame) > 200
    assert not set(batched.frame.index) & left_out
    assert_same_evaluation(batched, kept)



@pytest.mark.parametrize("backend", [""])
def test_the_report_of_a_run_without_its_outcome_year_is_the_in_memory_one(
        haven, extracts, backend, monkeypatch, tmp_path):
    """`haven model report` on a run whose outcome year is not in the data: the back-test
    in batches (and the run's rows let go meanwhile) writes the same report, byte for byte,
    and the same figures as the back-test keeping its scores in memory."""
    from pipeline.report import model_report
    from pipeline.score import score as score_stage

    folder, at = extracts
    land(haven, folder)
    link(haven)
    end = dt.date(at.year + 1, at.month, at.day)  # the data end before this run's year
    monkeypatch.setattr(scoring_module, "SCORE_BATCH", 113)
    run_id = score_stage(haven, end).run_id
    said: list[str] = []
    batched = model_report(haven, run_id, tmp_path / "batched", progress=said.append)
    assert "## Back-test evaluation" in batched.read_text()
    # it tells each step of the back-test as it goes: its training, scoring and judging
    steps = ["is not complete: back-testing", "training: features at", "chosen; fitting",
             "predicted", "tiered and explained", "  outcomes of", "  figures of",
             "bootstrap of", "writing the report"]
    at = [next(i for i, line in enumerate(said) if step in line) for step in steps]
    assert at == sorted(at)
    monkeypatch.setattr(backtest_module, "OnDisk", _NotACopy)
    kept = model_report(haven, run_id, tmp_path / "kept")
    assert batched.read_text() == kept.read_text()
    for name in ("evaluation.json", "roc_calibration.png", "subgroup_auroc.png"):
        assert (batched.parent / name).read_bytes() == (kept.parent / name).read_bytes()


@pytest.mark.parametrize("backend", [""])
def test_the_linked_copy_reopened_every_few_rows_holds_the_same_rows(
        haven, extracts, backend, monkeypatch):
    """The copy's connection closed and opened again every 50 rows (its rows written to the
    file, DuckDB's memory of them freed) holds every row the copy made through one
    connection holds, typed alike, and scores them alike."""
    import duckdb

    import pipeline.linked_copy as copy_module
    from stratify.sources import COLUMNS

    folder, at = extracts
    land(haven, folder)
    link(haven)
    keep = use_filter(haven, "commissioning", dt.datetime.now(dt.UTC).date())
    made: dict[int, tuple[dict[str, pd.DataFrame], pd.DataFrame, int]] = {}
    opened = []
    real = copy_module.connect_on_disk
    monkeypatch.setattr(copy_module, "connect_on_disk",
                        lambda *a, **k: opened.append(k.get("create", True)) or real(*a, **k))
    for reopen in (10**9, 50):
        monkeypatch.setattr(copy_module, "REOPEN_ROWS", reopen)
        opened.clear()
        with linked_copy(haven, keep) as copy:
            con = duckdb.connect(str(copy.folder / "sources.duckdb"), read_only=True)
            try:
                tables = {name: con.execute(f"SELECT * FROM v_{name} ORDER BY ALL").df()
                          for name in COLUMNS}
            finally:
                con.close()
            scores = score(copy, at, seed=1).scores
        made[reopen] = tables, scores, len(opened)
    (whole, whole_scores, once), (parts, part_scores, reopened) = made.values()
    assert once == 1 and reopened >= 5  # reopened indeed (after each batch of rows)
    assert sum(len(frame) for frame in whole.values()) > 10_000
    for name, frame in whole.items():
        pd.testing.assert_frame_equal(parts[name], frame, check_exact=True, obj=name)
    pd.testing.assert_frame_equal(part_scores, whole_scores, check_exact=True)


def test_the_purpose_filter_hands_back_what_reading_the_map_freed(tmp_path, monkeypatch):
    """`use_filter` reads the link map (the pseudonyms behind rows without one of their own)
    and then hands Arrow's freed pages back, before the stage makes its linked copy on top."""
    import pipeline.score as score_module
    from governance.settings import Settings
    from pipeline.context import Context

    calls: list[str] = []

    class Pool:
        def release_unused(self) -> None:
            calls.append("released")

    def pairs(settings):
        calls.append("map read")
        return pd.DataFrame({"person_key": [], "person_id": []}, dtype=object)

    monkeypatch.setattr(score_module, "pseudonyms_behind_bare_rows", pairs)
    monkeypatch.setattr(score_module.pa, "default_memory_pool", lambda: Pool())
    ctx = Context(Settings(home=tmp_path / "home"))
    try:
        score_module.use_filter(ctx, "commissioning", dt.date(2025, 4, 1))
    finally:
        ctx.close()
    assert calls == ["map read", "released"]
