"""Scoring out of core (issue #12): the pipeline types the linked rows into a DuckDB file a
batch at a time (memory bounded by a batch and DuckDB's limit, not by the population) and
must score exactly as the in-memory path it replaced: the same run, persons, probabilities,
tiers and reasons on the same inputs; its working copy never outlives the stage."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from governance import store
from pipeline import score as score_module
from pipeline.land import land
from pipeline.link import link
from pipeline.score import purpose_sources, score
from pipeline.serving import optouts_applied
from stratify.scoring import score as score_in_memory
from synth import generate

pytestmark = pytest.mark.parametrize("backend", [""])


@pytest.fixture(scope="module")
def extracts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dt.date]:
    out = tmp_path_factory.mktemp("synth")
    generate(600, 5, out, progress=False)
    meta = json.loads((out / "truth" / "meta.json").read_text())
    return out, dt.date.fromisoformat(meta["score_date"])


def test_out_of_core_scoring_equals_the_in_memory_path(haven, extracts, backend):
    folder, at = extracts
    assert all(r.status == "landed" for r in land(haven, folder))
    link(haven)
    # The in-memory path as it was: every linked row the purpose may use, as pandas frames.
    sources = purpose_sources(haven, "commissioning", optouts_applied(haven.engine))
    expected = score_in_memory(sources, at, seed=0)
    result = score(haven, at)
    got = pd.read_parquet(haven.settings.layout.run(result.run_id).scores)
    want = expected.scores
    assert result.persons == len(want) > 300
    assert list(got["person_key"]) == list(want["person_key"])
    np.testing.assert_allclose(got["probability"], want["probability"], rtol=0, atol=1e-12)
    assert list(got["tier"]) == list(want["tier"])
    assert list(got["reasons"]) == list(want["reasons"])
    assert list(got["conditions"]) == list(want["conditions"])
    assert list(got["gp_practice_code"].fillna("")) == list(want["gp_practice_code"].fillna(""))
    assert list(got["sources"]) == list(want["sources"])
    described = json.loads(haven.settings.layout.run(result.run_id).description.read_text())
    assert described["extract_ids"] == expected.extract_ids
    assert result.model == expected.model
    assert not any(haven.settings.layout.scratch_dir.iterdir())  # the working copy is gone


def test_the_working_copy_is_removed_when_scoring_fails(haven, extracts, backend, monkeypatch):
    folder, at = extracts
    land(haven, folder)
    link(haven)
    seen: list[bool] = []

    def failing(copy, *args, **kwargs):
        seen.extend((p / "sources.duckdb").exists()
                    for p in haven.settings.layout.scratch_dir.iterdir())
        raise RuntimeError("model failed")

    monkeypatch.setattr(score_module, "score_persons", failing)
    with pytest.raises(RuntimeError, match="model failed"):
        score(haven, at)
    assert seen == [True]  # it held the rows while it ran
    assert not any(haven.settings.layout.scratch_dir.iterdir())


def test_a_killed_stage_s_working_copy_is_removed_by_the_next(haven, backend):
    layout = haven.settings.layout
    dead = layout.scratch(2**22 + 12345, "abcd")  # no such process
    dead.mkdir(parents=True)
    (dead / "sources.duckdb").write_bytes(b"linked rows")
    alive = layout.scratch(os.getpid(), "efgh")
    alive.mkdir()
    stray = layout.scratch_dir / "not-a-workspace"
    stray.mkdir()
    assert store.scratch_workspaces(haven.settings) == 3
    assert store.clear_dead_scratch(haven.settings) == 2
    assert [p.name for p in layout.scratch_dir.iterdir()] == [alive.name]
    with store.scratch_workspace(haven.settings) as folder:
        assert folder.exists() and folder.parent == layout.scratch_dir
        assert alive.exists()  # a live process's workspace is never touched
    assert not folder.exists()


def test_the_model_report_judges_as_the_in_memory_path(haven, extracts, backend, monkeypatch):
    """The report reads the on-disk copy too: its evaluation (prospective here: the outcome
    year is in the data) and its back-test equal those made from frames in memory."""
    from factories import approve_candidates
    from pipeline import report as report_module
    from pipeline.linked_copy import linked_copy
    from pipeline.score import use_filter
    from stratify.backtest import backtest
    from stratify.evaluate import evaluate, follow_up
    from stratify.scoring import load_run

    folder, at = extracts
    land(haven, folder)
    link(haven)
    run_id = score(haven, at).run_id
    approve_candidates(haven.engine)
    written: dict[str, object] = {}
    real = report_module.write_report
    monkeypatch.setattr(report_module, "write_report", lambda evaluation, *a, **k: written.update(
        evaluation=evaluation) or real(evaluation, *a, **k))
    report_module.model_report(haven, run_id)
    got = written["evaluation"]
    sources = load_sources_now(haven, use_filter)
    run = load_run(haven.settings.layout.run(run_id))
    assert follow_up(sources, run.at).complete
    want = evaluate(run, sources)
    assert got.kind == want.kind == "prospective"
    pd.testing.assert_frame_equal(got.overall, want.overall, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(got.subgroups, want.subgroups, check_exact=False, rtol=1e-12)
    assert got.frame["outcome"].sum() == want.frame["outcome"].sum() > 0
    # The back-test, which trains and scores again a year earlier, on both.
    with linked_copy(haven, use_filter(haven, "commissioning",
                                       dt.datetime.now(dt.UTC).date())) as copy:
        on_disk = backtest(copy, run, leave_out=set())
    in_memory = backtest(sources, run, leave_out=set())
    pd.testing.assert_frame_equal(on_disk.overall, in_memory.overall, check_exact=False,
                                  rtol=1e-12)
    assert on_disk.frame["outcome"].sum() == in_memory.frame["outcome"].sum() > 0


def load_sources_now(haven, use_filter):
    from linkage.linked_view import load_sources

    return load_sources(haven.settings, haven.engine, row_filter=use_filter(
        haven, "commissioning", dt.datetime.now(dt.UTC).date()))


def test_linked_batches_read_the_map_a_window_at_a_time_and_give_every_row_its_key(
        haven, extracts, backend):
    """Small windows and batches (so a batch spans windows and windows are re-read) give
    exactly the rows and person keys the whole-extract join of `load_sources` gives."""
    from linkage.linked_view import linked_batches, load_sources

    folder, _ = extracts
    land(haven, folder)
    link(haven)
    whole = load_sources(haven.settings, haven.engine)
    got: dict[str, list[pd.DataFrame]] = {}
    for source, _, frame in linked_batches(haven.settings, haven.engine, batch_rows=70,
                                           window_rows=100,
                                           columns={"apc": ["admission_date"]}):
        got.setdefault(source, []).append(frame)
    assert set(got) == set(whole)
    for source, frames in got.items():
        batched = pd.concat(frames, ignore_index=True)
        cut = ["extract_id", "row", "person_key"]
        left = batched[cut].sort_values(cut[:2]).reset_index(drop=True)
        right = whole[source][cut].sort_values(cut[:2]).reset_index(drop=True)
        pd.testing.assert_frame_equal(left, right, check_dtype=False)
        if source == "apc":  # only the columns asked for, and what the filter needs
            assert set(batched.columns) == {"extract_id", "row", "person_id",
                                            "admission_date", "person_key", "sender"}
            assert len(batched) > 300  # several windows, batches across them


def test_linked_tables_keep_the_rows_linked_batches_keep_under_an_opt_out_filter(
        haven, extracts, backend):
    """The linked copy's Arrow reader asks the purpose filter once per person of a batch and
    spreads its verdict: it keeps exactly the rows the frames' reader keeps, with every
    column alike, opt-outs on rows with a pseudonym and on rows linked without one."""
    from linkage.linked_view import linked_batches, linked_tables
    from pipeline.score import use_filter

    folder, _ = extracts
    land(haven, folder)
    link(haven)
    asked: list[int] = []
    purpose = use_filter(haven, "commissioning", dt.datetime.now(dt.UTC).date())

    def counted(frame, source):
        asked.append(len(frame))
        return purpose(frame, source)

    def rows(reader, row_filter):
        got = {}
        for source, _, batch in reader(haven.settings, haven.engine, row_filter,
                                       batch_rows=90):
            frame = batch if isinstance(batch, pd.DataFrame) else batch.to_pandas()
            got.setdefault(source, []).append(frame)
        return {s: pd.concat(f, ignore_index=True).sort_values(["extract_id", "row"])
                .reset_index(drop=True) for s, f in got.items()}

    everything = rows(linked_batches, None)
    expected = rows(linked_batches, purpose)
    asked.clear()
    got = rows(linked_tables, counted)
    assert set(got) == set(expected)
    for source in expected:
        pd.testing.assert_frame_equal(got[source], expected[source])
    dropped = sum(len(everything[s]) - len(expected.get(s, [])) for s in everything)
    assert dropped > 0  # the synthetic opt-outs remove rows, so the filter is exercised
    bare = pd.concat([f[f["person_id"].isna()] for f in everything.values()
                      if "person_id" in f])
    kept_bare = pd.concat([f[f["person_id"].isna()] for f in expected.values()
                           if "person_id" in f])
    assert len(bare) > len(kept_bare) > 0  # rows without a pseudonym were judged too
    assert sum(asked) < sum(len(f) for f in everything.values())  # once per person, not row


def test_another_user_s_live_workspace_is_kept(tmp_path, monkeypatch, backend):
    """A workspace whose owner cannot be signalled (another user's live process) is live."""
    from governance.settings import Settings

    settings = Settings(home=tmp_path / "home")
    assert store.scratch_workspaces(settings) == 0  # no scratch folder yet
    assert store.clear_dead_scratch(settings) == 0
    theirs = settings.layout.scratch(4_000_000, "othr")
    theirs.mkdir(parents=True)

    def not_permitted(pid: int, signal: int) -> None:
        raise PermissionError(pid)

    monkeypatch.setattr(store.os, "kill", not_permitted)
    assert store.clear_dead_scratch(settings) == 0 and theirs.exists()
    assert store.scratch_workspaces(settings) == 1
