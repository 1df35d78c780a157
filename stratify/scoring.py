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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from governance.identifiers import digest_letters
from governance.layout import RunFiles
from stratify import codelists, explain
from stratify.catalogue import AGE_BANDS, NAMES
from stratify.features import (
    Sources,
    _ts,
    connect,
    feature_keys,
    feature_table,
    fetch_features,
)
from stratify.sources import extract_ids
from stratify.tiers import assign, thresholds, tier_change
from stratify.train import ModelBundle, train

SOURCE_DATES = (("apc", "admission_date"), ("ae", "arrival_datetime"), ("op", "appointment_date"),
                ("gp_events", "event_date"), ("gp_medications", "issue_date"),
                ("community", "contact_date"), ("social_care", "start_date"))


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

    def to_json(self) -> dict[str, Any]:
        """Run metadata as written to `run.json`."""
        return {"run_id": self.run_id, "at": self.at.isoformat(),
                "model_version": self.model_version, "model": self.model, "seed": self.seed,
                "thresholds": self.thresholds, "extract_ids": self.extract_ids,
                "metrics": self.metrics, **self.meta}


def age_band(age: pd.Series) -> pd.Series:
    """The release age bands (`0-17` ... `85+`); null where age is unknown."""
    edges = [lower for lower, _ in AGE_BANDS] + [200]
    labels = [label for _, label in AGE_BANDS]
    return pd.cut(age, bins=edges, labels=labels, right=False).astype(object)


def _attributes(con: Any, at: dt.date, persons: pd.Index) -> pd.DataFrame:
    """Practice, sex and the sources each person appears in before `at`, for filters."""
    at_ = _ts(at)
    practice = con.execute(f"""
        SELECT person_key, arg_max(gp_practice_code, registration_date) AS gp_practice_code,
            arg_max(sex, registration_date) AS sex
        FROM v_gp_patients WHERE registration_date <= {at_} GROUP BY person_key
    """).df().set_index("person_key")
    union = " UNION ALL ".join(
        f"SELECT DISTINCT person_key, '{s}' AS source FROM v_{s} WHERE {d} < {at_}"
        for s, d in SOURCE_DATES)
    seen = con.execute(f"""
        SELECT person_key, string_agg(source, ';' ORDER BY source) AS sources
        FROM ({union}) GROUP BY person_key
    """).df().set_index("person_key")
    out = pd.DataFrame(index=persons)
    out["gp_practice_code"] = practice["gp_practice_code"].reindex(persons)
    out["sex"] = practice["sex"].reindex(persons)
    out["sources"] = seen["sources"].reindex(persons).fillna("")
    return out


def _conditions(X: pd.DataFrame) -> pd.Series:
    table = codelists.conditions()
    result = pd.Series("", index=X.index, dtype=object)
    for condition, label in zip(table["condition"], table["label"], strict=True):
        column = f"ltc_{condition}"
        if column in X.columns:
            has = X[column].to_numpy() > 0
            result[has] = result[has] + np.where(result[has] == "", "", ";") + label
    return result


EXACT_TIERS = ("very_high", "high")
# Persons predicted and explained at a time (`score_connected`): bounds scoring's memory.
SCORE_BATCH = 100_000
CANDIDATE_GROUPS = 8


def _contributions(bundle: ModelBundle, X: pd.DataFrame, tiers: np.ndarray
                   ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per-group contributions behind each person's reasons.

    Linear and points models are exact and cheap for everyone. For tree models the exact
    contributions (prediction with each group at its baseline) cost one prediction per group,
    so they are worked out for the very high and high tiers, the persons teams act on, over each
    person's 8 most likely groups by the logistic contributions (plus age); the rest get the
    logistic model's coefficient x (value - mean) contributions.
    """
    model = bundle.models[bundle.chosen]
    features = X[bundle.features]
    linear = bundle.models.get("logistic")
    if bundle.chosen in ("rule", "logistic") or linear is None:
        return model.contributions(features), {"all": bundle.chosen}
    exact = np.isin(tiers, EXACT_TIERS)
    parts = []
    if exact.any():
        # Trees are re-predicted only for each person's most likely groups (by the linear
        # contributions): a ranking refined exactly where it matters, at a fraction of the cost.
        rough = linear.contributions(features[exact])
        rank = rough.rank(axis=1, ascending=False, method="first")
        candidates = (rank <= CANDIDATE_GROUPS) | rough.columns.isin(["age"])
        parts.append(model.contributions(features[exact], candidates))
    if (~exact).any():
        parts.append(linear.contributions(features[~exact]))
    combined = pd.concat(parts).reindex(X.index).fillna(0.0)
    return combined, {"very_high, high": bundle.chosen, "moderate, low": "logistic"}


def _run_id(at: dt.date, seed: int, ids: dict[str, list[str]], version: str) -> str:
    """`score-DATE-` and a digest of what made the run, in letters (governance.identifiers: never
    a digit run the audit log would take for an NHS number)."""
    digest = digest_letters(json.dumps([at.isoformat(), seed, ids, version], sort_keys=True))
    return f"score-{at.isoformat()}-{digest}"


def score(sources: Sources, at: dt.date, seed: int = 0,
          previous: pd.DataFrame | None = None, bundle: ModelBundle | None = None,
          max_train_persons: int | None = 400_000,
          threads: int | None = None, model: str | None = None) -> ScoreRun:
    """Score everyone alive and registered at `at`; see the module docstring.

    `previous`: an earlier run's scores (`person_key`, `probability`, `tier`) to report change.
    `bundle`: a fitted model to reuse (else one is trained for `at`). Opt-outs are applied
    before this, by the caller (the pipeline, through governance's `purpose_filter`: which rows
    each purpose may use); this function reads only what it is given. `model`: score with
    this candidate instead of the one chosen on validation (a super user's choice, recorded in
    the run's metrics and part of its id).
    """
    return score_connected(connect(sources, threads), extract_ids(sources), at, seed,
                           previous, bundle, max_train_persons, model)


def score_connected(con: Any, ids: dict[str, list[str]], at: dt.date, seed: int = 0,
                    previous: pd.DataFrame | None = None, bundle: ModelBundle | None = None,
                    max_train_persons: int | None = 400_000,
                    model: str | None = None, batch: int | None = None) -> ScoreRun:
    """`score` on a connection holding the typed sources (`features.connect`, or
    `features.connect_on_disk` for a population larger than memory), which it closes once the
    features are read; `ids`: the extract ids each source's rows came from.

    The features of everyone at `at` stay in DuckDB (`features.feature_table`); persons are
    predicted, then explained, `batch` at a time (None: `SCORE_BATCH`), so no feature table of
    the whole population is held (issue #12). Every step is row by row and the tier
    thresholds come from everyone's probabilities, so the results do not depend on `batch`."""
    size = SCORE_BATCH if batch is None else batch
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 2)
        clock = now

    try:
        if size < 1:
            raise ValueError(f"batch must be 1 or more, not {size}")
        if bundle is None:
            bundle = train(con, at, seed, max_train_persons=max_train_persons)
            lap("train")
        bundle = choose_model(bundle, model)
        feature_table(con, at, bundle.lookback_months)
        keys = feature_keys(con)
        index = pd.Index(keys, name="person_key", dtype=object)
        attributes = _attributes(con, at, index)
        lap("features")
        spans = [(start, min(start + size, len(keys)))
                 for start in range(0, len(keys), size)] or [(0, 0)]
        parts = [bundle.probabilities(fetch_features(con, NAMES, keys[a:b])) for a, b in spans]
        probability = {name: np.concatenate([part[name] for part in parts])
                       for name in parts[0]}
        chosen = probability[bundle.chosen]
        cut = thresholds(chosen)
        lap("predict")
        tiers = assign(chosen, cut)
        explained = []
        reasons_method: dict[str, str] = {}
        for a, b in spans:
            X = fetch_features(con, NAMES, keys[a:b])
            contributions, reasons_method = _contributions(bundle, X, tiers[a:b])
            explained.append(_explained(X, contributions))
        rows = pd.concat(explained)
        lap("reasons")
    finally:
        con.close()
    scores = pd.DataFrame({"person_key": keys, "probability": chosen}, index=index)
    scores["tier"] = tiers
    scores["reasons"] = rows["reasons"]
    scores = scores.join(rows[["reason_group_1", "reason_group_2", "reason_group_3"]])
    scores["previous_probability"] = np.nan
    scores["previous_tier"] = None
    if previous is not None and len(previous):
        before = previous.drop_duplicates("person_key").set_index("person_key")
        scores["previous_probability"] = before["probability"].reindex(index).astype(float)
        scores["previous_tier"] = before["tier"].reindex(index).astype(object)
    scores["change"] = scores["probability"] - scores["previous_probability"]
    scores["tier_change"] = tier_change(scores["tier"], scores["previous_tier"])
    scores = scores.join(attributes)
    for column in ("age", "age_band", "conditions", "social_care_known"):
        scores[column] = rows[column]
    scores = scores.reset_index(drop=True)
    candidates = pd.DataFrame({"person_key": keys,
                               **{name: p for name, p in probability.items()}})
    tier_counts = scores["tier"].value_counts().to_dict()
    metrics = {"persons": int(len(scores)),
               "mean_probability": float(np.mean(chosen)) if len(chosen) else float("nan"),
               "tiers": {k: int(v) for k, v in tier_counts.items()},
               "selection": bundle.selection, "training": bundle.metrics,
               "seconds": seconds, "reasons_method": reasons_method,
               "chosen_by": bundle.extra.get("chosen_by", "validation")}
    by_user = bundle.extra.get("chosen_by") == "user"
    version = f"{bundle.version}/{bundle.chosen}" if by_user else bundle.version
    return ScoreRun(run_id=_run_id(at, seed, ids, version), at=at,
                    model_version=bundle.version, model=bundle.chosen, seed=seed,
                    thresholds=cut, extract_ids=ids, metrics=metrics, scores=scores,
                    candidates=candidates, bundle=bundle,
                    meta={"train_at": bundle.train_at, "train_window": list(bundle.train_window),
                          "training_thresholds": bundle.thresholds,
                          "lookback_months": bundle.lookback_months,
                          "features": bundle.features,
                          "codelists_digest": bundle.codelists_digest,
                          "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})


def _explained(X: pd.DataFrame, contributions: pd.DataFrame) -> pd.DataFrame:
    """The row-only columns of a batch of persons: reasons (joined, and the top three
    groups), age, age band, conditions and whether social care knows them."""
    why = explain.reasons(contributions, X)
    out = pd.DataFrame({"reasons": explain.joined(why)}, index=X.index)
    out = out.join(why[["reason_group_1", "reason_group_2", "reason_group_3"]])
    out["age"] = X["age"]
    out["age_band"] = age_band(X["age"])
    out["conditions"] = _conditions(X)
    out["social_care_known"] = X["sc_known"].astype(bool)
    return out


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
    """Write the run to `directory` (created): scores, candidates, description, model."""
    files = _files(directory)
    files.folder.mkdir(parents=True, exist_ok=True)
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
    return ScoreRun(run_id=meta["run_id"], at=dt.date.fromisoformat(meta["at"]),
                    model_version=meta["model_version"], model=meta["model"], seed=meta["seed"],
                    thresholds=meta["thresholds"], extract_ids=meta["extract_ids"],
                    metrics=meta["metrics"],
                    scores=pd.read_parquet(files.scores, columns=columns),
                    candidates=pd.read_parquet(files.candidates), bundle=bundle,
                    meta={k: v for k, v in meta.items() if k not in known})


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(type(value))
