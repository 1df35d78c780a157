"""Score run ids are never reused (red-team finding R2): a run of another purpose, model or
set of opt-outs gets an id of its own, a complete run is never rewritten, and a re-score of
the same inputs returns the run already made without touching a file."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from factories import approve_candidates, nhs_numbers, write_extract
from governance import audit
from governance.audit import holds_identifier
from governance.reidentify import normalise
from governance.schema import runs
from pipeline import score as score_module
from pipeline.land import land
from pipeline.link import link
from pipeline.score import score
from pipeline.serving import optouts_applied, serving_run
from synth import generate

pytestmark = pytest.mark.parametrize("backend", [""])  # the pipeline on SQLite, seconds


@pytest.fixture(scope="module")
def extracts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dt.date]:
    """400 synthetic persons' extracts (made once) and their score date."""
    out = tmp_path_factory.mktemp("synth")
    generate(400, 2, out, progress=False)
    meta = json.loads((out / "truth" / "meta.json").read_text())
    return out, dt.date.fromisoformat(meta["score_date"])


@pytest.fixture
def landed(haven, extracts):
    """A Haven with the extracts landed and linked; returns the score date."""
    folder, at = extracts
    assert all(r.status == "landed" for r in land(haven, folder))
    link(haven)
    return at


def run_files(haven) -> dict[str, tuple[bytes, int]]:
    """Every file under runs/ and staging-runs/: its bytes and modification time."""
    layout = haven.settings.layout
    found = {}
    for root in (layout.runs_dir, layout.run_staging_dir):
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.is_file():
                found[str(path.relative_to(haven.settings.home))] = (
                    path.read_bytes(), path.stat().st_mtime_ns)
    return found


def run_rows(haven) -> int:
    """How many score runs have a row (complete or not)."""
    with haven.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(runs).where(
            runs.c.kind == "score")))


def test_a_case_finding_run_never_replaces_the_commissioning_run(haven, landed) -> None:
    """The finding: a case-finding job (or one with another model) had the commissioning
    run's id and overwrote its folder and row. Each now has its own id; the approved
    commissioning run keeps serving and its files are unchanged, byte for byte."""
    first = score(haven, landed, purpose="commissioning")
    approve_candidates(haven.engine)
    before = run_files(haven)
    mine = {k: v for k, v in before.items() if f"/{first.run_id}/" in f"/{k}"}
    assert mine and all(k.startswith("runs/") for k in mine)
    other = score(haven, landed, purpose="case_finding")
    chosen = json.loads(haven.settings.layout.run(first.run_id).description.read_text())
    another = next(m for m in ("rule", "logistic", "boosting") if m != first.model)
    third = score(haven, landed, purpose="commissioning", model=another)
    assert chosen["run_id"] == first.run_id  # the file says the id it is filed under
    assert len({first.run_id, other.run_id, third.run_id}) == 3
    assert not any(r.already_scored for r in (first, other, third))
    assert third.model_status == "candidate"  # another model: waits for approval
    serving = serving_run(haven.engine, "commissioning")
    assert serving is not None and serving.run_id == first.run_id
    after = run_files(haven)
    assert {k: after[k] for k in mine} == mine  # byte for byte, not even rewritten
    assert run_rows(haven) == 3
    for found in (first, other, third):
        assert found.run_id.startswith(f"score-{landed.isoformat()}-")
        assert not holds_identifier(found.run_id) and len(found.run_id) <= 40


def test_rescoring_the_same_inputs_returns_the_existing_run_and_touches_nothing(
        haven, landed) -> None:
    """Promise: a complete run is never rewritten; the same inputs give the same id, and
    the run already made is returned ("already scored") with no file or row changed."""
    first = score(haven, landed)
    approve_candidates(haven.engine)
    before, rows = run_files(haven), run_rows(haven)
    said: list[str] = []
    again = score(haven, landed, progress=said.append)
    assert again.already_scored and again.run_id == first.run_id
    assert (again.persons, again.model, again.model_id, again.tiers) == (
        first.persons, first.model, first.model_id, first.tiers)
    assert again.model_status == "approved"  # its model was approved since
    assert any(line.startswith(f"already scored: run {first.run_id}") for line in said)
    assert run_files(haven) == before and run_rows(haven) == rows


def test_an_optout_between_two_runs_gives_a_new_id(haven, landed, extracts,
                                                   tmp_path: Path) -> None:
    """Opt-outs applied are part of the id: a run after a new opt-out register extract is a
    new run beside the first, which stays as it was."""
    first = score(haven, landed)
    before = run_files(haven)
    # 999-range numbers no one in the extracts holds: the rows read stay the same, so only
    # the opt-outs applied (a new register extract) differ between the two runs.
    patients = set(pd.read_csv(extracts[0] / "gp_patients.csv", dtype=str)["nhs_number"].map(
        normalise))
    numbers = [n for n in nhs_numbers(20, seed=97) if n not in patients][:3]
    assert len(numbers) == 3
    path = write_extract(tmp_path / "optouts", "optouts", [
        {"nhs_number": n, "optout_type": "type1", "effective_date": "2024-01-01",
         "withdrawn": "N"} for n in numbers], sender="X26")
    assert [r.status for r in land(haven, path)] == ["landed"]
    second = score(haven, landed)
    assert second.run_id != first.run_id and not second.already_scored
    recorded = json.loads(json.dumps(optouts_applied(haven.engine)))
    with haven.engine.connect() as connection:
        summary = connection.scalar(select(runs.c.summary).where(
            runs.c.run_id == second.run_id))
    assert summary["optouts"] == recorded and summary["optouts"]["register"]
    after = run_files(haven)
    assert {k: after[k] for k in before} == before


def test_a_failed_run_leaves_no_row_and_no_half_folder(haven, landed,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose row cannot be recorded leaves nothing: no folder in runs/, nothing in
    staging, no row; the next attempt scores the run whole."""
    def broken(*args, **kwargs):
        raise RuntimeError("audit unavailable")

    monkeypatch.setattr(audit, "record", broken)
    with pytest.raises(RuntimeError, match="audit unavailable"):
        score(haven, landed)
    assert run_files(haven) == {} and run_rows(haven) == 0
    monkeypatch.undo()
    made = score(haven, landed)
    assert not made.already_scored and haven.settings.layout.run(made.run_id).scores.exists()
    assert not any(haven.settings.layout.run_staging_dir.iterdir())


def test_a_row_committed_before_the_move_is_finished_on_the_next_score(
        haven, landed, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the move into runs/ fails (or the process stops) after the row commits, the next
    score of the same inputs moves the staged run into place (and does not score again)."""
    real = score_module._publish
    monkeypatch.setattr(score_module, "_publish", lambda ctx, wanted: (_ for _ in ()).throw(
        OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        score(haven, landed)
    [staged] = list(haven.settings.layout.run_staging_dir.iterdir())
    monkeypatch.setattr(score_module, "_publish", real)
    again = score(haven, landed)
    assert again.already_scored and again.run_id == staged.name
    assert haven.settings.layout.run(again.run_id).scores.exists() and not staged.exists()


def test_a_void_run_id_is_never_rewritten(haven, landed) -> None:
    """A run voided by destruction keeps its id: scoring the same inputs again refuses."""
    first = score(haven, landed)
    with haven.engine.begin() as connection:
        connection.execute(runs.update().where(runs.c.run_id == first.run_id).values(
            status="void"))
    with pytest.raises(score_module.RunIdTaken, match="status void"):
        score(haven, landed)
