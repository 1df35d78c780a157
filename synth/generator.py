"""`generate`: write a synthetic population's extracts, manifests and (apart) the ground truth.

Layout under `out`:
  <source>.csv + <source>.csv.manifest.json     one per source (social care: one per council)
  truth/rows.parquet     file, row (1-based data row), person, nhs_status, required_blank
  truth/persons.parquet  person-level truth incl. true_risk / observable_risk / outcome
  truth/meta.json        time frame, seed, persons, model constants
The pipeline must never read truth/: it exists for evaluation and tests only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from synth import activity, extracts, nhs, population, primary
from synth.extracts import COLUMNS, Extract
from synth.population import (
    HISTORY_START,
    NEVER,
    PERIOD_END,
    SCORE_DATE,
    Population,
)

NHS_STATUS = ("valid", "missing", "invalid")   # as landing names them
_CSV = pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 16)


def _iso(day_number: int) -> str:
    return str(np.datetime64(int(day_number), "D"))


class _HashingSink:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.closed = False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.closed = True


def write_extract(out: Path, extract: Extract) -> dict[str, Any]:
    """Write one CSV (header + text rows, blanks empty) and its manifest; return its summary."""
    names = COLUMNS[extract.source]
    if list(extract.columns) != list(names):
        raise AssertionError(f"{extract.file}: columns {list(extract.columns)} != contract")
    table = pa.table({k: extract.columns[k] for k in names})
    path = out / extract.file
    with path.open("wb") as handle:
        sink = _HashingSink(handle)
        sink.write((",".join(names) + "\n").encode("utf-8"))
        if table.num_rows:
            pacsv.write_csv(table, pa.PythonFile(sink, mode="w"), _CSV)
    manifest = {"source": extract.source, "sender": extract.sender,
                "period_start": _iso(HISTORY_START), "period_end": _iso(PERIOD_END),
                "sha256": sink.digest.hexdigest(), "rows": extract.rows}
    (out / f"{extract.file}.manifest.json").write_text(json.dumps(manifest, indent=2) + "\n",
                                                       encoding="utf-8")
    return {"file": extract.file, **manifest}


def _persons_truth(pop: Population, apc_rows: activity.Rows) -> pa.Table:
    kind, day, person = apc_rows["kind"], apc_rows["day"], apc_rows["person"]
    emergency = kind == activity.KIND_EMERGENCY
    outcome = np.zeros(pop.n, dtype=bool)
    outcome[person[emergency & (day >= SCORE_DATE) & (day <= PERIOD_END)]] = True
    history = np.bincount(person[emergency & (day < SCORE_DATE)], minlength=pop.n)
    died = pop.death_day < NEVER
    alive = pop.death_t > SCORE_DATE
    sex = np.array(["0", "1", "2"], dtype=object)[pop.sex]
    practice = np.array([p.code for p in population.PRACTICES], dtype=object)[pop.practice]
    return pa.table({
        "person": pa.array(np.arange(pop.n, dtype=np.int64)),
        "sex": pa.array(sex.tolist(), type=pa.string()),
        "date_of_birth": pa.array(pop.dob.astype(np.int32)).cast(pa.date32()),
        "nhs_number": pa.array(pop.nhs).cast(pa.string()),
        "practice": pa.array(practice.tolist(), type=pa.string()),
        "deprivation_quintile": pa.array(pop.dep.astype(np.int8)),
        "true_risk": pa.array(pop.true_risk),
        "observable_risk": pa.array(pop.observable_risk),
        "emergency_in_outcome_year": pa.array(outcome),
        "died": pa.array(died),
        "date_of_death": pa.array(pop.death_day.astype(np.int32), mask=~died).cast(
            pa.date32()),
        "alive_at_score_date": pa.array(alive),
        "age_at_score_date": pa.array((SCORE_DATE - pop.dob) / population.DAYS_PER_YEAR),
        "frailty_at_score_date": pa.array(pop.frailty[:, 3]),
        "conditions_at_score_date": pa.array((pop.onset < SCORE_DATE).sum(axis=1).astype(
            np.int8)),
        "emergency_admissions_history": pa.array(history.astype(np.int32)),
        "moved": pa.array(pop.move_day < NEVER),
    })


def _rows_truth(written: list[Extract]) -> pa.Table:
    files = pa.array([e.file for e in written], type=pa.string())
    file_idx = np.concatenate([np.full(e.rows, i, dtype=np.int16)
                               for i, e in enumerate(written)])
    row = np.concatenate([np.arange(1, e.rows + 1, dtype=np.int64) for e in written])
    person = np.concatenate([e.person.astype(np.int64) for e in written])
    status = np.concatenate([e.nhs_status.astype(np.int8) for e in written])
    blank = np.concatenate([e.required_blank.astype(bool) for e in written])
    return pa.table({
        "file": pa.DictionaryArray.from_arrays(pa.array(file_idx), files),
        "row": pa.array(row),
        "person": pa.array(person),
        "nhs_status": pa.DictionaryArray.from_arrays(pa.array(status),
                                                     pa.array(list(NHS_STATUS))),
        "required_blank": pa.array(blank),
    })


class _Steps:
    """Progress reporting with rich (or nothing when quiet)."""

    def __init__(self, total: int, show: bool) -> None:
        self.total, self.show = total, show
        self.progress: Any = None
        self.task: Any = None

    @contextlib.contextmanager
    def running(self) -> Iterator[_Steps]:
        if not self.show:
            yield self
            return
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        with Progress(SpinnerColumn(), TextColumn("{task.description:<34}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                      transient=False) as progress:
            self.progress = progress
            self.task = progress.add_task("synth", total=self.total)
            yield self

    def step(self, description: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=description)

    def done(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)


def generate(persons: int, seed: int, out: Path, progress: bool = True,
             persistent: float = population.S_U) -> dict[str, Any]:
    """Write a synthetic population's extracts and truth under `out`; return a summary.

    Deterministic: the same (persons, seed, persistent) gives byte-identical files.
    `persistent`: the spread S_U of the lasting person-level effect on emergency admissions
    (population.build's `s_u`; the default makes the standard population).
    """
    if persons < 1:
        raise ValueError("persons must be at least 1")
    if persons > nhs.capacity():
        raise ValueError(f"at most {nhs.capacity()} persons: the never-issued NHS number range "
                         f"(990-999) holds no more valid numbers")
    out = Path(out)
    started = time.perf_counter()
    (out / "truth").mkdir(parents=True, exist_ok=True)
    written: list[Extract] = []
    summaries: list[dict[str, Any]] = []
    steps = _Steps(15, progress)
    state: dict[str, Any] = {}

    def emit(*made: Extract) -> None:
        for e in made:
            summaries.append(write_extract(out, e))
            # keep only what the truth needs
            e.columns = {}
            written.append(e)

    plan: list[tuple[str, Callable[[], None]]] = [
        ("population and latent risk", lambda: state.update(
            pop=population.build(persons, seed, s_u=persistent))),
        ("person tendencies", lambda: state.update(
            effects=activity.person_effects(state["pop"], seed))),
        ("hospital spells", lambda: state.update(
            spells=activity.spells(state["pop"], state["effects"], seed))),
        ("apc", lambda: emit(extracts.apc(state["pop"], state["spells"], seed))),
        ("ae", lambda: emit(extracts.ae(state["pop"], activity.attendances(
            state["pop"], state["effects"], state["spells"], seed), seed))),
        ("op", lambda: emit(extracts.op(state["pop"], activity.appointments(
            state["pop"], state["effects"], state["spells"], seed), seed))),
        ("community", lambda: emit(extracts.community(state["pop"], activity.community(
            state["pop"], state["effects"], state["spells"], seed), seed))),
        ("social care", lambda: state.update(
            social=activity.social_care(state["pop"], state["spells"], seed))),
        ("social_care files", lambda: emit(*extracts.social_care(state["pop"],
                                                                 state["social"], seed))),
        ("gp_patients", lambda: emit(extracts.gp_patients(state["pop"], seed))),
        ("gp_events", lambda: emit(extracts.gp_events(state["pop"], primary.gp_events(
            state["pop"], seed), seed))),
        ("gp_medications", lambda: emit(extracts.gp_medications(
            state["pop"], primary.gp_medications(state["pop"], seed), seed))),
        ("deaths", lambda: emit(extracts.deaths(state["pop"], primary.deaths(state["pop"]),
                                                seed))),
        ("optouts", lambda: emit(*extracts.optouts(state["pop"], primary.optouts(
            state["pop"], _sent_social_care(written), seed), seed,
            _council_of(written)))),
        ("truth", lambda: _write_truth(out, state["pop"], state["spells"], written, seed)),
    ]
    steps.total = len(plan)
    timings: dict[str, float] = {}
    with steps.running():
        for description, action in plan:
            steps.step(description)
            began = time.perf_counter()
            action()
            timings[description] = round(time.perf_counter() - began, 2)
            steps.done()
    truth = out / "truth"
    return {
        "out": str(out), "persons": persons, "seed": seed,
        "history_start": _iso(HISTORY_START), "score_date": _iso(SCORE_DATE),
        "period_end": _iso(PERIOD_END),
        "files": summaries,
        "rows": int(sum(s["rows"] for s in summaries)),
        "truth": {"dir": str(truth), "rows": str(truth / "rows.parquet"),
                  "persons": str(truth / "persons.parquet"), "meta": str(truth / "meta.json")},
        "seconds": round(time.perf_counter() - started, 2),
        "step_seconds": timings,
    }


def _sent_social_care(written: list[Extract]) -> np.ndarray:
    """People who appear in a council's social care file (they can withdraw consent)."""
    people = [e.person for e in written if e.source == "social_care"]
    return np.concatenate(people) if people else np.zeros(0, dtype=np.int64)


def _council_of(written: list[Extract]) -> dict[int, str]:
    """The council whose social care file first holds each person (who withdraws consent
    from it)."""
    out: dict[int, str] = {}
    for e in written:
        if e.source == "social_care":
            for person in np.unique(e.person).tolist():
                out.setdefault(int(person), e.sender)
    return out


def _write_truth(out: Path, pop: Population, spells: activity.Rows, written: list[Extract],
                 seed: int) -> None:
    truth = out / "truth"
    pq.write_table(_rows_truth(written), truth / "rows.parquet")
    pq.write_table(_persons_truth(pop, spells), truth / "persons.parquet")
    meta = {
        "history_start": _iso(HISTORY_START), "score_date": _iso(SCORE_DATE),
        "period_end": _iso(PERIOD_END), "seed": seed, "persons": pop.n,
        "outcome": "emergency_in_outcome_year: >= 1 apc spell with an emergency admission "
                   "method admitted from score_date to period_end",
        "model": {"B0": population.B0, "B_F": population.B_F, "S_U": pop.s_u,
                  "S_V": population.S_V, "D_U": population.D_U, "P_HOSP": population.P_HOSP},
        "files": [e.file for e in written],
    }
    (truth / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
