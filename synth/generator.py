"""`generate`: write a synthetic population's extracts, manifests and (apart) the ground truth.

Layout under `out`:
  <source>.csv + <source>.csv.manifest.json     one per source (social care: one per council)
  truth/rows.parquet     file, row (1-based data row), person, nhs_status, required_blank
  truth/persons.parquet  person-level truth incl. true_risk / observable_risk / outcome
  truth/meta.json        time frame, seed, persons, model constants
The pipeline must never read truth/: it exists for evaluation and tests only.

Persons are generated a chunk at a time (`generate(..., chunk=)`, default DEFAULT_CHUNK): each
chunk is drawn, rendered and appended to the files above, then dropped, so peak memory follows
the chunk, not the population (at most a few bytes per person are population-wide: the NHS
numbers, allocated once, and each council's used client ids).
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
DEFAULT_CHUNK = 200_000     # persons drawn and held at once (see generate)
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


class _Extracts:
    """The CSV files of one run, each opened once and appended to chunk by chunk: the header
    when a file is first met, then each chunk's rows; row counts and SHA-256 carry across
    chunks, and `close` writes each file's manifest."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.open: dict[str, tuple[Any, _HashingSink, Extract]] = {}
        self.rows: dict[str, int] = {}

    def append(self, extract: Extract) -> int:
        """Write the extract's rows after those already in its file; return how many rows
        the file held before them."""
        names = COLUMNS[extract.source]
        if list(extract.columns) != list(names):
            raise AssertionError(f"{extract.file}: columns {list(extract.columns)} != contract")
        if extract.file not in self.open:
            handle = (self.out / extract.file).open("wb")
            sink = _HashingSink(handle)
            sink.write((",".join(names) + "\n").encode("utf-8"))
            self.open[extract.file] = (handle, sink, extract)
            self.rows[extract.file] = 0
        _, sink, _ = self.open[extract.file]
        table = pa.table({k: extract.columns[k] for k in names})
        if table.num_rows:
            pacsv.write_csv(table, pa.PythonFile(sink, mode="w"), _CSV)
        before = self.rows[extract.file]
        self.rows[extract.file] = before + extract.rows
        return before

    def files(self) -> list[str]:
        """The files written so far, in the order first met."""
        return list(self.open)

    def abort(self) -> None:
        """Close every file without a manifest (a run that failed part way): landing refuses
        a file without one, so a partial file cannot pass for a whole one."""
        for handle, _, _ in self.open.values():
            handle.close()
        self.open = {}

    def close(self) -> list[dict[str, Any]]:
        """Close every file and write its manifest; return the files' summaries."""
        summaries = []
        for file, (handle, sink, first) in self.open.items():
            handle.close()
            manifest = {"source": first.source, "sender": first.sender,
                        "period_start": _iso(HISTORY_START), "period_end": _iso(PERIOD_END),
                        "sha256": sink.digest.hexdigest(), "rows": self.rows[file]}
            (self.out / f"{file}.manifest.json").write_text(json.dumps(manifest, indent=2)
                                                            + "\n", encoding="utf-8")
            summaries.append({"file": file, **manifest})
        self.open = {}
        return summaries


class _Truth:
    """truth/rows.parquet and truth/persons.parquet, appended to a chunk at a time."""

    def __init__(self, truth: Path) -> None:
        self.truth = truth
        self.writers: dict[str, pq.ParquetWriter] = {}

    def append(self, name: str, table: pa.Table) -> None:
        """Add a chunk's table to truth file `name` (opened with its schema when first met)."""
        if name not in self.writers:
            self.writers[name] = pq.ParquetWriter(self.truth / name, table.schema)
        self.writers[name].write_table(table)

    def close(self) -> None:
        """Finish every truth file (footers written)."""
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def _persons_truth(pop: Population, apc_rows: activity.Rows, first: int = 0) -> pa.Table:
    """Person-level truth for a chunk of persons whose ids start at `first`."""
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
        "person": pa.array(first + np.arange(pop.n, dtype=np.int64)),
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


def _rows_truth(written: list[tuple[Extract, int]], first: int = 0) -> pa.Table:
    """Row-level truth for a chunk's extracts: each with the number of rows its file held
    before them; persons' ids start at `first`."""
    files = pa.array([e.file for e, _ in written], type=pa.string())
    file_idx = np.concatenate([np.full(e.rows, i, dtype=np.int16)
                               for i, (e, _) in enumerate(written)])
    row = np.concatenate([before + np.arange(1, e.rows + 1, dtype=np.int64)
                          for e, before in written])
    person = np.concatenate([first + e.person.astype(np.int64) for e, _ in written])
    status = np.concatenate([e.nhs_status.astype(np.int8) for e, _ in written])
    blank = np.concatenate([e.required_blank.astype(bool) for e, _ in written])
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

    def set_total(self, total: int) -> None:
        """How many steps the whole run takes (known once the plan is)."""
        self.total = total
        if self.progress is not None:
            self.progress.update(self.task, total=total)

    def step(self, description: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=description)

    def done(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)


def chunk_sizes(persons: int, chunk: int) -> list[int]:
    """Split `persons` into as few chunks of at most `chunk` persons as will do, as even as
    possible (no tiny last chunk)."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 person, not {chunk}")
    count = -(-persons // chunk)
    return [persons // count + (1 if i < persons % count else 0) for i in range(count)]


def generate(persons: int, seed: int, out: Path, progress: bool = True,
             persistent: float = population.S_U, chunk: int = DEFAULT_CHUNK) -> dict[str, Any]:
    """Write a synthetic population's extracts and truth under `out`; return a summary.

    Deterministic: the same (persons, seed, persistent, chunk) gives byte-identical files.
    `persistent`: the spread S_U of the lasting person-level effect on emergency admissions
    (population.build's `s_u`; the default makes the standard population).

    `chunk`: at most this many persons are drawn, rendered and held in memory at once, so
    that peak memory is bounded by the chunk, not the population. Persons are split into
    even chunks; each chunk is drawn on random streams of its own (`population.stream_rng`)
    and its rows are appended to the files, so a file is ordered within each chunk (by date,
    say) and chunk after chunk. What is population-wide stays so: NHS numbers are allocated
    once for everyone, row ids and council client ids continue across chunks, row counts and
    digests cover whole files, truth/ covers everyone. A population of at most `chunk`
    persons is one chunk and gets exactly the files it always did; a larger one is
    statistically the same population, but its draws depend on how it is chunked.
    """
    if persons < 1:
        raise ValueError("persons must be at least 1")
    if persons > nhs.capacity():
        raise ValueError(f"at most {nhs.capacity()} persons: the never-issued NHS number range "
                         f"(990-999) holds no more valid numbers")
    sizes = chunk_sizes(persons, chunk)
    out = Path(out)
    started = time.perf_counter()
    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    numbers = nhs.allocate(persons, population.stream_rng(seed, 2))
    across = extracts.Across()
    files = _Extracts(out)
    truth = _Truth(truth_dir)
    timings: dict[str, float] = {}
    steps = _Steps(0, progress)
    first = 0
    try:
        with steps.running():
            for part, size in enumerate(sizes):
                label = f" ({part + 1}/{len(sizes)})" if len(sizes) > 1 else ""
                _chunk(seed, persistent, part, first, numbers[first:first + size], across,
                       files, truth, steps, label, timings, len(sizes))
                first += size
    except BaseException:
        files.abort()         # no manifest may vouch for a file cut short
        raise
    finally:
        truth.close()
    summaries = files.close()
    _write_meta(truth_dir, seed, persons, persistent, files=[s["file"] for s in summaries])
    return {
        "out": str(out), "persons": persons, "seed": seed,
        "history_start": _iso(HISTORY_START), "score_date": _iso(SCORE_DATE),
        "period_end": _iso(PERIOD_END),
        "files": summaries,
        "rows": int(sum(s["rows"] for s in summaries)),
        "chunks": len(sizes),
        "truth": {"dir": str(truth_dir), "rows": str(truth_dir / "rows.parquet"),
                  "persons": str(truth_dir / "persons.parquet"),
                  "meta": str(truth_dir / "meta.json")},
        "seconds": round(time.perf_counter() - started, 2),
        "step_seconds": {k: round(v, 2) for k, v in timings.items()},
    }


def _chunk(seed: int, persistent: float, part: int, first: int, numbers: np.ndarray,
           across: extracts.Across, files: _Extracts, truth: _Truth, steps: _Steps,
           label: str, timings: dict[str, float], chunks: int) -> None:
    """Draw one chunk of persons (ids from `first`), append its rows to the files and its
    truth to truth/; nothing of it is kept afterwards."""
    written: list[tuple[Extract, int]] = []
    state: dict[str, Any] = {}

    def emit(*made: Extract) -> None:
        for e in made:
            before = files.append(e)
            # keep only what the truth needs
            e.columns = {}
            written.append((e, before))

    def chunk_extracts() -> list[Extract]:
        return [e for e, _ in written]

    plan: list[tuple[str, Callable[[], None]]] = [
        ("population and latent risk", lambda: state.update(
            pop=population.build(numbers.size, seed, s_u=persistent, part=part,
                                 numbers=numbers))),
        ("person tendencies", lambda: state.update(
            effects=activity.person_effects(state["pop"], seed))),
        ("hospital spells", lambda: state.update(
            spells=activity.spells(state["pop"], state["effects"], seed))),
        ("apc", lambda: emit(extracts.apc(state["pop"], state["spells"], seed, across))),
        ("ae", lambda: emit(extracts.ae(state["pop"], activity.attendances(
            state["pop"], state["effects"], state["spells"], seed), seed, across))),
        ("op", lambda: emit(extracts.op(state["pop"], activity.appointments(
            state["pop"], state["effects"], state["spells"], seed), seed, across))),
        ("community", lambda: emit(extracts.community(state["pop"], activity.community(
            state["pop"], state["effects"], state["spells"], seed), seed, across))),
        ("social care", lambda: state.update(
            social=activity.social_care(state["pop"], state["spells"], seed))),
        ("social_care files", lambda: emit(*extracts.social_care(
            state["pop"], state.pop("social"), seed, across))),
        ("gp_patients", lambda: emit(extracts.gp_patients(state["pop"], seed))),
        ("gp_events", lambda: emit(extracts.gp_events(state["pop"], primary.gp_events(
            state["pop"], seed), seed))),
        ("gp_medications", lambda: emit(extracts.gp_medications(
            state["pop"], primary.gp_medications(state["pop"], seed), seed))),
        ("deaths", lambda: emit(extracts.deaths(state["pop"], primary.deaths(state["pop"]),
                                                seed))),
        ("optouts", lambda: emit(*extracts.optouts(state["pop"], primary.optouts(
            state["pop"], _sent_social_care(chunk_extracts()), seed), seed,
            _council_of(chunk_extracts())))),
        ("truth", lambda: (truth.append("rows.parquet", _rows_truth(written, first)),
                           truth.append("persons.parquet", _persons_truth(
                               state["pop"], state["spells"], first)))),
    ]
    if steps.total == 0:
        steps.set_total(len(plan) * chunks)
    for description, action in plan:
        steps.step(description + label)
        began = time.perf_counter()
        action()
        timings[description] = timings.get(description, 0.0) + time.perf_counter() - began
        steps.done()


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


def _write_meta(truth: Path, seed: int, persons: int, s_u: float, files: list[str]) -> None:
    """truth/meta.json: the time frame, seed, size, model constants and files of the run."""
    meta = {
        "history_start": _iso(HISTORY_START), "score_date": _iso(SCORE_DATE),
        "period_end": _iso(PERIOD_END), "seed": seed, "persons": persons,
        "outcome": "emergency_in_outcome_year: >= 1 apc spell with an emergency admission "
                   "method admitted from score_date to period_end",
        "model": {"B0": population.B0, "B_F": population.B_F, "S_U": s_u,
                  "S_V": population.S_V, "D_U": population.D_U, "P_HOSP": population.P_HOSP},
        "files": files,
    }
    (truth / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
