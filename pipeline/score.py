"""Score: train on history before a date, score everyone at it, record and audit the run;
export the scores of the run serving a purpose.

The model a run was scored by is recorded (governance.model_approvals): a model trained here
is a candidate until a clinical safety officer approves it, and its run does not serve until
then (pipeline.serving); the model in force keeps serving meanwhile. Given the approved
model's bundle (`bundle`, as `haven refresh` does), nothing is trained and the run serves at
once: the same model, the same model id, the same approval.

A run's id (`run_id`) is made here from the stage's id (date, seed, extracts, version) and
what the stage does not see: the purpose, the model chosen and the opt-outs applied. A
complete run is never rewritten: the same id means the same inputs, so a re-score returns
the run already made ("already scored"). A new run is written to `staging-runs/` and moved
into `runs/` only after its row commits, so a failed run leaves no half folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from sqlalchemy import insert, select

from governance import audit, optouts, store
from governance.identifiers import digest_letters
from governance.model_approvals import get_model, model_id, record_candidate
from governance.schema import runs
from linkage.linked_view import RowFilter, load_sources
from linkage.person_index import pseudonyms_behind_bare_rows
from pipeline.context import Context, Progress, quiet
from pipeline.engines.dispatch import persons_scorer
from pipeline.engines.spark_score import NoOneToScore
from pipeline.linked_copy import PurposeRows, linked_copy
from pipeline.serving import optouts_applied, serving_run, withheld_person_keys
from stratify.catalogue import FEATURES
from stratify.scoring import ScoreRun, UnknownModel, save_run
from stratify.scoring import score as score_persons  # the embedded engine
from stratify.train import ModelBundle, TooLittleHistory

__all__ = ["NoOneToScore", "NoScoreRun", "NothingToScore", "RunIdTaken", "ScoreResult",
           "TooLittleHistory", "UnknownModel",
           "export_scores", "model_description", "purpose_sources", "reason_group_sources",
           "run_id", "score", "use_filter"]

RELEASE_COLUMNS = ["person_key", "probability", "tier", "reasons"]


class NoScoreRun(LookupError):
    """No complete score run serves the purpose yet."""


class NothingToScore(LookupError):
    """No landed, linked row to score (nothing landed yet, or everything destroyed)."""


class RunIdTaken(RuntimeError):
    """A run with this id exists but is not complete (voided): it is never rewritten."""


@dataclass
class ScoreResult:
    """What a scoring run made: its id, size, model, tiers and thresholds."""

    run_id: str
    persons: int
    model: str
    purpose: str
    model_id: str = ""
    model_status: str = "candidate"
    tiers: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    already_scored: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def use_filter(ctx: Context, purpose: str, on: dt.date,
               rules: list[optouts.Coverage] | None = None,
               register: list[str] | None = None) -> RowFilter:
    """The rows `purpose` may use on `on`: governance's purpose filter (opt-outs by pseudonym),
    applied to every row of a person. A row without a pseudonym of its own (linked
    probabilistically, or by a council's client id) is its person key's, and is judged by
    every pseudonym the person index gives that key: an opt-out covers a person's rows however
    they were linked."""
    judge = optouts.purpose_filter(ctx.engine, purpose, on, rules, register)
    pairs = pseudonyms_behind_bare_rows(ctx.settings)  # not the whole map: issue #12
    # Arrow's allocator keeps the pages reading the map freed (0.7 GB of a million persons'
    # map, kept under the linked copy the stage makes next): handed back to the system.
    pa.default_memory_pool().release_unused()
    return UseFilter(judge, pairs)


@dataclass(frozen=True, eq=False)
class UseFilter:
    """`use_filter`'s verdicts: governance's filter `judge`, and the pseudonyms (`pairs`:
    person_key, person_id) behind the rows without one. A value, not a closure, so a Spark
    executor making its part of the linked copy is sent it whole."""

    judge: RowFilter
    pairs: pd.DataFrame

    def __call__(self, frame: pd.DataFrame, source: str) -> pd.Series:
        mask = self.judge(frame, source)
        bare = frame["person_id"].isna() if "person_id" in frame else None
        if bare is None or "person_key" not in frame or not bare.any():
            return mask
        columns = ["person_key"] + (["sender"] if "sender" in frame else [])
        probe = frame.loc[bare, columns].rename_axis("at").reset_index().merge(
            self.pairs, on="person_key")
        refused = probe.loc[~self.judge(probe, source).to_numpy(), "at"].unique()
        mask.loc[refused] = False
        return mask


def purpose_filter(ctx: Context, purpose: str, applied: dict[str, Any] | None = None
                   ) -> RowFilter:
    """`use_filter` by the opt-outs in force, `applied`: what `optouts_applied` recorded."""
    applied = applied or optouts_applied(ctx.engine)
    return use_filter(ctx, purpose, dt.date.fromisoformat(applied["in_force_on"]),
                      optouts.parse_coverage(applied["policy"]), applied["register"])


def purpose_rows(ctx: Context, purpose: str, applied: dict[str, Any]) -> PurposeRows:
    """What `linked_copy` needs for the rows `purpose` may use under `applied`: the filter is
    made (reading the link map) only if the copy is not taken from the linked cache."""
    return PurposeRows(purpose, applied, lambda: purpose_filter(ctx, purpose, applied))


def purpose_sources(ctx: Context, purpose: str, applied: dict[str, Any] | None = None
                    ) -> dict[str, pd.DataFrame]:
    """The linked rows `purpose` may use now (`purpose_filter`), as frames in memory;
    NothingToScore when there is none."""
    sources = load_sources(ctx.settings, ctx.engine,
                           row_filter=purpose_filter(ctx, purpose, applied))
    if not any(len(frame) for frame in sources.values()):
        raise NothingToScore("nothing landed and linked to score: land extracts and run "
                             "`haven link`")
    return sources


def _training_note(at: dt.date, rows: int, bundle: ModelBundle | None) -> str:
    return (f"training on history before {at.isoformat()} and scoring {rows:,} linked rows"
            if bundle is None else f"scoring {rows:,} linked rows with the given model")


def model_description(run: ScoreRun) -> dict[str, Any]:
    """What identifies the model trained for `run`: version, algorithm (and who chose it),
    training date and window, lookback, features, code lists, seed, the extracts it was fitted
    on and its validation figures; the same procedure on other data is another model."""
    return {"version": run.model_version, "algorithm": run.model,
            "extracts": sorted({e for ids in run.extract_ids.values() for e in ids}),
            "validation": run.metrics.get("selection"),
            "chosen_by": run.metrics.get("chosen_by", "validation"),
            "train_at": run.meta.get("train_at"), "train_window": run.meta.get("train_window"),
            "lookback_months": run.meta.get("lookback_months"),
            "features": run.meta.get("features"),
            "codelists_digest": run.meta.get("codelists_digest"),
            "seed": run.bundle.seed if run.bundle is not None else run.seed}


def score(ctx: Context, at: dt.date, *, seed: int = 0, purpose: str = "commissioning",
          model: str | None = None, progress: Progress = quiet,
          bundle: ModelBundle | None = None, bundle_id: str | None = None) -> ScoreResult:
    """Score everyone at `at` for `purpose` and record the run.

    Rows the purpose may not use are left out before anything is read by the model: by the
    opt-outs in force now (the moment of use), not on `at`, so an early `at` brings back no
    one's history; what was applied is recorded with the run (pipeline.serving). `model`
    overrides the candidate chosen on validation (rule, logistic, boosting or blend); an
    unknown name raises UnknownModel. `bundle`: score with this fitted model (the approved
    one, whose id is `bundle_id`) instead of training a candidate.
    """
    progress(f"reading linked, pseudonymised data for {at.isoformat()} ({purpose})")
    applied = optouts_applied(ctx.engine)
    before = serving_run(ctx.engine, purpose)
    # Either engine reads the linked rows through an on-disk copy (Spark's tasks each open it
    # read-only for their range of persons), so neither holds them all in memory. Both write
    # the scores into the copy's workspace as they make them, a batch (or a task's range) at
    # a time (`out`); they are moved into the run's folder when it is saved, before the copy
    # goes.
    spark = ctx.settings.engine == "spark"
    scorer = persons_scorer(ctx.settings) if spark else score_persons
    with linked_copy(ctx, purpose_rows(ctx, purpose, applied), progress) as copy:
        if not copy.rows:
            raise NothingToScore("nothing landed and linked to score: land extracts and "
                                 "run `haven link`")
        progress(_training_note(at, copy.rows, bundle))
        previous: Path | None = None  # read a batch (or a range) of persons at a time
        if before is not None:
            previous = ctx.settings.layout.run(before.run_id).scores
        run = scorer(copy, at, seed=seed, previous=previous, model=model, bundle=bundle,
                     out=copy.folder, progress=progress)
        return _record(ctx, run, at, purpose, progress, bundle, bundle_id, applied)


def _record(ctx: Context, run: ScoreRun, at: dt.date, purpose: str, progress: Progress,
            bundle: ModelBundle | None, bundle_id: str | None,
            applied: dict[str, Any]) -> ScoreResult:
    """Record, save and publish the scored `run` (`score`), or return the run of its id
    already made."""
    description = json.loads(json.dumps(model_description(run), default=str))  # plain JSON
    chosen_id = bundle_id if bundle is not None and bundle_id else model_id(description)
    stage_id, run.run_id = run.run_id, run_id(run.run_id, at, purpose, chosen_id, applied)
    run.meta.update(model_id=chosen_id, stage_run_id=stage_id)
    with store.data_lock(ctx.settings, "score"):  # one writer of run ids at a time
        existing = _existing(ctx, run.run_id, purpose)
        if existing is not None:  # the same id: the same inputs, scored before
            progress(f"already scored: run {existing.run_id} (the same extracts, date, seed, "
                     f"purpose, model and opt-outs); nothing written")
            progress(_serving_note(ctx, existing.model_id, existing.model_status, purpose))
            return existing
        staged = ctx.settings.layout.staged_run(run.run_id)
        store.remove_tree(staged.folder)  # what an interrupted run of this id left
        save_run(run, staged)
        used = sorted({e for ids in run.extract_ids.values() for e in ids})
        try:
            with ctx.engine.begin() as connection:
                status = record_candidate(connection, chosen_id, run.run_id, purpose, run.model,
                                          description)
                connection.execute(insert(runs).values(
                    run_id=run.run_id, kind="score", at=dt.datetime.now(dt.UTC),
                    status="complete", extract_ids=used,
                    summary={"at": at.isoformat(), "model": run.model, "purpose": purpose,
                             "model_version": run.model_version, "model_id": chosen_id,
                             "persons": run.persons, "thresholds": run.thresholds,
                             "optouts": applied, "stage_run_id": stage_id}))
                audit.record(connection, ctx.actor, "score.run", f"run/{run.run_id}",
                             n_records=run.persons, purpose=purpose,
                             detail={"model": run.model, "extracts": len(used),
                                     "model_id": chosen_id, "model_status": status,
                                     "chosen_by": run.metrics.get("chosen_by", "validation")})
        except BaseException:
            store.remove_tree(staged.folder)  # no row: no run, and no half folder
            raise
        folder = _publish(ctx, run.run_id)
    result = ScoreResult(run_id=run.run_id, persons=run.persons, model=run.model,
                         purpose=purpose, tiers=run.metrics.get("tiers", {}),
                         thresholds=run.thresholds, model_id=chosen_id, model_status=status)
    progress(f"score run {result.run_id}: {result.persons:,} persons, model {result.model}; "
             f"written to {folder}")
    progress(_serving_note(ctx, chosen_id, status, purpose))
    return result


def run_id(stage_id: str, at: dt.date, purpose: str, chosen_model: str,
           applied: dict[str, Any]) -> str:
    """The id a run is recorded and filed under: `score-DATE-` and a digest, in letters
    (governance.identifiers: never a digit run), of the stage's id (date, seed, extracts,
    version), the purpose, the model chosen and a digest of the opt-outs applied (what
    `optouts_applied` records). The stage's id alone names neither purpose, model nor
    opt-outs, so two different runs could share it and one overwrite the other."""
    optouts_digest = digest_letters(json.dumps(applied, sort_keys=True, default=str), 16)
    made_of = json.dumps([stage_id, purpose, chosen_model, optouts_digest], sort_keys=True)
    return f"score-{at.isoformat()}-{digest_letters(made_of, 16)}"


def _existing(ctx: Context, wanted: str, purpose: str) -> ScoreResult | None:
    """The complete run `wanted`, as a result (None when there is no such run); RunIdTaken
    when a run of that id exists but is void. A run whose row committed but whose folder
    was not yet moved into place (the process stopped between) is moved now."""
    with ctx.engine.connect() as connection:
        found = connection.execute(select(runs.c.status, runs.c.summary).where(
            runs.c.run_id == wanted)).first()
    if found is None:
        return None
    if found.status != "complete":
        raise RunIdTaken(f"run {wanted} exists with status {found.status}: it is never "
                         f"rewritten; land the extracts again to score anew")
    files = ctx.settings.layout.run(wanted)
    if not files.folder.exists() and ctx.settings.layout.staged_run(wanted).folder.exists():
        _publish(ctx, wanted)
    summary = dict(found.summary or {})
    tiers: dict[str, int] = {}
    if files.description.exists():
        tiers = json.loads(files.description.read_text(encoding="utf-8")).get(
            "metrics", {}).get("tiers", {})
    chosen = str(summary.get("model_id", ""))
    model = get_model(ctx.engine, chosen) if chosen else None
    return ScoreResult(run_id=wanted, persons=int(summary.get("persons", 0)),
                       model=str(summary.get("model", "")),
                       purpose=str(summary.get("purpose", purpose)), model_id=chosen,
                       model_status=str(model["status"]) if model else "candidate",
                       tiers=tiers, thresholds=dict(summary.get("thresholds") or {}),
                       already_scored=True)


def _publish(ctx: Context, wanted: str) -> Path:
    """Move run `wanted` from staging into `runs/` in one rename (its row has committed);
    the files are flushed to disk first. A folder of that id without a row (left by a
    version that wrote in place) is replaced: no complete run names it."""
    source = ctx.settings.layout.staged_run(wanted).folder
    target = ctx.settings.layout.run(wanted).folder
    for file in source.rglob("*"):
        if file.is_file():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
    target.parent.mkdir(parents=True, exist_ok=True)
    store.remove_tree(target)
    os.replace(source, target)
    return target


def _serving_note(ctx: Context, chosen: str, status: str, purpose: str) -> str:
    """What the run means for what is served: approved (serves), or a candidate/rejected
    model's run that waits, and which run serves meanwhile."""
    if status == "approved":
        return f"model {chosen} is approved: this run serves {purpose}"
    now = serving_run(ctx.engine, purpose)
    meanwhile = "nothing serves yet"
    if now is not None:
        by = now.summary.get("model_id", "recorded before approvals")
        meanwhile = f"run {now.run_id} (model {by}) keeps serving"
    if status == "rejected":
        return f"model {chosen} was rejected: this run never serves; {meanwhile}"
    return (f"model {chosen} is a candidate: this run serves once a clinical safety officer "
            f"approves it (`haven model approve {chosen} --reason ... --as USER`); "
            f"{meanwhile}")


def export_scores(ctx: Context, out: Path, purpose: str = "commissioning") -> tuple[str, int]:
    """Write person_key, probability, tier, reasons of the run serving `purpose`, without the
    persons it must hold back (as the API does); returns (run id, rows). ValueError for a file
    type other than .csv or .parquet; NoScoreRun when no run serves the purpose."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError("--out must end in .csv or .parquet")
    run = serving_run(ctx.engine, purpose)
    if run is None:
        raise NoScoreRun("no score run of an approved model yet: run `haven score`, and a "
                         "clinical safety officer approves its model (`haven model list`)")
    frame = pd.read_parquet(ctx.settings.layout.run(run.run_id).scores,
                            columns=RELEASE_COLUMNS)
    withheld = withheld_person_keys(ctx.settings, ctx.engine, purpose, run)
    frame = frame[~frame["person_key"].isin(withheld)]
    if suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    audit.log(ctx.engine, ctx.actor, "scores.export", f"run/{run.run_id}",
              n_records=len(frame), purpose=purpose)
    return run.run_id, len(frame)


def reason_group_sources(sources: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Which of `sources` each reason group is derived from (the feature catalogue)."""
    out: dict[str, set[str]] = {}
    for feature in FEATURES:
        named = {s for s in sources if s in feature.source.replace(",", " ").split()}
        out.setdefault(feature.group, set()).update(named)
    return {group: frozenset(found) for group, found in out.items()}
