"""A score run: train, score everyone registered at `at`, tier, explain, compare with last run.

`score(sources, at)` returns a `ScoreRun`; `save_run`/`load_run` write and read it as
`scores.parquet` (layout in docs/landed-schema.md, "Score runs"), `candidates.parquet` (each
candidate model's probability, for evaluation), `run.json` (metadata, thresholds, extract ids,
metrics) and `model.joblib` (the fitted models, calibrators and feature list).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from governance.layout import RunFiles
from stratify import score_batch
from stratify.catalogue import NAMES
from stratify.features import (
    Sources,
    connect,
    feature_table,
    fetch_features,
)
from stratify.progress import Progress, quiet
from stratify.sources import extract_ids
from stratify.tiers import assign, thresholds
from stratify.train import ModelBundle, train


@dataclass
class ScoreRun:
    """One run: metadata, one row per scored person, and the fitted models."""

    run_id: str
    at: dt.date
    model_version: str
    model: str
    seed: int
    thresholds: dict[str, float]
    extract_ids: dict[str, list[str]]
    metrics: dict[str, Any]
    scores: pd.DataFrame
    candidates: pd.DataFrame
    bundle: ModelBundle | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # A folder holding the scores and candidates as files (`RunFiles`), written a batch at a
    # time by `score_connected(out=...)`; `scores` and `candidates` are then empty frames.
    written: Path | None = None

    @property
    def persons(self) -> int:
        """How many persons the run scored (in memory or in its written files)."""
        return int(self.metrics["persons"]) if self.written is not None else len(self.scores)

    def to_json(self) -> dict[str, Any]:
        """Run metadata as written to `run.json`."""
        return {"run_id": self.run_id, "at": self.at.isoformat(),
                "model_version": self.model_version, "model": self.model, "seed": self.seed,
                "thresholds": self.thresholds, "extract_ids": self.extract_ids,
                "metrics": self.metrics, **self.meta}


# Persons predicted and explained at a time (`score_connected`): bounds scoring's memory.
SCORE_BATCH = 100_000


def score(sources: Sources, at: dt.date, seed: int = 0,
          previous: pd.DataFrame | Path | None = None, bundle: ModelBundle | None = None,
          max_train_persons: int | None = 400_000,
          threads: int | None = None, model: str | None = None,
          out: Path | None = None, progress: Progress = quiet) -> ScoreRun:
    """Score everyone alive and registered at `at`; see the module docstring.

    `previous`: an earlier run's scores (`person_key`, `probability`, `tier`) to report change,
    or its scores file (read a batch of persons at a time by DuckDB). `bundle`: a fitted model
    to reuse (else one is trained for `at`). Opt-outs are applied before this, by the caller
    (the pipeline, through governance's `purpose_filter`: which rows each purpose may use);
    this function reads only what it is given. `model`: score with
    this candidate instead of the one chosen on validation (a super user's choice, recorded in
    the run's metrics and part of its id). `out`: write the scores there a batch at a time
    instead of returning them in memory (`score_connected`). `progress` is told each step.
    """
    return score_connected(connect(sources, threads), extract_ids(sources), at, seed,
                           previous, bundle, max_train_persons, model, out=out,
                           progress=progress)


def score_connected(con: Any, ids: dict[str, list[str]], at: dt.date, seed: int = 0,
                    previous: pd.DataFrame | Path | None = None, bundle: ModelBundle | None = None,
                    max_train_persons: int | None = 400_000,
                    model: str | None = None, batch: int | None = None,
                    out: Path | None = None, progress: Progress = quiet
                    ) -> ScoreRun:
    """`score` on a connection holding the typed sources (`features.connect`, or
    `features.connect_on_disk` for a population larger than memory), which it closes once the
    features are read; `ids`: the extract ids each source's rows came from.

    The features of everyone at `at` stay in DuckDB (`features.feature_table`), and so do
    the persons' order and their filter attributes; persons are predicted, then explained,
    `batch` at a time (None: `SCORE_BATCH`), so no feature table of the whole population is
    held (issue #12). Every step is row by row and the tier thresholds come from everyone's
    probabilities, so the results do not depend on `batch`.

    `out`: a folder (a scratch workspace) to write the run's scores and candidates to as
    they are made (`RunFiles(out)`), a batch at a time; the run returned then holds them
    there (`ScoreRun.written`) and not in memory, which keeps only the chosen model's
    probability of each person (8 bytes a person: the tier thresholds and the mean are
    numpy's own on the whole column). The files read back equal the frames returned without
    `out`. `progress` is told each step: training's, the features, and the batches predicted
    and explained (about a tenth of the persons at a time)."""
    size = SCORE_BATCH if batch is None else batch
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 2)
        clock = now

    sink = _Sink(out)
    try:
        if size < 1:
            raise ValueError(f"batch must be 1 or more, not {size}")
        # DuckDB hands the memory of dropped tables back to the system (a background thread
        # of its allocator): training's feature tables are dropped before the models are
        # fitted (stratify.train), and without it the process kept their pages.
        con.execute("SET allocator_background_threads = true")
        if bundle is None:
            bundle = train(con, at, seed, max_train_persons=max_train_persons,
                           progress=progress)
            lap("train")
            progress(f"model trained in {seconds['train']:,.0f} s")
        bundle = choose_model(bundle, model)
        feature_table(con, at, bundle.lookback_months)
        persons = _order_persons(con)
        score_batch.attribute_tables(con, at)
        lap("features")
        progress(f"features at {at.isoformat()} of {persons:,} persons worked out")
        spans = [(start, min(start + size, persons))
                 for start in range(0, persons, size)] or [(0, 0)]
        tell = _Tenths(spans, persons, progress)
        chosen_parts = []
        for a, b in spans:
            keys = _batch_keys(con, a, b)
            probability = bundle.probabilities(fetch_features(con, NAMES, keys))
            chosen_parts.append(probability[bundle.chosen])
            sink.candidates(pd.DataFrame({"person_key": keys,
                                          **{name: p for name, p in probability.items()}}))
            tell(b, "predicted")
        chosen = np.concatenate(chosen_parts)
        del chosen_parts
        cut = thresholds(chosen)
        lap("predict")
        before = score_batch.previous(con, previous)
        reasons_method: dict[str, str] = {}
        for a, b in spans:
            keys = _batch_keys(con, a, b)
            X = fetch_features(con, NAMES, keys)
            tiers = assign(chosen[a:b], cut)
            contributions, reasons_method = score_batch.contributions(bundle, X, tiers)
            earlier = score_batch.batch_previous(con, X.index) if before is True else before
            sink.scores(score_batch.scored(keys, chosen[a:b], tiers,
                                           score_batch.explained(X, contributions),
                                           score_batch.batch_attributes(con, X.index),
                                           earlier))
            tell(b, "tiered and explained")
        lap("reasons")
    finally:
        con.close()
    scores, candidates = sink.finish()
    tier_counts = pd.Series(assign(chosen, cut)).value_counts().to_dict()
    metrics = {"persons": int(len(chosen)),
               "mean_probability": float(np.mean(chosen)) if len(chosen) else float("nan"),
               "tiers": {k: int(v) for k, v in tier_counts.items()},
               "selection": bundle.selection, "training": bundle.metrics,
               "seconds": seconds, "reasons_method": reasons_method,
               "chosen_by": bundle.extra.get("chosen_by", "validation")}
    by_user = bundle.extra.get("chosen_by") == "user"
    version = f"{bundle.version}/{bundle.chosen}" if by_user else bundle.version
    return ScoreRun(run_id=score_batch.run_id(at, seed, ids, version), at=at,
                    model_version=bundle.version, model=bundle.chosen, seed=seed,
                    thresholds=cut, extract_ids=ids, metrics=metrics, scores=scores,
                    candidates=candidates, bundle=bundle, written=out,
                    meta={"train_at": bundle.train_at, "train_window": list(bundle.train_window),
                          "training_thresholds": bundle.thresholds,
                          "lookback_months": bundle.lookback_months,
                          "features": bundle.features,
                          "codelists_digest": bundle.codelists_digest,
                          "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})


class _Tenths:
    """Tells `progress` how many of `persons` a loop over `spans` has done, at the spans
    ending about each tenth of the way and at the last: a few lines, however many batches."""

    def __init__(self, spans: list[tuple[int, int]], persons: int,
                 progress: Progress) -> None:
        every = max(1, -(-len(spans) // 10))  # at most ten lines, the last included
        self.marks = {b for i, (_, b) in enumerate(spans)
                      if (i + 1) % every == 0 or i == len(spans) - 1}
        self.persons = persons
        self.progress = progress

    def __call__(self, done: int, what: str) -> None:
        if done in self.marks and self.persons:
            self.progress(f"{what} {done:,} of {self.persons:,} persons")


def _order_persons(con: Any) -> int:
    """Number the persons of `features_out` in person-key order (the order of every fetch)
    in DuckDB's temporary table `score_order`; returns how many there are."""
    con.execute("""CREATE OR REPLACE TEMP TABLE score_order AS
        SELECT person_key, row_number() OVER (ORDER BY person_key) - 1 AS position
        FROM features_out""")
    return int(con.execute("SELECT count(*) FROM score_order").fetchone()[0])


def _batch_keys(con: Any, start: int, stop: int) -> np.ndarray:
    """The person keys at positions `start` to `stop` of `score_order`, in order."""
    found = con.execute(f"""SELECT person_key FROM score_order
        WHERE position >= {int(start)} AND position < {int(stop)} ORDER BY position
        """).fetchnumpy()["person_key"]
    return np.asarray(found, dtype=object)


class _Sink:
    """Where `score_connected` puts each batch's scores and candidates: kept and joined
    (`folder` None), or written to `folder` as a Parquet part each and joined into the run's
    two files by `finish` (`score_batch.join_parts`), a part at a time."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.parts: dict[str, list[Any]] = {"scores": [], "candidates": []}

    def _put(self, kind: str, frame: pd.DataFrame) -> None:
        if self.folder is None:
            self.parts[kind].append(frame)
            return
        path = RunFiles(self.folder).part(kind, len(self.parts[kind]))
        frame.to_parquet(path, index=False)
        self.parts[kind].append(path)

    def scores(self, frame: pd.DataFrame) -> None:
        """Take one batch of the scores."""
        self._put("scores", frame)

    def candidates(self, frame: pd.DataFrame) -> None:
        """Take one batch of every candidate's probability."""
        self._put("candidates", frame)

    def finish(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The scores and candidates in memory; or, written, both joined into their files
        and empty frames returned (the run's `written` folder holds them)."""
        if self.folder is None:
            return (pd.concat(self.parts["scores"], ignore_index=True),
                    pd.concat(self.parts["candidates"], ignore_index=True))
        files = RunFiles(self.folder)
        score_batch.join_parts(self.parts["scores"], files.scores)
        score_batch.join_parts(self.parts["candidates"], files.candidates)
        return pd.DataFrame(), pd.DataFrame()


class UnknownModel(ValueError):
    """A model was asked for that the run has no candidate of (the message names them)."""


def choose_model(bundle: ModelBundle, model: str | None) -> ModelBundle:
    """The bundle scoring with `model` (None, or the validation's own choice: unchanged);
    UnknownModel naming the candidates when it has no such model."""
    if model is None or model == bundle.chosen:
        return bundle
    if model not in bundle.models:
        raise UnknownModel(f"no candidate model {model!r}; candidates: "
                           f"{', '.join(sorted(bundle.models))}")
    return dataclasses.replace(bundle, chosen=model, extra={
        **bundle.extra, "chosen_by": "user", "best_on_validation": bundle.chosen})


def _files(directory: RunFiles | Path | str) -> RunFiles:
    return directory if isinstance(directory, RunFiles) else RunFiles(Path(directory))


def save_run(run: ScoreRun, directory: RunFiles | Path | str) -> Path:
    """Write the run to `directory` (created): scores, candidates, description, model. A run
    whose scores were written as it was scored (`ScoreRun.written`) has its files moved there;
    it can be saved once."""
    files = _files(directory)
    files.folder.mkdir(parents=True, exist_ok=True)
    if run.written is not None:  # moved, not read: a whole population's rows
        made = RunFiles(run.written)
        shutil.move(made.scores, files.scores)
        shutil.move(made.candidates, files.candidates)
    else:
        run.scores.to_parquet(files.scores, index=False)
        run.candidates.to_parquet(files.candidates, index=False)
    files.description.write_text(json.dumps(run.to_json(), indent=2, default=_json),
                                 encoding="utf-8")
    if run.bundle is not None:
        joblib.dump(run.bundle, files.model, compress=3)
    return files.folder


def load_run(directory: RunFiles | Path | str, columns: list[str] | None = None) -> ScoreRun:
    """Read a run written by `save_run` (the model too, when it was saved); `columns`: only
    these columns of the scores (a reader that needs a few of a whole population's)."""
    files = _files(directory)
    meta = json.loads(files.description.read_text(encoding="utf-8"))
    bundle = joblib.load(files.model) if files.model.exists() else None
    known = {"run_id", "at", "model_version", "model", "seed", "thresholds", "extract_ids",
             "metrics"}
    names = list(columns) if columns is not None else pq.read_schema(files.scores).names
    same = ("person_key" in names and not _stored_index(files.scores)
            and _same_keys(files.scores, files.candidates))
    scores = _frame(files.scores, names)
    # When the candidates list the scores' persons in the same order (as `save_run` writes
    # them), their person keys are the scores' own text objects, not a second copy.
    names = pq.read_schema(files.candidates).names
    candidates = _frame(files.candidates, [n for n in names if not same or n != "person_key"])
    if same:
        candidates.insert(names.index("person_key"), "person_key",
                          scores["person_key"].to_numpy())
    # Arrow's allocator keeps the pages the column reads freed: handed back, so what follows
    # can use them.
    pa.default_memory_pool().release_unused()
    return ScoreRun(run_id=meta["run_id"], at=dt.date.fromisoformat(meta["at"]),
                    model_version=meta["model_version"], model=meta["model"], seed=meta["seed"],
                    thresholds=meta["thresholds"], extract_ids=meta["extract_ids"],
                    metrics=meta["metrics"],
                    scores=scores, candidates=candidates, bundle=bundle,
                    meta={k: v for k, v in meta.items() if k not in known})


def _frame(path: Path, names: list[str]) -> pd.DataFrame:
    """The columns `names` of the Parquet file at `path` as `pandas.read_parquet` gives them,
    read and converted one column at a time, so a whole population's rows are never held in
    Arrow and pandas at once: one column is, while it is converted (the file's pandas
    metadata says how: a nullable integer column is `Int64`). `person_key` is made without
    Arrow's de-duplication: every key is distinct, so de-duplicating only built a hash table
    of every key."""
    if not names or len(set(names)) < len(names) or _stored_index(path):
        # no column (the frame keeps its rows), a name twice, or a stored pandas index:
        # pyarrow's own reading says what these give (Haven writes none of them)
        return pq.read_table(path, columns=names).to_pandas()
    series: dict[str, Any] = {}
    for name in names:
        part = pq.read_table(path, columns=[name])
        series[name] = part.to_pandas(deduplicate_objects=name != "person_key")[name]
        del part
    return pd.DataFrame(series, copy=False)


def _stored_index(path: Path) -> bool:
    """Whether the Parquet file at `path` holds a pandas index as columns."""
    stored = pq.read_schema(path).pandas_metadata or {}
    return any(isinstance(index, str) for index in stored.get("index_columns", []))


def _same_keys(scores: Path, candidates: Path) -> bool:
    """Whether the files at `scores` and `candidates` have equal `person_key` columns, row
    for row (compared in Arrow)."""
    if "person_key" not in pq.read_schema(candidates).names:
        return False
    keys = pq.read_table(scores, columns=["person_key"]).column(0)
    return bool(pq.read_table(candidates, columns=["person_key"]).column(0).equals(keys))


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(type(value))
