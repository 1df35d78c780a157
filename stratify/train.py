"""Training with a time split: learn from the past year, choose on a later one, calibrate.

For a run at `at`:
1. Selection (backtest): each candidate learns features at `at - 24 months` -> emergency
   admissions in the following 12 months, and is judged by AUROC on the later reference date
   `at - 12 months` (outcomes up to `at`). Where the data hold too little history for that, the
   candidates are judged on a held-out slice of persons at `at - 12 months` instead.
2. Final fit: every candidate learns features at `at - 12 months` -> emergency admissions in the
   12 months up to `at` (a training slice of persons); a calibrator is fitted on the rest
   (held out). Nothing on or after `at` is read.
The candidate with the best selection AUROC scores the run; the others are kept for comparison.

The same data give the same model, whatever keys pseudonymised them: before any random choice
(the calibration hold-out, subsamples, the boosting's own validation split) the persons of a
date are put in an order made from their rows' content (features and outcome; `stable_order`),
never from their person keys, and every draw comes from the recorded seed (`draw`). Persons
whose rows are identical are interchangeable, so which of them is drawn changes nothing.

Training memory does not grow with the population (issue #12): a date with more than
`SAMPLE_PERSONS` persons is put in that same order from DuckDB's table, `HASH_BATCH` persons
at a time (`_sampled_rows`: only everyone's outcome and order hashes are held), a seeded plain
random sample of `SAMPLE_PERSONS` is drawn from it, and only the sample's features are
fetched. A date with fewer persons uses them all, exactly as
before. The sample is unweighted and the calibration hold-out is drawn from it, so the
calibrated probabilities keep the population's event rate.

`history_gain` records what the history adds: a learner (the logistic model unless asked for
the chosen one) with every feature against the same learner refitted on the reference-date
features alone (`catalogue.Feature.reference`), both judged on the calibration hold-out
(persons neither model learnt from).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from stratify import codelists
from stratify.catalogue import BY_NAME, NAMES
from stratify.features import (
    WORK_TABLES,
    _ts,
    feature_columns,
    feature_table,
    fetch_features,
    history_months,
)
from stratify.models import CANDIDATES, Blend, Calibrator, Model, make
from stratify.outcomes import outcomes_from
from stratify.progress import Progress, quiet
from stratify.sources import add_months
from stratify.tiers import thresholds

MODEL_VERSION = "haven-score-1.0"
LIFETIME_MONTHS = 240  # with 20 years of history or more, conditions use all of it
CALIBRATION_SHARE = 0.2
# Persons of a training date that training reads (issue #12: memory independent of the
# population): a larger population is sampled down to this many before any feature is fetched.
# 250,000: 200,000 to fit and 50,000 to calibrate (a standard error of the calibrated mean
# of 0.13 percentage point at a 10% event rate); training then needs what it needed at
# 250,000 persons (a peak of 2.8 GB measured with 243,794, DuckDB's 1 GB included), whatever
# the population. The 100,000-person benchmark and every test population stay below it.
SAMPLE_PERSONS = 250_000
# Persons whose order hashes `_sampled_rows` makes at a time (their keys and features only).
HASH_BATCH = 100_000


@dataclass
class ModelBundle:
    """Everything needed to score and to explain a score later (persisted with joblib)."""

    version: str
    chosen: str
    models: dict[str, Model]
    calibrators: dict[str, Calibrator]
    features: list[str]
    train_at: str
    train_window: tuple[str, str]
    selection: dict[str, Any]
    thresholds: dict[str, float]
    metrics: dict[str, Any]
    seed: int
    codelists_digest: str = ""
    lookback_months: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """Calibrated probability from every candidate; a blend reuses its parts' log-odds."""
        decisions: dict[str, np.ndarray] = {}
        for name, model in self.models.items():
            if not isinstance(model, Blend):
                decisions[name] = model.decision(X[self.features])
        for name, model in self.models.items():
            if isinstance(model, Blend):
                known = {id(m): decisions[n] for n, m in self.models.items() if n in decisions}
                parts = [known.get(id(p)) for p in model.parts]
                decisions[name] = np.mean(parts, axis=0) if all(
                    p is not None for p in parts) else model.decision(X[self.features])
        return {name: self.calibrators[name](d) for name, d in decisions.items()}

    def probability(self, X: pd.DataFrame, name: str | None = None) -> np.ndarray:
        """Calibrated probability of an emergency admission in 12 months."""
        name = name or self.chosen
        return self.calibrators[name](self.models[name].decision(X[self.features]))


ORDER = "rows sorted by two 64-bit hashes of their features and outcome (no key material)"
HASH_KEYS = ("haven-order-0001", "haven-order-0002")


def stable_order(X: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    """Positions that put the rows of `X` (with outcome `y`) in an order made from their
    content alone: the same persons give the same order under any pseudonymisation key.

    Rows are sorted by two independent 64-bit hashes of (features, outcome); rows with equal
    hashes are identical (but for a 2^-128 chance) and so interchangeable for any model.
    """
    first, second = (_row_hashes(X, y, key) for key in HASH_KEYS)
    return np.lexsort((second, first))


def _row_hashes(X: pd.DataFrame, y: np.ndarray, hash_key: str) -> np.ndarray:
    """`pd.util.hash_pandas_object(frame, index=False, hash_key=...)` of X's columns and the
    outcome as float64, one column at a time (a float64 copy of X was a gigabyte at a million
    persons): pandas' own combination of column hashes (CPython's tuple hash), repeated."""
    rows = _RowHash(len(X), X.shape[1] + 1, hash_key)
    for i in range(X.shape[1]):
        rows.add(X.iloc[:, i].to_numpy(dtype=np.float64, na_value=np.nan))
    rows.add(y)
    return rows.finish()


class _RowHash:
    """`_row_hashes` fed a column at a time (`add`, in order, `count` columns in all), so the
    order of a population can be made from column chunks (`_sampled_rows`) without holding
    its feature table."""

    def __init__(self, rows: int, count: int, hash_key: str) -> None:
        self.count, self.hash_key, self.added = count, hash_key, 0
        self.out = np.full(rows, 0x345678, dtype=np.uint64)
        self.mult = np.uint64(1000003)

    def add(self, values: np.ndarray) -> None:
        """Fold in the next column (compared as float64, as pandas hashes the float frame)."""
        self.out ^= pd.util.hash_array(np.asarray(values, dtype=np.float64),
                                       hash_key=self.hash_key)
        self.out *= self.mult
        inverse = self.count - self.added
        self.mult += np.uint64(82520 + inverse + inverse)
        self.added += 1

    def finish(self) -> np.ndarray:
        """The row hashes, once every column is in."""
        if self.added != self.count:
            raise ValueError(f"row hash given {self.added} of its {self.count} columns")
        return self.out + np.uint64(97531)


def draw(n: int, share: float, seed: int, stream: int) -> np.ndarray:
    """A seeded choice of round(share x n) of n positions (bool mask); `stream` keeps the
    draws of one run (hold-out, subsamples) apart."""
    chosen = np.zeros(n, dtype=bool)
    take = int(round(min(max(share, 0.0), 1.0) * n))
    chosen[np.random.default_rng([seed, stream]).permutation(n)[:take]] = True
    return chosen


def _digest() -> str:
    h = hashlib.sha256()
    for name in codelists.FILES:
        h.update((codelists.FOLDER / f"{name}.csv").read_bytes())
    return h.hexdigest()[:16]


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def _sampled_note(taken: int, population: int) -> str:
    """", a sample of N" when training took fewer persons than the date has."""
    return f", a sample of {taken:,}" if taken < population else ""


def _has_history(con: duckdb.DuckDBPyConnection, at: dt.date) -> bool:
    first = con.execute(f"""SELECT count(*) FROM v_apc
        WHERE admission_date <= {_ts(add_months(at, -12))}""").fetchone()[0]
    return first > 0


def _subsample(X: pd.DataFrame, y: np.ndarray, limit: int | None, seed: int, stream: int
               ) -> tuple[pd.DataFrame, np.ndarray]:
    """At most `limit` rows, drawn by position (rows already in `stable_order`)."""
    if limit is None or len(X) <= limit:
        return X, y
    keep = draw(len(X), limit / len(X), seed, stream)
    return X[keep], y[keep]


def _training_rows(con: duckdb.DuckDBPyConnection, at: dt.date, lookback: int | None,
                   names: list[str], sample: int, seed: int, stream: int
                   ) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Features `names` and outcomes at `at` of the persons training uses, in `stable_order`,
    and how many persons the date has: everyone when they are `sample` or fewer (exactly as
    before sampling existed), else a seeded sample of `sample` of them (`_sampled_rows`)."""
    persons = feature_table(con, at, lookback)
    if persons <= sample:
        X = fetch_features(con, names)
        y = outcomes_from(con, X.index, at)["emergency"].to_numpy()
        X, y = _in_stable_order(X, y)
    else:
        X, y = _sampled_rows(con, at, names, sample, seed, stream)
    _drop_feature_tables(con)
    return X, y, persons


def _drop_feature_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the date's feature table and its working tables once the training rows are
    fetched: the next `feature_table` makes its own, and DuckDB does not hold a population's
    features (up to its memory limit) while the models are fitted."""
    for table in ("features_wanted", "train_order", "pop_all", *WORK_TABLES):
        con.execute(f"DROP TABLE IF EXISTS {table}")


def _sampled_rows(con: duckdb.DuckDBPyConnection, at: dt.date, names: list[str], sample: int,
                  seed: int, stream: int, batch: int | None = None
                  ) -> tuple[pd.DataFrame, np.ndarray]:
    """`sample` persons of `features_out` (at `at`) drawn at random (seeded, `stream`) from
    the population in `stable_order`, kept in that order, with their features and outcomes.

    The order is made as `stable_order` makes it (`_RowHash`), `batch` persons at a time in
    person-key order (None: `HASH_BATCH`): each row's hashes are its own, so only the
    outcomes and hashes of the whole population are held (24 bytes a person), never its keys
    as text nor a column of everyone's features, and the features of the sample alone are
    fetched. A plain random sample keeps the event rate of the population, so the calibration
    hold-out drawn from it calibrates to the population (no weights)."""
    size = HASH_BATCH if batch is None else batch
    con.execute("""CREATE OR REPLACE TEMP TABLE train_order AS
        SELECT person_key, row_number() OVER (ORDER BY person_key) - 1 AS position
        FROM features_out""")
    persons = int(con.execute("SELECT count(*) FROM train_order").fetchone()[0])
    outcomes, firsts, seconds = [], [], []
    for start in range(0, persons, size):
        keys = np.asarray(con.execute(f"""SELECT person_key FROM train_order
            WHERE position >= {start} AND position < {start + size} ORDER BY position
            """).fetchnumpy()["person_key"], dtype=object)
        y = outcomes_from(con, pd.Index(keys), at)["emergency"].to_numpy()
        hashes = [_RowHash(len(keys), len(names) + 1, key) for key in HASH_KEYS]
        for block in feature_columns(con, names, keys):
            for values in block.values():  # in the order of `names`, as stable_order hashes
                for rows in hashes:
                    rows.add(values)
        for rows in hashes:
            rows.add(y)
        first, second = (rows.finish() for rows in hashes)
        outcomes.append(y)
        firsts.append(first)
        seconds.append(second)
        del keys, hashes
    y = np.concatenate(outcomes) if outcomes else np.zeros(0, dtype=np.int8)
    order = np.lexsort((np.concatenate(seconds or [np.zeros(0, np.uint64)]),
                        np.concatenate(firsts or [np.zeros(0, np.uint64)])))
    del firsts, seconds
    picked = order[np.sort(np.random.default_rng([seed, stream]).permutation(persons)[:sample])]
    wanted = pd.DataFrame({"position": picked, "nth": np.arange(len(picked))})
    con.register("train_picked", wanted)
    try:
        keys = np.asarray(con.execute("""SELECT o.person_key FROM train_picked p
            JOIN train_order o USING (position) ORDER BY p.nth""").fetchnumpy()["person_key"],
                          dtype=object)
    finally:
        con.unregister("train_picked")
    return fetch_features(con, names, keys), y[picked]


def _in_stable_order(X: pd.DataFrame, y: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    order = stable_order(X, y)
    return X.iloc[order], y[order]


def _fit_all(candidates: tuple[str, ...], X: pd.DataFrame, y: np.ndarray, seed: int
             ) -> dict[str, Model]:
    """Fit each candidate once; a blend reuses the fitted logistic and boosting models."""
    fitted: dict[str, Model] = {}
    for name in candidates:
        if name != "blend":
            fitted[name] = make(name).fit(X, y, seed)
    if "blend" in candidates:
        parts = [fitted.get(n) or make(n).fit(X, y, seed) for n in ("logistic", "boosting")]
        fitted["blend"] = Blend.of(parts)
    return fitted


REFERENCE_FEATURES = [name for name in NAMES if BY_NAME[name].reference]


# The learner of a run's own history_gain check: the logistic model refits in a second or two
# at 100,000 persons, where refitting boosting would add a fifth to the run; "chosen" uses
# the run's chosen candidate (bench/model_history.py reports that comparison).
HISTORY_GAIN_LEARNER = "logistic"


def history_gain(models: dict[str, Model], learner: str, fit: tuple[pd.DataFrame, np.ndarray],
                 judge: tuple[pd.DataFrame, np.ndarray], seed: int) -> dict[str, Any]:
    """AUROC of `learner` with every feature and refitted on the reference-date features
    alone (`REFERENCE_FEATURES`: no activity history), both on `judge` (persons neither learnt
    from). The rule baseline has no history to drop: the logistic model stands in for it."""
    learner = learner if learner != "rule" else "logistic"
    (Xf, yf), (Xj, yj) = fit, judge
    with_history = models[learner] if learner in models else make(learner).fit(Xf, yf, seed)
    reference = _fit_all((learner,), Xf[REFERENCE_FEATURES], yf, seed)[learner]
    auroc_model = _auc(yj, with_history.decision(Xj))
    auroc_reference = _auc(yj, reference.decision(Xj[REFERENCE_FEATURES]))
    return {"learner": learner, "auroc_model": auroc_model,
            "auroc_reference_only": auroc_reference, "gain": auroc_model - auroc_reference,
            "judged_on": "calibration hold-out at the training date", "persons": int(len(yj)),
            "events": int(np.sum(yj)), "reference_features": len(REFERENCE_FEATURES),
            "features": len(Xf.columns)}


class TooLittleHistory(ValueError):
    """The data hold no one, or no one with and without an emergency admission, to learn
    from in a training year (the message says which year and what it holds)."""


def _learnable(y: np.ndarray, start: dt.date, end: dt.date) -> None:
    """TooLittleHistory unless the persons alive and registered on `start` include some with
    an emergency admission from `start` to `end` and some without."""
    events = int(np.sum(y))
    if len(y) == 0 or events in (0, len(y)):
        raise TooLittleHistory(
            f"no model can be trained for this date: on {start} the data hold {len(y):,} "
            f"persons alive and registered, {events:,} of them with an emergency admission "
            f"before {end}; a model needs persons with and without one (land more history, "
            f"or score a later date)")


def train(con: duckdb.DuckDBPyConnection, at: dt.date, seed: int = 0,
          candidates: tuple[str, ...] = ("rule", "logistic", "boosting", "blend"),
          calibration: str = "platt", max_train_persons: int | None = 400_000,
          history_gain_check: bool = True, features: list[str] | None = None,
          history_gain_learner: str = HISTORY_GAIN_LEARNER,
          sample_persons: int | None = None, progress: Progress = quiet
          ) -> ModelBundle:
    """Fit, choose and calibrate the candidates for a run at `at` (see the module docstring);
    `history_gain_check` False skips the reference-date-only refit (`history_gain`, with
    `history_gain_learner`: a candidate's name, or "chosen").
    `features`: learn from these catalogue features only (default all; benches compare).
    `sample_persons`: learn from at most this many persons of each training date (None:
    `SAMPLE_PERSONS`), drawn as `_training_rows` draws them. `progress` is told each step
    (features of a date, the candidates' fits), with counts."""
    names = list(features) if features is not None else list(NAMES)
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown features: {', '.join(unknown)}")
    t1 = add_months(at, -12)
    t0 = add_months(at, -24)
    # Conditions look back only as far as the training date's history reaches, at every date,
    # so a longer history at scoring time does not shift what "has diabetes" means.
    history = history_months(con, t1)
    lookback = history if history is not None and history < LIFETIME_MONTHS else None
    sample = SAMPLE_PERSONS if sample_persons is None else sample_persons
    if sample < 1:
        raise ValueError(f"sample_persons must be 1 or more, not {sample}")
    X1, y1, population = _training_rows(con, t1, lookback, names, sample, seed, 4)
    progress(f"training: features at {t1.isoformat()} of {population:,} persons"
             f"{_sampled_note(len(X1), population)}")
    _learnable(y1, t1, at)
    held = draw(len(X1), CALIBRATION_SHARE, seed, 1)
    selection: dict[str, Any] = {}
    if _has_history(con, t0):
        X0, y0, earlier = _training_rows(con, t0, lookback, names, sample, seed, 5)
        progress(f"training: features at {t0.isoformat()} of {earlier:,} persons"
                 f"{_sampled_note(len(X0), earlier)}")
        _learnable(y0, t0, t1)
        Xs, ys = _subsample(X0, y0, max_train_persons, seed, 2)
        selection["method"] = "backtest"
        selection["fit_at"], selection["validate_at"] = t0.isoformat(), t1.isoformat()
        Xv, yv = X1, y1
    else:
        Xs, ys = _subsample(X1[~held], y1[~held], max_train_persons, seed, 2)
        selection["method"] = "holdout"
        Xv, yv = X1[held], y1[held]
    progress(f"training: choosing among {', '.join(candidates)} ({selection['method']}, "
             f"fitted on {len(Xs):,} persons)")
    for name, model in _fit_all(candidates, Xs, ys, seed).items():
        selection[name] = _auc(yv, model.decision(Xv))
    scored = {n: selection[n] for n in candidates if not np.isnan(selection[n])}
    chosen = max(scored, key=scored.__getitem__) if scored else candidates[-1]

    Xf, yf = _subsample(X1[~held], y1[~held], max_train_persons, seed, 3)
    models: dict[str, Model] = {}
    calibrators: dict[str, Calibrator] = {}
    metrics: dict[str, Any] = {"train_persons": int(len(Xf)), "calibration_persons":
                               int(held.sum()), "train_event_rate": float(y1.mean()),
                               "sampling": {"seed": seed, "order": ORDER,
                                            "calibration_share": CALIBRATION_SHARE,
                                            "population": population,
                                            "sample_persons": sample,
                                            "sampled": population > sample}}
    progress(f"training: {chosen} chosen; fitting the candidates on {len(Xf):,} persons and "
             f"calibrating them on {int(held.sum()):,}")
    for name, model in _fit_all(candidates, Xf, yf, seed).items():
        decision = model.decision(X1[held])
        calibrator = Calibrator(calibration).fit(decision, y1[held])
        models[name], calibrators[name] = model, calibrator
        metrics[f"{name}_heldout_auroc"] = _auc(y1[held], decision)
    if history_gain_check and set(REFERENCE_FEATURES) < set(names):
        learner = chosen if history_gain_learner == "chosen" else history_gain_learner
        metrics["history_gain"] = history_gain(
            models, learner, (Xf, yf), (X1[held], y1[held]), seed)
    p_train = calibrators[chosen](models[chosen].decision(X1))
    return ModelBundle(
        version=MODEL_VERSION, chosen=chosen, models=models, calibrators=calibrators,
        features=names, train_at=t1.isoformat(),
        train_window=(t1.isoformat(), add_months(t1, 12).isoformat()), selection=selection,
        thresholds=thresholds(p_train), metrics=metrics, seed=seed,
        codelists_digest=_digest(), lookback_months=lookback,
        extra={"candidates": list(CANDIDATES)})
